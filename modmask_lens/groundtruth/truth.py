"""A plant's answer key: for each subtask and granularity, which mask units (elements of ``MaskSet.logits``) it uses."""

from __future__ import annotations

from torch import nn

from modmask_lens.adapters.base import model_shape
from modmask_lens.groundtruth.case import UnitTruth
from modmask_lens.groundtruth.plan import PlantPlan, block_units, element_use
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import units_for


def plant_truth(bridge: nn.Module, plan: PlantPlan) -> dict[str, dict[str, UnitTruth]]:
    """Subtask -> granularity -> unit name -> ``bool`` of the unit's logit shape (the library's default
    :class:`~modmask_lens.MaskConfig` at that granularity).

    At ``weight`` granularity only tensors the subtasks divide are scored (shared ones are used by both, to an
    unknown degree); at ``neuron`` / ``head`` granularity a unit is the subtask's if its weights are.
    """
    dims = model_shape(bridge)
    truth: dict[str, dict[str, UnitTruth]] = {name: {} for name in plan.uses}
    for granularity in plan.granularities:
        units = units_for(bridge, MaskConfig(granularity=granularity))
        for name, use in plan.uses.items():
            if granularity == "weight":
                truth[name][granularity] = {
                    unit.name: element_use(unit.members[0], use, dims)
                    for unit in units
                    if plan.is_split(unit.members[0])
                }
            else:
                per_layer = use.neurons if granularity == "neuron" else use.heads
                truth[name][granularity] = {
                    unit.name: block_units(per_layer, unit.members[0].layer, granularity, dims).clone()
                    for unit in units
                }
    return truth
