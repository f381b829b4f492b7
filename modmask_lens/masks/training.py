"""Training mask logits on subtasks while the model stays frozen (after Csordás et al. 2021, ``Task.train_step``).

Each step of each task: draw a batch, split it into ``n_samples`` contiguous chunks, run chunk k with mask sample k
(hard concrete by default, or straight-through Gumbel-sigmoid) through ``functional_call``, back-propagate the
objective (by default the answer-token cross-entropy, summed over answer tokens and divided by the batch's
answer-token count; see :mod:`modmask_lens.masks.objectives`) chunk by chunk (a neuron mask on the neurons'
outputs, and a hard-concrete or Gumbel-sigmoid head mask on the heads', runs every chunk in one pass with its
activations gated per example, :mod:`modmask_lens.masks.output_gates`, which gives the same gradients), add the
sparsity term (the density under the loss constraint, Csordás's logit sum, or a target density's Lagrangian), clip
the task's mask gradients and take one Adam step. The full model's outputs an objective (or the loss constraint)
needs are computed once per batch under ``no_grad``, and for objectives whose reference is per example, once per
example (:class:`ReferenceCache`). Tasks trained in one run keep their own optimiser, clipping and random stream, so
the result equals training them one after another. After the last step the readout sets each mask's threshold
(:attr:`MaskSet.threshold`).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from modmask_lens.adapters import adapter_for
from modmask_lens.core.bridge import Bridge, eval_mode
from modmask_lens.core.checkpoint import Checkpointer, load_optimizer, optimizer_tensors, require_fields
from modmask_lens.core.data import Batch, SubtaskData
from modmask_lens.core.functional import call_with_parameters, frozen_call
from modmask_lens.core.interrupt import TrainingInterrupted, interrupt_between_steps
from modmask_lens.core.random import step_generator, stream_seed
from modmask_lens.core.world import world
from modmask_lens.masks.apply import sampled_parameters
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.evaluation import objective_metric
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.io import mask_metadata, mask_set_from
from modmask_lens.masks.local_expectation import heads_to_estimate, local_expectation_step
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.memory import estimate_memory
from modmask_lens.masks.necessity import (
    capped_loss_sum,
    complement_caps,
    complement_losses,
    empty_losses,
    necessity_target_sum,
)
from modmask_lens.masks.objectives import (
    AnswerCrossEntropy,
    Objective,
    Outputs,
    Reference,
    Score,
    model_outputs,
    reference_loss_sum,
)
from modmask_lens.masks.output_gates import OutputGate, chunk_samples, gated, output_gates
from modmask_lens.masks.readout import faithful_units
from modmask_lens.masks.reference_cache import ReferenceCache
from modmask_lens.masks.run_fingerprint import RESTART_HINT, check_same_run, run_fingerprint
from modmask_lens.masks.sampling import UniformNoise, keep_probability
from modmask_lens.masks.sharding import ShardedBridge, ShardedLogits

HISTORY_EVERY = 10  # steps between rows of MaskSet.history (and refreshes of the progress bar's kept fraction)
FAITHFULNESS_EVERY = 100  # steps between faithfulness measurements (one forward over FAITHFULNESS_EXAMPLES)
FAITHFULNESS_EXAMPLES = 256  # examples evenly spaced through the subtask's, on which faithfulness is measured
READOUT_EXAMPLES = 256  # examples evenly spaced through the subtask's, on which the faithful readout chooses
# the mask's size (SubtaskData.evenly_spaced: the first ones of data ordered by length would judge short inputs only)
CHECKPOINT_FORMAT = "modmask-lens/mask-training-checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"


class UnfaithfulReadout(UserWarning):
    """The faithful readout could not be applied (the full model solves none of the examples)."""


class PaddedReadout(UserWarning):
    """The faithful readout kept units that training had removed (logit <= 0): the mask as trained was not faithful,
    and the units added back are ordered by logits that training pushed to one floor, not chosen."""


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class _TaskRun:
    """One task's training state: its data, logits, optimisers and latest metrics."""

    data: SubtaskData
    masks: MaskSet
    optimizer: torch.optim.Adam
    # lambda1, lambda2 (target density), or lambda (loss constraint) and mu (its necessity constraint, if set)
    multipliers: Tensor | None = None
    multiplier_optimizer: torch.optim.Adam | None = None
    shards: ShardedLogits | None = None  # this process's logit slices (fully sharded training), which Adam trains
    metrics: dict = field(default_factory=dict)
    full_accuracy: float | None = None  # the full model's metric on the faithfulness examples, once measured
    references: ReferenceCache | None = None  # the full model's per-example reference, when the objective allows
    gates: list[OutputGate] | None = None  # where a head or neuron mask gates activations in one pass

    def parameters(self) -> list[Tensor]:
        """What the optimiser trains: the logits, or this process's slices of them."""
        return self.shards.parameters() if self.shards is not None else self.masks.parameters()

    def logit_sum(self) -> Tensor:
        """Sum of the trained logits (this process's share when sharded)."""
        return self.shards.logit_sum() if self.shards is not None else self.masks.logit_sum()

    def clip_grad_norm_(self, max_norm: float) -> None:
        """Clip the logits' gradient to ``max_norm`` (the norm over all processes' shards when sharded)."""
        if self.shards is not None:
            self.shards.clip_grad_norm_(max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.masks.parameters(), max_norm)


