"""Does the gate learn the subtask decomposition, and whose fault is an error? (Krishnamurthy & Watkins 2021)

Every function returns a tidy DataFrame. Entropies and mutual information are in bits.

Error attribution, for each wrong prediction: **mixing** error when the argmax-gate expert alone is right (only
mixtures can make it), **gate** error when another expert is right, **expert** error when no expert is right. The
ideal-gate accuracy is the share of examples that some expert gets right. Experts removed for an ablation
(:attr:`ProbeEvaluation.removed_experts`) are out of the gate's choice, so they count for neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.probes.config import ProbeConfig
from modmask_lens.probes.data import ProbeData, read_activations
from modmask_lens.probes.moe import GatedProbe
from modmask_lens.probes.training import ProbeTrainer


@dataclass(frozen=True)
class ProbeEvaluation:
    """A probe's outputs on every example of a dataset.

    Attributes:
        gate: ``[example, expert]`` gate probabilities.
        expert_correct: ``[example, expert]`` whether each expert's argmax is the target.
        correct: ``[example]`` whether the probe's prediction is the target.
        subtasks: ``[example]`` subtask index; subtask_names: their names.
        removed_experts: the experts the evaluation removed (their gate zero), as ``evaluate_probe`` was given them.
    """

    gate: Float[Tensor, "example expert"]
    expert_correct: Bool[Tensor, "example expert"]
    correct: Bool[Tensor, " example"]
    subtasks: Int[Tensor, " example"]
    subtask_names: tuple[str, ...]
    removed_experts: tuple[int, ...] = ()

    @property
    def chosen_expert(self) -> Int[Tensor, " example"]:
        return self.gate.argmax(dim=1)


def evaluate_probe(
    probe: GatedProbe,
    bridge: Bridge,
    hook_names: Sequence[str],
    data: ProbeData,
    removed_experts: tuple[int, ...] = (),
    batch_size: int = 256,
) -> ProbeEvaluation:
    """Run the probe on every example (activations streamed in batches) at its gate temperature
    (:attr:`GatedProbe.temperature`: that of its last training step); the results are on the CPU.

    Raises:
        ValueError: ``data`` has other classes than the probe predicts (data built with another ``target``);
            ``hook_names`` are not the hooks the probe was trained on, or give activations of another width.
    """
    if data.n_classes != probe.n_classes:
        raise ValueError(
            f"the probe predicts {probe.n_classes} classes, the data has {data.n_classes}: evaluate it on data built "
            "with the target it was trained on (ProbeData.from_subtasks(..., target=...))"
        )
    if probe.hook_names and tuple(hook_names) != probe.hook_names:
        # Hooks of the same width in another order or place would be read without a word.
        raise ValueError(
            f"the probe reads {list(probe.hook_names)}, not {list(hook_names)}: pass the hooks it was trained on, "
            "in that order (probe.hook_names)"
        )
    width = read_activations(bridge, hook_names, data.input_ids[:1], data.positions[:1]).shape[1]
    if width != probe.d_in:
        raise ValueError(
            f"the hooks {list(hook_names)} give {width} activations per example, the probe reads {probe.d_in}: "
            "pass the hooks it was trained on"
        )
    gates, expert_correct, correct = [], [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.select(torch.arange(start, min(start + batch_size, len(data))))
            output = probe(
                read_activations(bridge, hook_names, batch.input_ids, batch.positions, batch.attention_mask),
                removed_experts=removed_experts,
            )
            targets = batch.targets.to(output.gate.device)
            gates.append(output.gate.cpu())
            expert_correct.append((output.expert_logits.argmax(dim=-1) == targets[:, None]).cpu())
            correct.append((output.log_probs.argmax(dim=-1) == targets).cpu())
    return ProbeEvaluation(
        torch.cat(gates),
        torch.cat(expert_correct),
        torch.cat(correct),
        data.subtasks.cpu(),
        data.subtask_names,
        tuple(removed_experts),
    )


def routing_table(evaluation: ProbeEvaluation) -> pd.DataFrame:
    """Subtask x expert: examples routed to each expert (argmax gate) and total gate mass.

    Returns:
        Columns ``subtask``, ``expert``, ``count``, ``gate_mass``.
    """
    n_experts = evaluation.gate.shape[1]
    counts = torch.bincount(
        evaluation.subtasks * n_experts + evaluation.chosen_expert, minlength=len(evaluation.subtask_names) * n_experts
    ).view(-1, n_experts)
    mass = torch.zeros(len(evaluation.subtask_names), n_experts).index_add_(0, evaluation.subtasks, evaluation.gate)
    return pd.DataFrame(
        [
            {
                "subtask": name,
                "expert": expert,
                "count": int(counts[index, expert]),
                "gate_mass": float(mass[index, expert]),
            }
            for index, name in enumerate(evaluation.subtask_names)
            for expert in range(n_experts)
        ]
    )


def _entropy_bits(probabilities: Tensor) -> float:
    nonzero = probabilities[probabilities > 0]
    return float(-(nonzero * nonzero.log2()).sum())


def routing_information(evaluation: ProbeEvaluation) -> pd.DataFrame:
    """One row: I(E; S), H(E), H(S) from the routing counts; usage entropy H(mean gate); mean per-sample gate
    entropy; and accuracy."""
    table = routing_table(evaluation).pivot(index="subtask", columns="expert", values="count")
    joint = torch.tensor(table.to_numpy(), dtype=torch.float64)
    joint = joint / joint.sum()
    entropy_experts, entropy_subtasks = _entropy_bits(joint.sum(dim=0)), _entropy_bits(joint.sum(dim=1))
    gate = evaluation.gate.double()
    per_sample = -(gate * gate.clamp_min(1e-30).log2()).sum(dim=1)
    return pd.DataFrame(
        [
            {
                "mutual_information": entropy_experts + entropy_subtasks - _entropy_bits(joint.flatten()),
                "expert_entropy": entropy_experts,
                "subtask_entropy": entropy_subtasks,
                "usage_entropy": _entropy_bits(gate.mean(dim=0)),
                "mean_gate_entropy": float(per_sample.mean()),
                "max_entropy": math.log2(gate.shape[1]),
                "accuracy": float(evaluation.correct.float().mean()),
            }
        ]
    )


def expert_accuracy(evaluation: ProbeEvaluation) -> pd.DataFrame:
    """Each expert's accuracy on all examples and on the examples the gate routes to it (NaN if none)."""
    rows = []
    for expert in range(evaluation.gate.shape[1]):
        own = evaluation.chosen_expert == expert
        rows.append(
            {
                "expert": expert,
                "accuracy_all": float(evaluation.expert_correct[:, expert].float().mean()),
                "own_examples": int(own.sum()),
                "accuracy_own": float(evaluation.expert_correct[own, expert].float().mean()) if own.any() else math.nan,
            }
        )
    return pd.DataFrame(rows)


