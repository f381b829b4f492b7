"""Weight masks that keep or remove a plant's planted sets, for measuring sufficiency and necessity.

All masks are bridge parameter path -> float mask of the tensor's shape, as :func:`~modmask_lens.masked_call` takes
them; they cover every tensor the bridge reads (embeddings included), since a planted set can own embedding rows.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from torch import Generator, Tensor, nn

from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.base import model_shape
from modmask_lens.groundtruth.plan import PlantPlan, block_units, element_use, units_read

WeightMasks = dict[str, Tensor]


def planted_elements(bridge: nn.Module, plan: PlantPlan, subtask: str) -> dict[str, tuple[str, Tensor]]:
    """state_dict key -> (bridge path, the subtask's elements of that split tensor)."""
    dims = model_shape(bridge)
    use = plan.uses[subtask]
    return {
        spec.key: (spec.path, element_use(spec, use, dims))
        for spec in adapter_for(bridge).tensor_specs(bridge)
        if plan.is_split(spec)
    }


def keep_only(bridge: nn.Module, plan: PlantPlan, subtask: str) -> WeightMasks:
    """Keep the subtask's planted set and every shared tensor; zero the rest of the split tensors."""
    return {path: elements.float() for path, elements in planted_elements(bridge, plan, subtask).values()}


def remove(bridge: nn.Module, plan: PlantPlan, subtask: str) -> WeightMasks:
    """Zero the subtask's planted set (shared elements of a partly shared plant included); keep all else."""
    return {path: (~elements).float() for path, elements in planted_elements(bridge, plan, subtask).values()}


def remove_random_part(bridge: nn.Module, plan: PlantPlan, subtask: str, fraction: float, seed: int) -> WeightMasks:
    """Zero a random ``fraction`` of the subtask's planted units (``plan.ablation_unit``: neurons, heads, or single
    weights), drawn with ``seed``; keep all else (:func:`remove_units`)."""
    generator = Generator().manual_seed(seed)
    if plan.ablation_unit == "weight":
        return {
            path: (~_random_subset(elements, fraction, generator)).float()
            for path, elements in planted_elements(bridge, plan, subtask).values()
        }
    return remove_units(bridge, plan, subtask, _random_subset(planted_units(plan, subtask), fraction, generator))


def planted_units(plan: PlantPlan, subtask: str) -> Bool[Tensor, "layer unit"]:
    """The subtask's planted units of ``plan.ablation_unit`` (neurons or heads)."""
    use = plan.uses[subtask]
    return use.neurons if plan.ablation_unit == "neuron" else use.heads


def remove_units(
    bridge: nn.Module, plan: PlantPlan, subtask: str, removed_units: Bool[Tensor, "layer unit"]
) -> WeightMasks:
    """Zero the subtask's planted elements of the ``removed_units`` (``plan.ablation_unit``: neurons or heads);
    keep all else. Under grouped-query attention a key/value group is zeroed only when every query head reading it
    is removed, as a head mask does (a group serves any head reading it), the heads counted in the group's own
    block (:func:`~modmask_lens.groundtruth.plan.units_read`)."""
    dims = model_shape(bridge)
    specs = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge)}
    unit_kinds = {"neuron": ("neuron",), "head": ("head", "kv_head")}[plan.ablation_unit]
    masks = {}
    for key, (path, elements) in planted_elements(bridge, plan, subtask).items():
        spec = specs[key]
        if spec.unit not in unit_kinds or spec.layer is None:
            continue
        kept_units = ~block_units(removed_units, spec.layer, spec.unit, dims)
        units = ~units_read(spec, kept_units, dims)  # a group goes when no kept head reads it
        view = [1] * len(spec.shape)
        view[spec.unit_axis] = spec.shape[spec.unit_axis]
        masks[path] = (~(elements & units.repeat_interleave(spec.unit_width).view(view))).float()
    return masks


def unit_removals(bridge: nn.Module, plan: PlantPlan, subtask: str) -> list[WeightMasks]:
    """One :func:`remove_units` mask per planted unit of the subtask, in ``[layer, unit]`` order, removing that unit
    alone."""
    units = planted_units(plan, subtask)
    removals = []
    for layer, unit in units.nonzero().tolist():
        alone = torch.zeros_like(units)
        alone[layer, unit] = True
        removals.append(remove_units(bridge, plan, subtask, alone))
    return removals


def _random_subset(members: Tensor, fraction: float, generator: Generator) -> Tensor:
    """A random ``fraction`` (rounded) of the True entries of ``members``, as a bool of its shape."""
    flat = members.flatten()
    chosen = flat.nonzero().squeeze(1)
    chosen = chosen[torch.randperm(len(chosen), generator=generator)[: round(fraction * len(chosen))]]
    subset = torch.zeros_like(flat)
    subset[chosen] = True
    return subset.view_as(members)
