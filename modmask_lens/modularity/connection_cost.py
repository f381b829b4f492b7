"""BIMT's connection cost, and what it would become if a unit moved to another slot (exact, one matmul per side).

Liu, Gan & Tegmark 2023 ("Seeing is Believing: Brain-Inspired Modular Training"), code KindXiaoming/BIMT: each weight
costs ``|w| * (A * |x_out - x_in| + l0)``, where ``x`` are the places of its two neurons in [0, 1] and ``l0`` the
distance between adjacent layers; each bias costs ``|b| * l0``; embeddings cost ``|E| * l0``. The coordinates never
change: swaps move the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from modmask_lens.modularity.unit_graph import UnitAxis, UnitGraph, WeightEdge


@dataclass(frozen=True)
class ConnectionCostConfig:
    """Attributes:
    weight_factor: ``A``, the weight of the distance along a layer; 1 for BIMT's symbolic tasks, 2 for modular
        addition and MNIST (BIMT code ``weight_factor``). ``A = 0`` is plain L1.
    hop_length: ``l0``, the distance between adjacent layers; 0.1 symbolic, 0.5 modular addition (BIMT code).
    reduction: ``sum`` over all weights (BIMT symbolic tasks) or the ``mean`` of each matrix, summed over
        matrices (modular addition, MNIST, transformers); changes the scale of lambda.
    """

    weight_factor: float = 1.0  # BIMT code, symbolic tasks
    hop_length: float = 0.1  # BIMT code, symbolic tasks
    reduction: Literal["sum", "mean"] = "sum"  # BIMT code, symbolic tasks


class ConnectionCost:
    """The connection cost of a unit graph, with the distances kept as constant buffers.

    Example:
        >>> cost = ConnectionCost(unit_graph_of(mlp), ConnectionCostConfig())   # doctest: +SKIP
        >>> loss = task_loss + 1e-3 * cost()                                      # doctest: +SKIP
    """

    def __init__(self, graph: UnitGraph, config: ConnectionCostConfig = ConnectionCostConfig()):
        if config.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction={config.reduction!r}: choose 'sum' or 'mean'")
        self.graph = graph
        self.config = config
        self._distances = [self._distance(edge) for edge in graph.edges]

    def _distance(self, edge: WeightEdge) -> Float[Tensor, "n_out n_in"] | float:
        if not edge.placed:
            return self.config.hop_length
        along_layer = (edge.x_out[:, None] - edge.x_in[None, :]).abs().to(edge.weight.device)
        return self.config.weight_factor * along_layer + self.config.hop_length

    def _scale(self, tensor: Tensor) -> float:
        return 1.0 / tensor.numel() if self.config.reduction == "mean" else 1.0

    def __call__(self, include_biases: bool = True) -> Float[Tensor, ""]:
        """The total cost: every matrix's ``sum(|W| * D)`` (or mean), plus ``l0 * |b|`` for the biases if asked
        (BIMT's ``bias_penalize``, off until 3/4 of training on the symbolic tasks)."""
        total = sum(
            (edge.matrix().abs() * distance).sum() * self._scale(edge.weight)
            for edge, distance in zip(self.graph.edges, self._distances)
        )
        if include_biases:
            total = total + sum(
                self.config.hop_length * bias.abs().sum() * self._scale(bias) for bias in self.graph.biases
            )
        return total

    @torch.no_grad()
    def slot_costs(self, axis: UnitAxis) -> Float[Tensor, "unit slot"]:
        """``C[u, p]``: the distance cost of unit u's incoming and outgoing weights if the unit sat in slot p.

        Only the ``A * |x_out - x_in|`` part depends on the slot, so swapping units j and k changes the total cost by
        exactly ``C[j, k] + C[k, j] - C[j, j] - C[k, k]`` (no weight joins two units of one axis). One contraction per
        edge side (a matmul over the other side and the unit's width), instead of recomputing the total cost per
        candidate swap as the reference code does.
        """
        slot_costs = torch.zeros(axis.n_units, axis.n_units, dtype=torch.float64)  # small differences of sums
        for edge, side in self.graph.edges_touching(axis.name):
            if not edge.placed:
                continue  # embeddings: l0 only, the same in every slot
            magnitude = edge.matrix().detach().abs().cpu().double()
            if side == "in":
                places = edge.x_in.double().view(axis.n_units, -1)  # [slot, width]
                along_layer = (edge.x_out.double()[:, None, None] - places[None]).abs()  # [out, slot, width]
                contribution = torch.einsum(
                    "oud,opd->up", magnitude.view(magnitude.shape[0], axis.n_units, -1), along_layer
                )
            else:
                places = edge.x_out.double().view(axis.n_units, -1)  # [slot, width]
                along_layer = (places[:, :, None] - edge.x_in.double()[None, None, :]).abs()  # [slot, width, in]
                contribution = torch.einsum(
                    "udi,pdi->up", magnitude.view(axis.n_units, -1, magnitude.shape[1]), along_layer
                )
            slot_costs += self.config.weight_factor * self._scale(edge.weight) * contribution
        return slot_costs

    @torch.no_grad()
    def importance(self, axis: UnitAxis) -> Float[Tensor, " unit"]:
        """BIMT's neuron importance: the summed magnitude of each unit's incoming and outgoing weights."""
        importance = torch.zeros(axis.n_units, dtype=torch.float64)
        for edge, side in self.graph.edges_touching(axis.name):
            magnitude = edge.matrix().detach().abs().cpu().double()
            per_entry = magnitude.sum(0) if side == "in" else magnitude.sum(1)
            importance += per_entry.view(axis.n_units, -1).sum(1)
        return importance
