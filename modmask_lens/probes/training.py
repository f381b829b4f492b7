"""Training a gated-module probe on a frozen model's streamed activations (seeded, with progress and checkpoints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.checkpoint import Checkpointer, load_optimizer, optimizer_tensors
from modmask_lens.core.random import seeded, step_generator
from modmask_lens.masks.identity import MaskOrigin, model_differences
from modmask_lens.masks.model_config import comparable_models
from modmask_lens.probes.config import ProbeConfig
from modmask_lens.probes.data import ProbeData, read_activations
from modmask_lens.probes.moe import GatedProbe, ideal_gate_loss, importance_cv2, probe_loss

CHECKPOINT_FORMAT = "modmask-lens/probe-checkpoint"
CHECKPOINT_FILE = "probe-checkpoint.safetensors"
RESUMABLE_FIELDS = ("steps", "checkpoint_every")
"""Settings a resumed run may change: nothing else depends on them (the gate temperature's schedule counts epochs)."""


def gate_temperature(config: ProbeConfig, step: int, examples: int) -> float:
    """The paper's schedule T / (1 + decay * epoch), epochs counted in passes over the training examples."""
    return config.temperature / (1.0 + config.temperature_decay * step * config.batch_size / examples)


class ProbeTrainer:
    """Fits a :class:`GatedProbe` reading ``hook_names`` of a frozen bridge.

    Args:
        bridge: the model (only read, under ``torch.no_grad``).
        hook_names: TransformerLens hook points whose activations at each example's position are concatenated.
        data: training examples.
        config: probe settings.
        checkpoint_dir: checkpoint every ``config.checkpoint_every`` steps; a rerun resumes (with more ``steps``, it
            extends the run).
        progress: show a progress bar with loss and accuracy.
        frozen_gate: a trained probe whose gate is copied and frozen, with fresh experts (the paper's transfer test).

    Example:
        >>> trainer = ProbeTrainer(bridge, ["blocks.1.hook_resid_post"], data, ProbeConfig(steps=500))  # doctest: +SKIP
        >>> probe = trainer.train()                                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        bridge: Bridge,
        hook_names: Sequence[str],
        data: ProbeData,
        config: ProbeConfig = ProbeConfig(),
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        frozen_gate: GatedProbe | None = None,
    ):
        if len(data) < 2:
            raise ValueError(f"a probe needs at least 2 examples, got {len(data)}")
        self.bridge, self.hook_names, self.data, self.config = bridge, list(hook_names), data, config
        self.checkpointer = (
            Checkpointer(Path(checkpoint_dir) / CHECKPOINT_FILE, CHECKPOINT_FORMAT)
            if (checkpoint_dir is not None)
            else None
        )
        self.progress, self.frozen_gate = progress, frozen_gate is not None
        self.model_fingerprint = MaskOrigin.of(bridge).model  # dimensions, config, weights' hash: what a resume checks
        # Two examples, so that a hook with one row for the whole batch (a rotary table's [1, pos, d]) is refused now
        first = read_activations(bridge, self.hook_names, data.input_ids[:2], data.positions[:2])
        with seeded(config.seed):  # initialised on the CPU, so that a seed gives one probe on every device
            self.probe = GatedProbe(first.shape[1], data.n_classes, config, self.hook_names).to(first.device)
        if frozen_gate is not None:
            self.probe.gate.load_state_dict(frozen_gate.gate.state_dict())
            self.probe.gate.requires_grad_(False)
        trainable = [parameter for parameter in self.probe.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.RMSprop(trainable, lr=config.lr, momentum=0.9)
        self.step = 0
        if self.checkpointer is not None and self.checkpointer.exists():
            self._resume()

    def train(self) -> GatedProbe:
        """Train to ``config.steps`` and return the probe (in eval mode, its :attr:`~GatedProbe.temperature` the
        gate temperature of the last step; 1 with ``config.two_temperatures``, where the gate learns at 1)."""
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress, desc="probe", unit="step")
        self.probe.train()
        while self.step < config.steps:
            loss, accuracy = self._train_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3g}", acc=f"{accuracy:.2f}")
            if self.checkpointer is not None and (
                self.step % config.checkpoint_every == 0 or self.step == config.steps
            ):
                self.save_checkpoint()
        bar.close()
        self.probe.temperature = (
            1.0 if config.two_temperatures else gate_temperature(config, max(self.step - 1, 0), len(self.data))
        )
        return self.probe.eval()

    def _train_step(self) -> tuple[float, float]:
        config = self.config
        batch = self.data.select(
            torch.randint(len(self.data), (config.batch_size,), generator=step_generator(config.seed, self.step))
        )
        activations = read_activations(
            self.bridge, self.hook_names, batch.input_ids, batch.positions, batch.attention_mask
        )
        temperature = gate_temperature(config, self.step, len(self.data))
        output = self.probe(activations, temperature=1.0 if config.two_temperatures else temperature)
        expert_gate = self.probe(activations, temperature=temperature).gate if config.two_temperatures else None
        loss = probe_loss(self.probe, output, batch.targets, expert_gate)
        if config.regulariser == "importance":
            loss = loss + config.regulariser_weight * importance_cv2(output.gate)
        elif config.regulariser == "ideal_gate":
            loss = loss + config.regulariser_weight * ideal_gate_loss(output, batch.targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"probe loss became {float(loss)} at step {self.step}; lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (output.log_probs.argmax(dim=1) == batch.targets).float().mean()
        return float(loss.detach()), float(accuracy)

    def save_checkpoint(self) -> Path:
        """Write the probe, the optimiser state and the step atomically."""
        tensors = {f"probe/{name}": value for name, value in self.probe.state_dict().items()}
        tensors |= optimizer_tensors(self.optimizer, "rmsprop")
        metadata = {
            "step": self.step,
            "config": self.config.to_dict(),
            "hook_names": self.hook_names,
            "data": self.data.fingerprint(),
            "model": self.model_fingerprint,
            "frozen_gate": self.frozen_gate,
        }
        return self.checkpointer.save(tensors, metadata)

    def _resume(self) -> None:
        """Continue a checkpointed run: the same model, settings, hooks, data and frozen gate (or none), except that
        ``steps`` and ``checkpoint_every`` may differ (no other setting depends on them), so a finished run can be
        extended."""
        tensors, metadata = self.checkpointer.load({"step": int, "config": dict, "hook_names": list})

        def fixed(config: dict) -> dict:
            return {name: value for name, value in config.items() if name not in RESUMABLE_FIELDS}

        if fixed(metadata["config"]) != fixed(self.config.to_dict()) or metadata["hook_names"] != self.hook_names:
            raise ValueError(
                f"{self.checkpointer.path} was written for other settings or hooks; use a fresh checkpoint directory"
            )
        if metadata.get("data") != self.data.fingerprint():
            raise ValueError(
                f"{self.checkpointer.path} was written for other probe data (examples, read positions or targets"
                + (", or before checkpoints recorded them" if "data" not in metadata else "")
                + "); use a fresh checkpoint directory"
            )
        # a checkpoint written before model records held the config resumes, its weights compared (with a warning)
        written_model, current_model = (
            comparable_models(metadata["model"], self.model_fingerprint, str(self.checkpointer.path))
            if isinstance(metadata.get("model"), dict)
            else (metadata.get("model"), self.model_fingerprint)
        )
        if written_model != current_model:
            differing = (
                ", ".join(model_differences(written_model, current_model, ("in the checkpoint", "here"))) + " differ"
                if isinstance(written_model, dict)
                else "its weights or dimensions, or before checkpoints recorded them"
            )
            raise ValueError(
                f"{self.checkpointer.path} was written for another model ({differing}); use a fresh checkpoint "
                "directory"
            )
        written_frozen = bool(metadata.get("frozen_gate", False))
        if written_frozen != self.frozen_gate:
            raise ValueError(
                f"{self.checkpointer.path} was written {'with' if written_frozen else 'without'} a frozen gate; "
                "use a fresh checkpoint directory"
            )
        if self.frozen_gate and any(
            not torch.equal(tensors[f"probe/gate.{name}"], value.cpu())
            for name, value in self.probe.gate.state_dict().items()
        ):
            raise ValueError(
                f"{self.checkpointer.path} was written with another frozen gate; use a fresh checkpoint directory"
            )
        if int(metadata["step"]) > self.config.steps:
            raise ValueError(
                f"{self.checkpointer.path} has trained {metadata['step']} steps, more than steps={self.config.steps}; "
                "ask for at least as many steps, or use a fresh checkpoint directory"
            )
        # Checkpoints written before the temperature was a buffer lack it; train() sets it at the end either way.
        tensors.setdefault("probe/evaluation_temperature", self.probe.evaluation_temperature.cpu())
        self.probe.load_state_dict(
            {name[len("probe/") :]: value for name, value in tensors.items() if name.startswith("probe/")}
        )
        load_optimizer(self.optimizer, tensors, "rmsprop")
        self.step = int(metadata["step"])
