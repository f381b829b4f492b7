"""Brain-Inspired Modular Training (Liu, Gan & Tegmark 2023): task loss + lambda * connection cost, AdamW, swaps.

Works on anything with a unit graph: a :class:`~modmask_lens.modularity.BimtMLP` or a TransformerBridge (MLP neurons
and whole heads move within their block, the residual stream moves as one permutation across all blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor, nn

from modmask_lens.modularity.bridge_graph import unit_graph_of
from modmask_lens.modularity.connection_cost import ConnectionCost, ConnectionCostConfig
from modmask_lens.modularity.swaps import relocate_units
from modmask_lens.modularity.unit_graph import UnitGraph


@dataclass(frozen=True)
class BimtConfig:
    """Training settings; defaults are BIMT's symbolic-formula tasks (code KindXiaoming/BIMT).

    Attributes:
        steps: optimiser steps, full batch (20k, symbolic and modular addition).
        lr: AdamW learning rate, weight decay 0 (2e-3 symbolic, 1e-3 modular addition).
        lambda_initial: strength of the connection cost at step 0 (1e-3 symbolic, 0.1 modular addition).
        lambda_changes: ``(fraction of steps, factor)``: from that step on lambda is multiplied by the factor
            (symbolic and modular addition: x10 at 1/4, x0.1 at 3/4).
        swap_every: steps between swap passes (``swap_log`` = 200).
        top_k: units relocated per axis and pass (5 symbolic, 30 modular addition).
        penalize_biases_from: fraction of the steps after which biases are charged ``l0 * |b|`` (3/4 symbolic).
        cost: the connection cost's geometry.
        log_every: steps between rows of the returned history.
    """

    steps: int = 20_000  # BIMT code, symbolic
    lr: float = 2e-3  # BIMT code, symbolic
    lambda_initial: float = 1e-3  # BIMT code, symbolic
    lambda_changes: tuple[tuple[float, float], ...] = ((0.25, 10.0), (0.75, 0.1))  # BIMT code, symbolic
    swap_every: int = 200  # BIMT code, swap_log
    top_k: int = 5  # BIMT code, symbolic
    penalize_biases_from: float = 0.75  # BIMT code, symbolic bias_penalize
    cost: ConnectionCostConfig = field(default_factory=ConnectionCostConfig)
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "swap_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def lambda_at(self, step: int) -> float:
        """Lambda at ``step`` under the piecewise-constant schedule."""
        strength = self.lambda_initial
        for fraction, factor in self.lambda_changes:
            if step >= fraction * self.steps:
                strength *= factor
        return strength

    def charges_biases_at(self, step: int) -> bool:
        """Whether the connection cost charges biases at ``step``."""
        return step >= self.penalize_biases_from * self.steps

    def swaps_after(self, step: int) -> bool:
        """Whether a swap pass follows the optimiser step of ``step``."""
        return (step + 1) % self.swap_every == 0


SYMBOLIC = BimtConfig()
"""BIMT's symbolic-formula settings (the defaults): sum cost, A = 1, l0 = 0.1, lambda 1e-3 (x10 at 1/4, x0.1 at 3/4),
lr 2e-3, top_k 5, biases charged from 3/4 of training."""

MODULAR_ADDITION = BimtConfig(
    lr=1e-3,
    lambda_initial=0.1,
    top_k=30,
    penalize_biases_from=0.0,
    cost=ConnectionCostConfig(weight_factor=2.0, hop_length=0.5, reduction="mean"),
)
"""BIMT's modular addition (p = 59) settings: mean cost, A = 2, l0 = 0.5, lambda 0.1 (x10 at 1/4, x0.1 at 3/4),
lr 1e-3, top_k 30, biases charged throughout (BIMT code, ``modular_addition_3.3``)."""


class BimtObjective:
    """What BIMT adds to a model's own training: ``lambda(step) * connection cost`` on the loss, and a swap pass every
    ``swap_every`` steps that moves the optimiser's moments with the weights. :func:`train_bimt` trains with it; the
    zoo's BIMT variants add it to their recipes' training (``config.lr`` is then not used).

    Args:
        graph: the model's unit graph (:func:`unit_graph_of`).
        config: schedule and geometry.
    """

    def __init__(self, graph: UnitGraph, config: BimtConfig):
        self.config = config
        self.graph = graph
        self.cost = ConnectionCost(graph, config.cost)

    def terms(self, step: int) -> tuple[float, Float[Tensor, ""]]:
        """lambda at ``step`` and the connection cost (biases charged from ``penalize_biases_from`` on)."""
        return self.config.lambda_at(step), self.cost(include_biases=self.config.charges_biases_at(step))

    def penalty(self, step: int) -> Float[Tensor, ""]:
        """The term added to the task loss at ``step`` (0-based, before the optimiser step)."""
        strength, connection = self.terms(step)
        return strength * connection

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> int:
        """The swap pass after optimiser step ``step``, if one is due; returns how many units moved."""
        if not self.config.swaps_after(step):
            return 0
        return relocate_units(self.graph, self.cost, self.config.top_k, optimizer)


def train_bimt(
    model: nn.Module,
    task_loss: Callable[[], Float[Tensor, ""]],
    config: BimtConfig = SYMBOLIC,
    graph: UnitGraph | None = None,
    callback: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Train ``model`` with BIMT: AdamW on ``task_loss() + lambda * connection cost``, a swap pass every
    ``config.swap_every`` steps (optimiser state permuted with the weights).

    Args:
        model: a module with a unit graph (:class:`~modmask_lens.modularity.BimtMLP`, a TransformerBridge).
        task_loss: computes the task loss of the current parameters (one full batch, or a fresh batch per call).
        config: schedule and geometry.
        graph: the model's unit graph (default: :func:`unit_graph_of` ``(model)``).
        callback: called with the step number at every logged step (e.g. to save connectome frames).

    Returns:
        History with columns ``step``, ``task_loss``, ``connection_cost``, ``lambda``, ``swaps`` (swaps made since
        the previous row).

    Example:
        >>> history = train_bimt(mlp, lambda: ((mlp(x) - y) ** 2).mean())      # doctest: +SKIP
    """
    objective = BimtObjective(graph if graph is not None else unit_graph_of(model), config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    history = []
    swaps_since_log = 0
    for step in range(config.steps):
        task = task_loss()
        strength, connection = objective.terms(step)
        optimizer.zero_grad()
        (task + strength * connection).backward()
        optimizer.step()
        swaps_since_log += objective.after_step(step, optimizer)
        if step % config.log_every == 0 or step == config.steps - 1:
            history.append(
                dict(
                    step=step,
                    task_loss=float(task.detach()),
                    connection_cost=float(connection.detach()),
                    **{"lambda": strength},
                    swaps=swaps_since_log,
                )
            )
            swaps_since_log = 0
            if callback is not None:
                callback(step)
    return pd.DataFrame(history)