class MaskTrainer:
    """Trains one :class:`MaskSet` per subtask on a frozen bridge; resumable from a checkpoint directory.

    Args:
        bridge: the model; its parameters are never modified (only read through ``functional_call``).
        subtasks: the tokenized subtasks, one mask set each.
        mask_config: which tensors are masked and how.
        train_config: sampling and optimisation settings.
        checkpoint_dir: where to checkpoint every ``train_config.checkpoint_every`` steps; a rerun with the same
            directory resumes from the last checkpoint and ends with the same result as an uninterrupted run.
        progress: show a progress bar with loss, the objective's metric (exact match by default) and kept fraction.
        fully_shard: under torchrun, keep 1/N of the weights, mask logits and Adam state on each process and gather
            one block at a time (:mod:`modmask_lens.masks.sharding`), for models that do not fit one device.
            Otherwise every process holds the whole model and masks (data parallel).
        device: where the shards live and run when ``fully_shard`` (default: the bridge's device).
        restart: ignore a checkpoint in ``checkpoint_dir`` and start from step 0 (its next save overwrites it).
            Otherwise a checkpoint resumes only if its run fingerprint (model, data, mask and train settings:
            :mod:`~modmask_lens.masks.run_fingerprint`) equals this run's; else a ``RunMismatch`` names the field.

    A ``SIGINT`` (Ctrl-C) during training lets the current step finish, saves a checkpoint (with a
    ``checkpoint_dir``) and raises :class:`~modmask_lens.core.interrupt.TrainingInterrupted` saying how to resume;
    a second Ctrl-C stops at once. Two runs never write one ``checkpoint_dir`` at once: the second gets
    :class:`~modmask_lens.core.checkpoint.CheckpointInUse`.
        objective: what the masks keep (:mod:`modmask_lens.masks.objectives`; default answer cross-entropy). It is
            part of the run's fingerprint: a checkpoint resumes only under the same objective.

    Example:
        >>> trainer = MaskTrainer(bridge, [jump, walk], train_config=TrainConfig(steps=500))   # doctest: +SKIP
        >>> masks = trainer.train()                                                         # doctest: +SKIP
    """

    def __init__(
        self,
        bridge: Bridge,
        subtasks: Sequence[SubtaskData],
        mask_config: MaskConfig = MaskConfig(),
        train_config: TrainConfig = TrainConfig(),
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        fully_shard: bool = False,
        device: torch.device | str | None = None,
        restart: bool = False,
        objective: Objective = AnswerCrossEntropy(),
    ):
        names = [subtask.name for subtask in subtasks]
        if not names:
            raise ValueError("no subtasks given; pass at least one SubtaskData")
        if len(set(names)) != len(names):
            raise ValueError(f"subtask names must be unique, got {names}")
        if "forward" in bridge.__dict__:  # masked() replaces the instance's forward; training reads the class's
            raise RuntimeError(
                "train_masks was called inside a masked() context: training reads the model's own weights and "
                "would ignore that mask, then fail at the readout; leave the context first (to train on part of "
                "the model, restrict MaskConfig's kinds, roles or layers)"
            )
        single = [subtask.name for subtask in subtasks if len(subtask) < 2]
        if single:
            raise ValueError(
                f"subtask(s) {single} have one example; a mask needs a subtask, not an example: give each at least 2"
            )
        self.bridge = bridge
        self.objective = objective
        self.train_config = train_config
        self.loss_unit = train_config.loss_unit(mask_config.granularity)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpointer = (
            Checkpointer(self.checkpoint_dir / CHECKPOINT_FILE, CHECKPOINT_FORMAT)
            if (self.checkpoint_dir is not None)
            else None
        )
        self.progress = progress
        self.step = 0
        # Under torchrun (torch.distributed initialised) each process runs every n-th chunk of a batch and the mask
        # gradients are summed across processes: the result equals one process up to float summation order.
        self.rank, self.world_size = world()
        adapter_for(bridge)  # an unsupported model fails here, before any other check reads bridge.cfg
        if device is not None and not fully_shard:
            raise ValueError(
                f"device={device!r} places the shards of fully sharded training only; pass fully_shard=True, or move "
                "the model itself (bridge.to(device)) and its data (data.to(device)) and leave device out"
            )
        if fully_shard:
            if train_config.n_samples % self.world_size:
                raise ValueError(
                    f"fully sharded training runs the batch's {train_config.n_samples} mask samples in "
                    f"lock-step on {self.world_size} processes; make n_samples a multiple of "
                    f"{self.world_size}"
                )
            if train_config.beta is None or train_config.readout != "zero" or mask_config.sampler != "gumbel-sigmoid":
                raise ValueError(
                    "fully sharded training runs Csordás's method only (Gumbel-sigmoid samples, the logit-sum "
                    "regulariser beta, the logit > 0 readout); pass CSORDAS_MASKS and CSORDAS_TRAINING (with your "
                    "granularity and steps), or train without fully_shard"
                )
            if type(objective) is not AnswerCrossEntropy or any(
                subtask.attention_mask is not None or subtask.label_shift != 1 for subtask in subtasks
            ):
                raise ValueError(
                    "fully sharded training supports the answer cross-entropy objective on causal data only; "
                    "train without fully_shard"
                )
        self.sharded_bridge = ShardedBridge(bridge, device) if fully_shard else None
        objective.check_model(bridge)
        if train_config.complement_loss_fraction is not None:
            if type(objective) is not AnswerCrossEntropy:
                raise ValueError(
                    f"complement_loss_fraction caps each example's answer cross-entropy; the objective "
                    f"{objective.name!r} has no per-example answer loss: train it without complement_loss_fraction"
                )
            if self.world_size > 1:
                raise ValueError(
                    "complement_loss_fraction is not supported under torchrun yet (its constraint is not reduced "
                    "over processes); train it in one process"
                )
        for subtask in subtasks:
            subtask.check_fits(bridge, answers_scored=objective.scores_answers)
            objective.check(subtask)
        origin = MaskOrigin.of(bridge)
        self.runs = [self._new_run(subtask, mask_config, origin) for subtask in subtasks]
        if self.checkpointer is not None and self.checkpointer.exists() and not restart:
            self._resume()

    def _new_run(self, data: SubtaskData, mask_config: MaskConfig, origin: MaskOrigin) -> _TaskRun:
        masks = MaskSet.for_bridge(self.bridge, mask_config, name=data.name, origin=origin)
        masks.train_config = self.train_config.to_dict()
        masks.objective = self.objective.to_dict()
        masks.fingerprint = run_fingerprint(origin, data, masks.config, self.train_config, self.objective)
        shards = ShardedLogits(masks, self.sharded_bridge.device) if self.sharded_bridge is not None else None
        trained = shards.parameters() if shards is not None else masks.parameters()
        run = _TaskRun(data, masks, torch.optim.Adam(trained, lr=self.train_config.lr), shards=shards)
        run.gates = output_gates(self.bridge, masks.config, masks.units)
        if self.objective.cacheable:
            run.references = ReferenceCache(len(data))
        if self.train_config.max_loss_increase is not None:
            # lambda (and mu), raised by projected gradient ascent in _constrain
            run.multipliers = torch.zeros(1 if self.train_config.complement_loss_fraction is None else 2)
        elif self.train_config.target_density is not None:
            run.multipliers = torch.zeros(2, requires_grad=True)
            run.multiplier_optimizer = torch.optim.Adam(
                [run.multipliers], lr=self.train_config.lagrangian_lr, maximize=True
            )
        return run

    def train(self) -> dict[str, MaskSet]:
        """Train every task to ``train_config.steps`` and return its mask set by subtask name."""
        config = self.train_config
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.progress, desc="masks", unit="step")
        writes = self.checkpointer is not None and self.rank == 0
        # Sharded processes save together (a collective), so only a lone process defers Ctrl-C to a step's end.
        deferring = interrupt_between_steps() if self.world_size == 1 else nullcontext(None)
        with self.checkpointer.locked() if writes else nullcontext(), deferring as interrupt, eval_mode(self.bridge):
            while self.step < config.steps:
                for run in self.runs:
                    self._train_step(run)
                self.step += 1
                if self.step % HISTORY_EVERY == 0 or self.step == config.steps:
                    for run in self.runs:
                        self._log(run)
                bar.update(1)
                bar.set_postfix(self._postfix())
                due = self.step % config.checkpoint_every == 0 or self.step == config.steps
                if self.checkpoint_dir is not None and (due or (interrupt is not None and interrupt.requested)):
                    self.save_checkpoint()
                if interrupt is not None and interrupt.requested:
                    bar.close()
                    raise TrainingInterrupted(self._interrupted_message())
            bar.close()
            masks = {run.masks.name: self._full_masks(run) for run in self.runs}
        # The readout runs after Ctrl-C is no longer deferred (the last step is saved): a Ctrl-C during it stops it at
        # once, where a deferred one would be read by no step and lost.
        if config.readout == "faithful":
            with eval_mode(self.bridge):
                for run in self.runs:
                    self._faithful_readout(run)
        return masks

    def _faithful_readout(self, run: _TaskRun) -> None:
        """Read the run's mask out as the fewest units found that keep ``1 - readout_tolerance`` of the full model's
        metric (the objective's: exact match by default) on :data:`READOUT_EXAMPLES` of the subtask's examples
        (:func:`~modmask_lens.faithful_units`; :meth:`MaskSet.read_out`)."""
        examples = run.data.evenly_spaced(READOUT_EXAMPLES)
        full = objective_metric(self.bridge, examples, self.objective)
        if full <= 0:
            warnings.warn(
                f"subtask {run.data.name!r}: the full model's {self.objective.metric} on {len(examples)} of its "
                f"examples is {full}, so the faithful readout cannot choose the mask's size; it is read out at "
                "logit > 0",
                UnfaithfulReadout,
                stacklevel=3,
            )
            return
        kept = faithful_units(
            self.bridge,
            run.masks,
            examples,
            self.train_config.readout_tolerance,
            self.objective,
            self.train_config.readout_evaluations,
            progress=self.progress and self.rank == 0,
        )
        trained = sum(int((logit > 0).sum()) for logit in run.masks.logits.values())
        added = sum(int((kept[name] & (logit <= 0)).sum()) for name, logit in run.masks.logits.items())
        kept_count = sum(int(flags.sum()) for flags in kept.values())
        run.masks.read_out(kept)
        if added > 0:
            remedy = (
                "bound each example's whole loss with loss_increase_per='example' (masks faithful as trained, denser; "
                "docs/finder-study.md)"
                if self.loss_unit == "token"
                else "lower max_loss_increase"
            )
            warnings.warn(
                f"subtask {run.data.name!r}: the mask as trained (logit > 0) keeps {trained:,} units and falls short "
                f"of {1 - self.train_config.readout_tolerance:.0%} of the full model's {self.objective.metric}; the "
                f"faithful readout keeps {kept_count:,}, adding back {added:,} units that training removed, in the "
                "order of logits that training pushed down together. Those units pad the mask more than they are "
                "chosen: "
                f"train longer, or {remedy}",
                PaddedReadout,
                stacklevel=3,
            )

    @staticmethod
    def _full_masks(run: _TaskRun) -> MaskSet:
        """The run's mask set with its current logits (gathered from all processes when sharded: a collective)."""
        return run.shards.full() if run.shards is not None else run.masks

    def _postfix(self) -> dict[str, str]:
        """The progress bar's figures; the kept fraction appears from the first logged step on."""
        if len(self.runs) == 1:
            metrics = self.runs[0].metrics
            return {key: f"{value:.3g}" for key, value in metrics.items() if not math.isnan(value)}
        metric = self.objective.metric
        return {
            run.masks.name: f"{metric} {run.metrics[metric]:.2f}"
            + ("" if math.isnan(run.metrics["kept"]) else f" kept {run.metrics['kept']:.2f}")
            for run in self.runs
        }

    def _train_step(self, run: _TaskRun) -> None:
        config = self.train_config
        seed = stream_seed(config.seed, self.step, run.masks.name)
        indices = torch.randint(
            len(run.data), (config.batch_size,), generator=step_generator(config.seed, self.step, run.masks.name)
        )
        batch = run.data.examples(indices)
        normaliser = self._normaliser(batch)
        run.optimizer.zero_grad(set_to_none=True)
        loss_sum, metric_sum = 0.0, 0.0
        constrained = config.max_loss_increase is not None
        necessary = config.complement_loss_fraction is not None
        complement_sum = 0.0
        # Under the loss constraint the task loss enters weighted by its multiplier lambda (the density is the
        # objective); otherwise it is the objective itself.
        task_weight = float(run.multipliers[0]) if constrained else 1.0
        reference = self._reference(run, batch, indices) if constrained or self.objective.compares else None
        chunk_references = _split_reference(reference, config.n_samples)
        chunk_batches = batch.split(config.n_samples)
        if run.masks.config.sampler == "bernoulli":  # the same heads on every process: drawn from the step's seed
            n_heads = sum(logit.numel() for logit in run.masks.logits.values())
            estimated, scales = heads_to_estimate(
                n_heads,
                config.heads_estimated_per_step,
                [len(chunk_batch) for chunk_batch in chunk_batches],
                step_generator(seed, 0, "heads"),
            )
        # Each chunk has its own noise stream, so any process draws the same sample for it.
        owned = {
            chunk: UniformNoise(seed * config.n_samples + chunk)
            for chunk in range(len(chunk_batches))
            if chunk % self.world_size == self.rank  # else another process's slice of the batch
        }
        scores: dict[int, Score] = {}
        if run.gates is not None and run.shards is None and owned:  # every owned chunk in one pass, one backward
            scores = self._gated_scores(run, chunk_batches, chunk_references, owned)
            (task_weight * torch.stack([score.loss_sum for score in scores.values()]).sum() / normaliser).backward()
        for chunk, noise in owned.items():
            chunk_batch = chunk_batches[chunk]
            if chunk in scores:
                score = scores[chunk]
            elif run.masks.config.sampler == "bernoulli":  # writes the logits' gradients itself, without a backward
                score = local_expectation_step(
                    self.bridge, run.masks, self.objective, chunk_batch, chunk_references[chunk], noise,
                    task_weight / normaliser, estimated[chunk], scales[chunk],
                )  # fmt: skip
            else:
                score = self._pathwise_chunk(run, chunk_batch, chunk_references[chunk], noise)
                (task_weight * score.loss_sum / normaliser).backward()
            loss_sum += float(score.loss_sum.detach())
            metric_sum += score.metric_sum
            if necessary:
                complement_sum += self._complement_step(run, chunk_batch, chunk_references[chunk], noise, normaliser)
        if self.world_size > 1:
            # Sharded gradients are already summed over processes by the gathers' backward.
            loss_sum, metric_sum = _all_reduce_statistics(loss_sum, metric_sum, run.parameters()[0].device)
            if run.shards is None:
                _all_reduce_gradients(run.masks.parameters())
        task_loss = loss_sum / normaliser
        if not math.isfinite(task_loss):
            raise NonFiniteLoss(self._non_finite_message(run, task_loss))
        if constrained:
            full_loss = float(reference_loss_sum(reference)) / normaliser
            shortfall = None
            if necessary:
                target = necessity_target_sum(
                    reference["loss"], reference["complement_cap"], config.complement_loss_fraction
                )
                shortfall = (float(target) - complement_sum) / normaliser
            self._constrain(run, task_loss - full_loss, shortfall)
        else:
            self._regularise(run)
        run.clip_grad_norm_(config.grad_clip)
        run.optimizer.step()
        if run.multiplier_optimizer is not None:
            run.multiplier_optimizer.step()
        run.metrics = {
            "loss": task_loss,
            self.objective.metric: metric_sum / config.batch_size,
            "kept": run.metrics.get("kept", float("nan")),
        }
        if necessary:
            run.metrics["complement_loss"] = complement_sum / normaliser

    def _complement_step(
        self, run: _TaskRun, batch: Batch, reference: Reference, noise: UniformNoise, normaliser: int
    ) -> float:
        """Back-propagate the necessity term on one chunk: ``-mu * sum_i min(l_i, c_i) / normaliser`` of the model
        under the complement of the chunk's mask sample (the same sample: ``noise`` reseeded), and return the capped
        sum (:mod:`modmask_lens.masks.necessity`)."""
        sample = run.masks.sample(self.train_config.temperature, UniformNoise(noise.seed))
        capped = capped_loss_sum(complement_losses(self.bridge, run.masks, sample, batch), reference["complement_cap"])
        (-float(run.multipliers[1]) * capped / normaliser).backward()
        return float(capped.detach())

    def _pathwise_chunk(
        self, run: _TaskRun, chunk_batch: Batch, reference: Reference | None, noise: UniformNoise
    ) -> Score:
        """The objective's score of one differentiable mask sample (hard concrete or straight-through) on a chunk."""
        if run.shards is not None:
            outputs = Outputs(
                self.sharded_bridge(run.shards, self.train_config.temperature, noise, chunk_batch.input_ids)
            )
        else:
            masked = sampled_parameters(self.bridge, run.masks, self.train_config.temperature, noise)
            outputs = call_with_parameters(
                self.bridge, masked, model_outputs, self.bridge, chunk_batch, self.objective.hook_names
            )
            del masked  # the matmuls keep what the backward needs
        return self.objective.score(outputs, reference, chunk_batch)

    def _gated_scores(
        self,
        run: _TaskRun,
        chunk_batches: list[Batch],
        chunk_references: list[Reference | None],
        owned: dict[int, UniformNoise],
    ) -> dict[int, Score]:
        """The objective's score of each owned chunk (chunk -> its noise) under its own mask sample, from one pass
        over the owned chunks with the units' outputs gated per example (:mod:`modmask_lens.masks.output_gates`): the
        scores and gradients of :meth:`_pathwise_chunk` on each, up to float rounding."""
        chunks = list(owned)
        samples = chunk_samples(run.masks, self.train_config.temperature, list(owned.values()))
        sizes = [len(chunk_batches[chunk]) for chunk in chunks]
        joined = Batch.joined([chunk_batches[chunk] for chunk in chunks])
        with gated(self.bridge, run.gates, samples, sizes):
            outputs = frozen_call(self.bridge, model_outputs, self.bridge, joined, self.objective.hook_names)
        scores = {}
        for chunk, rows in zip(chunks, torch.arange(len(joined)).split(sizes), strict=True):
            part = Outputs(outputs.logits[rows], {name: value[rows] for name, value in outputs.activations.items()})
            scores[chunk] = self.objective.score(part, chunk_references[chunk], chunk_batches[chunk])
        return scores

    def _normaliser(self, batch: Batch) -> int:
        """What the step's loss sums are divided by: the number of examples under the loss constraint per example
        (the constraint then bounds each example's whole loss), else the objective's own normaliser (answer tokens
        for answer cross-entropy)."""
        if self.train_config.max_loss_increase is not None and self.loss_unit == "example":
            return len(batch)
        return self.objective.normaliser(batch)

    def _reference(self, run: _TaskRun, batch: Batch, indices: Tensor) -> Reference:
        """The full model's reference on ``batch`` (under ``no_grad``): one forward over the batch, or, when the
        objective's reference is per example, only over the examples not yet cached."""

        def compute(part: Batch) -> Reference:
            with torch.no_grad():
                reference = self.objective.reference(model_outputs(self.bridge, part, self.objective.hook_names), part)
                if self.train_config.complement_loss_fraction is not None:
                    empty = empty_losses(self.bridge, run.masks, part)
                    reference["complement_cap"] = complement_caps(reference["loss"], empty)
                return reference

        if run.references is None:
            return compute(batch)
        return run.references.get(indices, lambda missing: compute(run.data.examples(missing)))

    def _log(self, run: _TaskRun) -> None:
        """Append a row to the run's history (after step ``self.step``) and refresh the bar's kept fraction.

        Faithfulness needs the whole model in one process, so fully sharded runs leave it out.
        """
        masks = self._full_masks(run)
        run.metrics["kept"] = self._kept_fraction(masks)
        row = {
            "step": self.step,
            "loss": run.metrics["loss"],
            self.objective.metric: run.metrics[self.objective.metric],
            "kept": run.metrics["kept"],
            "expected_density": float(masks.expected_density().detach()),
        }
        if "complement_loss" in run.metrics:
            row["complement_loss"] = run.metrics["complement_loss"]
        if run.shards is None and (self.step % FAITHFULNESS_EVERY == 0 or self.step == self.train_config.steps):
            row["faithfulness"] = self._faithfulness(run)
        masks.history.append(row)

    def _faithfulness(self, run: _TaskRun) -> float | None:
        """The objective's metric (exact match by default) of the binary mask (logit > 0: the readout is chosen after
        training) over the full model's, on :data:`FAITHFULNESS_EXAMPLES` of the subtask's examples (``None`` if
        the full model's metric is 0)."""
        examples = run.data.evenly_spaced(FAITHFULNESS_EXAMPLES)
        if run.full_accuracy is None:
            run.full_accuracy = objective_metric(self.bridge, examples, self.objective)
        mask_accuracy = objective_metric(self.bridge, examples, self.objective, run.masks.binary())
        return mask_accuracy / run.full_accuracy if run.full_accuracy > 0 else None

    def _regularise(self, run: _TaskRun) -> None:
        """Csordás's ``(beta / B) * sum(logits)``, or Edge Pruning's Lagrangian towards a target density."""
        config = self.train_config
        if config.beta is not None:
            (config.beta / config.batch_size * run.logit_sum()).backward()
            return
        run.multiplier_optimizer.zero_grad(set_to_none=True)
        ramp = min(1.0, self.step / max(config.density_warmup_steps, 1))
        initial = keep_probability(torch.tensor(run.masks.config.init_logit), run.masks.config.sampler).item()
        target = initial + (config.target_density - initial) * ramp
        gap = run.masks.expected_density() - target
        (run.multipliers[0] * gap + run.multipliers[1] * gap**2).backward()

    def _constrain(self, run: _TaskRun, loss_increase: float, complement_shortfall: float | None = None) -> None:
        """The faithfulness constraint: minimise the expected density subject to the task loss staying within
        ``max_loss_increase`` of the full model's on the same batch (nats per ``loss_increase_per``), and, with
        ``complement_loss_fraction``, the complement's capped loss reaching its target (``complement_shortfall``:
        target minus capped loss, same unit).

        The density's gradient is added here (the task's, weighted by lambda, and the complement's, by -mu, in the
        step); each multiplier then takes one projected gradient-ascent step,
        ``lambda <- max(0, lambda + lagrangian_lr * (increase - max_increase))`` and
        ``mu <- max(0, mu + lagrangian_lr * shortfall)``, so it grows while its constraint is violated and decays
        once it is met.
        """
        config = self.train_config
        run.masks.expected_density().backward()
        gaps = [loss_increase - config.max_loss_increase]
        if complement_shortfall is not None:
            gaps.append(complement_shortfall)
        run.multipliers.add_(config.lagrangian_lr * torch.tensor(gaps)).clamp_(min=0.0)

    @staticmethod
    def _kept_fraction(masks: MaskSet) -> float:
        with torch.no_grad():
            kept = sum(unit.expected_kept((masks.logits[unit.name] > 0).float()) for unit in masks.units)
        return float(kept) / sum(member.numel for member in masks.members)

    def _non_finite_message(self, run: _TaskRun, loss: float) -> str:
        where = (
            f"the last good checkpoint is {self.checkpointer.path}"
            if self.checkpointer is not None and self.checkpointer.exists()
            else "no checkpoint was written"
        )
        return (
            f"task {run.masks.name!r}: the loss became {loss} at step {self.step}; training stopped and {where}. "
            "Check the model's outputs on this data for NaN, or lower lr"
        )

    def _interrupted_message(self) -> str:
        where = f"interrupted after step {self.step} of {self.train_config.steps}"
        if self.checkpointer is None:
            return f"{where}; nothing was saved (no checkpoint_dir)"
        return (
            f"{where}; checkpoint saved to {self.checkpointer.path}: rerun the same command (the same "
            "checkpoint_dir) to resume"
        )

    def save_checkpoint(self) -> Path:
        """Write logits, optimiser states and the step atomically to ``checkpoint_dir`` (from process 0; every
        process calls it, since sharded state is gathered first). The file is the same with or without sharding."""
        tensors: dict[str, Tensor] = {}
        tasks = []
        for index, run in enumerate(self.runs):
            prefix = f"task{index}"
            optimizer = run.shards.gathered_optimizer(run.optimizer) if run.shards is not None else run.optimizer
            tensors.update({f"{prefix}/logits/{name}": logit for name, logit in run.masks.logits.items()})
            tensors.update(optimizer_tensors(optimizer, f"{prefix}/adam"))
            if run.multipliers is not None:
                tensors[f"{prefix}/multipliers"] = run.multipliers
            if run.multiplier_optimizer is not None:
                tensors.update(optimizer_tensors(run.multiplier_optimizer, f"{prefix}/multiplier_adam"))
            tasks.append({"prefix": prefix, "mask": mask_metadata(run.masks), "fingerprint": run.masks.fingerprint})
        metadata = {"step": self.step, "train_config": self.train_config.to_dict(), "tasks": tasks}
        if self.rank == 0:
            self.checkpointer.save(tensors, metadata)
        return self.checkpointer.path

    def _resume(self) -> None:
        path = self.checkpointer.path

        def check_tasks(metadata: dict) -> None:
            for task in metadata["tasks"]:
                require_fields(
                    task if isinstance(task, dict) else {}, {"prefix": str, "mask": dict}, f"{path} (a task)"
                )

        tensors, metadata = self.checkpointer.load({"step": int, "train_config": dict, "tasks": list}, check_tasks)
        self._check_resumable(path, metadata)
        for run, task in zip(self.runs, metadata["tasks"]):
            prefix = task["prefix"]
            own = {name[len(prefix) + 1 :]: tensor for name, tensor in tensors.items() if name.startswith(prefix + "/")}
            origin, fingerprint = run.masks.origin, run.masks.fingerprint
            run.masks = mask_set_from(self.bridge, own, task["mask"], str(path))
            # mask_set_from proved this is the checkpoint's model (weights, dimensions, and its config where the
            # checkpoint records one): the finished mask records the model it was finished on, as a fresh run's
            # does, also where the checkpoint predates a field of that record
            run.masks.origin = origin
            run.masks.train_config = self.train_config.to_dict()
            run.masks.fingerprint = fingerprint
            run.masks.objective = self.objective.to_dict()
            run.masks.history = [_as_logged(row, self.train_config.steps) for row in run.masks.history]
            run.masks.history = [row for row in run.masks.history if row is not None]
            run.optimizer = torch.optim.Adam(run.masks.parameters(), lr=self.train_config.lr)
            load_optimizer(run.optimizer, own, "adam")
            if self.sharded_bridge is not None:
                run.shards = ShardedLogits(run.masks, self.sharded_bridge.device)
                full_optimizer, run.optimizer = (
                    run.optimizer,
                    torch.optim.Adam(run.shards.parameters(), lr=self.train_config.lr),
                )
                run.shards.load_optimizer_state(run.optimizer, full_optimizer)
            if run.multipliers is not None and run.multiplier_optimizer is None:
                run.multipliers = own["multipliers"].clone()
            elif run.multipliers is not None:
                run.multipliers = own["multipliers"].clone().requires_grad_(True)
                run.multiplier_optimizer = torch.optim.Adam(
                    [run.multipliers], lr=self.train_config.lagrangian_lr, maximize=True
                )
                load_optimizer(run.multiplier_optimizer, own, "multiplier_adam")
        self.step = metadata["step"]
        if self.progress and self.rank == 0:
            print(f"resumed from step {self.step} of {self.train_config.steps} ({path})", file=sys.stderr)

    def _check_resumable(self, path: Path, metadata: dict) -> None:
        """Raise ``ValueError`` naming the first difference between the checkpoint's run and this one: the
        subtasks, then each one's run fingerprint (model, data, mask and train settings), then the step."""
        names = [task["mask"].get("name") for task in metadata["tasks"]]
        if names != [run.masks.name for run in self.runs]:
            raise ValueError(
                f"{path} holds subtasks {names}; this run trains {[r.masks.name for r in self.runs]}: start over "
                "with --restart (restart=True in Python), or use another checkpoint directory"
            )
        for run, task in zip(self.runs, metadata["tasks"]):
            check_same_run(task.get("fingerprint"), run.masks.fingerprint, str(path), run.masks.name)
        if metadata["step"] > self.train_config.steps:
            raise ValueError(
                f"{path} is at step {metadata['step']}, past this run's steps="
                f"{self.train_config.steps}; raise steps to at least {metadata['step']}, or {RESTART_HINT}"
            )


