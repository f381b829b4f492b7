"""BIMT's swap step: move the most important units of every axis to the slot that lowers the connection cost most.

Liu, Gan & Tegmark 2023, code KindXiaoming/BIMT (``relocate``): for each of the ``top_k`` most important neurons of a
layer, try exchanging it with every neuron of the layer and keep the exchange that lowers the cost most. Here the cost
change of every candidate comes from :meth:`ConnectionCost.slot_costs` (exact, vectorised over candidates), the accepted
swaps of an axis are applied at once as one permutation, and the optimiser's state moves with the weights.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from modmask_lens.modularity.connection_cost import ConnectionCost
from modmask_lens.modularity.unit_graph import UnitAxis, UnitGraph, permute_units


def swap_cost_changes(slot_costs: Float[Tensor, "unit slot"], unit: int) -> Float[Tensor, " slot"]:
    """Change of the connection cost if the unit in slot ``unit`` swapped with the unit in each slot k:
    ``C[j, k] + C[k, j] - C[j, j] - C[k, k]`` (0 for k = j)."""
    diagonal = slot_costs.diagonal()
    return slot_costs[unit] + slot_costs[:, unit] - diagonal[unit] - diagonal


@torch.no_grad()
def relocate_axis(
    axis: UnitAxis, cost: ConnectionCost, top_k: int, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """Greedy BIMT relocation of one axis: the ``top_k`` most important units, most important first, each swapped
    with the unit whose exchange lowers the cost most (if any does). Returns the number of swaps made."""
    slot_costs = cost.slot_costs(axis)
    importance = cost.importance(axis)
    moved = torch.zeros(axis.n_units, dtype=torch.bool)
    order = torch.arange(axis.n_units)
    n_swaps = 0
    for _ in range(min(top_k, axis.n_units)):
        unit = int(importance.masked_fill(moved, -torch.inf).argmax())
        changes = swap_cost_changes(slot_costs, unit)
        target = int(changes.argmin())
        if changes[target] < 0:
            exchange = torch.tensor([target, unit])
            for state in (slot_costs, importance, moved, order):
                state[[unit, target]] = state[exchange]  # unit u's costs travel with it: only rows move
            n_swaps += 1
        moved[target if changes[target] < 0 else unit] = True
    if n_swaps:
        permute_units(axis, order, optimizer)
    return n_swaps


def relocate_units(
    graph: UnitGraph, cost: ConnectionCost, top_k: int, optimizer: torch.optim.Optimizer | None = None
) -> int:
    """One BIMT swap step over every axis of ``graph``, from input to output. Returns the number of swaps made."""
    return sum(relocate_axis(axis, cost, top_k, optimizer) for axis in graph.axes)