def error_attribution(evaluation: ProbeEvaluation) -> pd.DataFrame:
    """One row: accuracy, ideal-gate accuracy and their gap; counts of gate, expert and mixing errors."""
    wrong = ~evaluation.correct
    chosen_right = evaluation.expert_correct.gather(1, evaluation.chosen_expert[:, None]).squeeze(1)
    choosable = torch.ones(evaluation.gate.shape[1], dtype=torch.bool)
    choosable[list(evaluation.removed_experts)] = False
    any_right = evaluation.expert_correct[:, choosable].any(dim=1)
    mixing = wrong & chosen_right
    gate = wrong & ~chosen_right & any_right
    expert = wrong & ~any_right
    accuracy, ideal = float(evaluation.correct.float().mean()), float(any_right.float().mean())
    errors = int(wrong.sum())
    return pd.DataFrame(
        [
            {
                "accuracy": accuracy,
                "ideal_gate_accuracy": ideal,
                "gap": ideal - accuracy,
                "errors": errors,
                "gate_errors": int(gate.sum()),
                "expert_errors": int(expert.sum()),
                "mixing_errors": int(mixing.sum()),
                "gate_error_share": int(gate.sum()) / errors if errors else math.nan,
            }
        ]
    )


def probe_accuracy(evaluation: ProbeEvaluation) -> pd.DataFrame:
    """Accuracy per subtask: columns ``subtask``, ``examples``, ``accuracy``."""
    return pd.DataFrame(
        [
            {
                "subtask": name,
                "examples": int((evaluation.subtasks == index).sum()),
                "accuracy": float(evaluation.correct[evaluation.subtasks == index].float().mean()),
            }
            for index, name in enumerate(evaluation.subtask_names)
        ]
    )


def expert_ablation(probe: GatedProbe, bridge: Bridge, hook_names: Sequence[str], data: ProbeData) -> pd.DataFrame:
    """Per-subtask accuracy with each expert removed (its gate set to zero, the rest renormalised). A probe with
    one expert has only the row with none removed: removing its expert leaves no prediction.

    Returns:
        Columns ``removed_expert`` (-1: none), ``subtask``, ``examples``, ``accuracy``.
    """
    frames = []
    removable = range(probe.config.n_experts) if probe.config.n_experts > 1 else range(0)
    for removed in [None, *removable]:
        evaluation = evaluate_probe(probe, bridge, hook_names, data, () if removed is None else (removed,))
        frames.append(probe_accuracy(evaluation).assign(removed_expert=-1 if removed is None else removed))
    return pd.concat(frames, ignore_index=True)[["removed_expert", "subtask", "examples", "accuracy"]]


def transfer_test(
    probe: GatedProbe,
    bridge: Bridge,
    hook_names: Sequence[str],
    train: ProbeData,
    test: ProbeData,
    config: ProbeConfig | None = None,
) -> pd.DataFrame:
    """The paper's transfer test: freeze the trained gate, train fresh experts, and compare with the original probe
    and with a fresh probe trained the same number of steps.

    Returns:
        Columns ``variant`` (``original``, ``frozen_gate_fresh_experts``, ``fresh_probe``), ``accuracy`` on ``test``.
    """
    fresh = replace(config or probe.config, seed=(config or probe.config).seed + 1)  # a new initialisation
    variants = {
        "original": probe,
        "frozen_gate_fresh_experts": ProbeTrainer(
            bridge, hook_names, train, fresh, progress=False, frozen_gate=probe
        ).train(),
        "fresh_probe": ProbeTrainer(bridge, hook_names, train, fresh, progress=False).train(),
    }
    return pd.DataFrame(
        [
            {"variant": name, "accuracy": float(evaluate_probe(model, bridge, hook_names, test).correct.float().mean())}
            for name, model in variants.items()
        ]
    )