def _as_logged(row: dict, steps: int) -> dict | None:
    """A history row of a resumed run as a run of ``steps`` steps logs it: a row that only the last step of a shorter
    run logged (a step off the :data:`HISTORY_EVERY` grid, or faithfulness off its grid) is dropped or loses it, so
    that a run extended to more steps has the history of an uninterrupted run of that length."""
    step = row.get("step")
    if not isinstance(step, int) or step == steps:
        return row
    if step % HISTORY_EVERY:
        return None
    if "faithfulness" in row and step % FAITHFULNESS_EVERY:
        return {key: value for key, value in row.items() if key != "faithfulness"}
    return row


def _all_reduce_gradients(parameters: list[Tensor]) -> None:
    """Sum the mask gradients over all processes, in place."""
    for parameter in parameters:
        if parameter.grad is None:  # this process ran no chunk of the batch
            parameter.grad = torch.zeros_like(parameter)
        torch.distributed.all_reduce(parameter.grad)


def _all_reduce_statistics(loss_sum: float, metric_sum: float, device: torch.device) -> tuple[float, float]:
    """The batch's loss and metric sums over all processes (``device``: where the backend reduces)."""
    totals = torch.tensor([loss_sum, metric_sum], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals)
    return float(totals[0]), float(totals[1])


