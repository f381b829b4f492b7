"""Measuring a plant's answer: is each planted set sufficient, and is it necessary, whole, in random halves and
unit by unit?

``unique`` is derived from these numbers by :func:`is_unique`, never asserted.
"""

from __future__ import annotations

from torch import nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.ablations import keep_only, remove, remove_random_part, unit_removals
from modmask_lens.groundtruth.evaluation import exact_match, masked_logits
from modmask_lens.groundtruth.plan import PlantPlan

HALF_DRAWS = 8  # random halves removed per subtask
SUFFICIENT = 0.99  # accuracy a kept-only set must reach
BROKEN = 0.2  # accuracy at or below which a subtask counts as broken (chance is 0.1)
UNIQUE_RULE = (
    f"unique iff for every subtask: kept-only accuracy >= {SUFFICIENT} (the set suffices), accuracy with "
    f"the set removed <= {BROKEN} (nothing outside it suffices), every one of {HALF_DRAWS} random "
    f"halves of it removed leaves accuracy < {SUFFICIENT} (no random half of it suffices), and removing any one "
    f"of its units alone from the full model leaves accuracy < {SUFFICIENT} (every unit is needed, so no smaller "
    f"set is a faithful answer at the readout's {SUFFICIENT:.0%}); single weights are not removed one by one, so "
    f"a plan whose unit is a weight is never shown unique"
)


def measure_plant(
    bridge: nn.Module, plan: PlantPlan, data: dict[str, SubtaskData], half_draws: int = HALF_DRAWS
) -> dict[str, dict]:
    """Subtask -> exact-match accuracies: ``full_accuracy``, ``kept_only_accuracy`` (only its planted set and the
    shared tensors), ``removed_accuracy`` (its set removed), ``others_after_removal`` (each other subtask with this
    set removed), ``half_removed_accuracy`` (one per random half of its units removed) and, where the plan's unit is
    a neuron or a head, ``unit_removed_accuracy`` (one per planted unit, ``[layer, unit]`` order, that unit alone
    removed from the full model)."""
    accuracy = {name: exact_match(masked_logits(bridge, examples), examples) for name, examples in data.items()}
    results = {}
    for name, examples in data.items():
        removal = remove(bridge, plan, name)
        results[name] = {
            "full_accuracy": accuracy[name],
            "kept_only_accuracy": exact_match(masked_logits(bridge, examples, keep_only(bridge, plan, name)), examples),
            "removed_accuracy": exact_match(masked_logits(bridge, examples, removal), examples),
            "others_after_removal": {
                other: exact_match(masked_logits(bridge, data[other], removal), data[other])
                for other in data
                if other != name
            },
            "half_removed_accuracy": [
                exact_match(
                    masked_logits(bridge, examples, remove_random_part(bridge, plan, name, 0.5, draw)),
                    examples,
                )
                for draw in range(half_draws)
            ],
        }
        if plan.ablation_unit != "weight":
            results[name]["unit_removed_accuracy"] = [
                exact_match(masked_logits(bridge, examples, removal), examples)
                for removal in unit_removals(bridge, plan, name)
            ]
    return results


def is_unique(measurements: dict[str, dict]) -> bool:
    """Whether the measurements show the planted sets to be the only sufficient ones at the plan's unit (see
    :data:`UNIQUE_RULE`)."""
    return all(
        subtask["kept_only_accuracy"] >= SUFFICIENT
        and subtask["removed_accuracy"] <= BROKEN
        and max(subtask["half_removed_accuracy"]) < SUFFICIENT
        and "unit_removed_accuracy" in subtask
        and max(subtask["unit_removed_accuracy"]) < SUFFICIENT
        for subtask in measurements.values()
    )