def _split_reference(reference: Reference | None, sections: int) -> list[Reference | None]:
    """The reference's per-example rows in the same contiguous chunks as :meth:`Batch.split`."""
    if reference is None:
        return [None] * sections
    parts = {name: value.tensor_split(sections) for name, value in reference.items()}
    return [{name: chunks[index] for name, chunks in parts.items()} for index in range(sections)]


def train_masks(
    bridge: Bridge,
    subtasks: SubtaskData | Sequence[SubtaskData],
    mask_config: MaskConfig = MaskConfig(),
    train_config: TrainConfig = TrainConfig(),
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    fully_shard: bool = False,
    device: torch.device | str | None = None,
    restart: bool = False,
    objective: Objective = AnswerCrossEntropy(),
) -> dict[str, MaskSet]:
    """Train one mask set per subtask on a frozen bridge; see :class:`MaskTrainer`. With ``progress``, first prints
    the estimated memory per device (:func:`~modmask_lens.masks.memory.estimate_memory`).

    Example:
        >>> masks = train_masks(bridge, jump_data, train_config=TrainConfig(steps=1000))       # doctest: +SKIP
        >>> masks["jump"].binary().kept_fraction(by="layer_role")                               # doctest: +SKIP
        >>> kl = train_masks(bridge, jump_data, objective=KLDivergence())                      # doctest: +SKIP
    """
    if isinstance(subtasks, SubtaskData):
        subtasks = [subtasks]
    if progress and subtasks:
        positions = max(subtask.input_ids.shape[1] for subtask in subtasks)
        processes = world()[1]
        estimate = estimate_memory(
            bridge, mask_config, train_config, positions, len(subtasks), processes if fully_shard else 1, processes
        )
        tqdm.write(str(estimate), file=sys.stderr)
    return MaskTrainer(
        bridge, subtasks, mask_config, train_config, checkpoint_dir, progress, fully_shard, device, restart, objective
    ).train()
