"""The clusterability ("enmeshment") loss: task loss - lambda * mean clusterability, clusters fixed once computed.

Golechha, Cope & Schoots 2024 ("enmeshment loss", arXiv 2409.15747) and 2025 ("clusterability loss", arXiv
2502.02470), code 7vik/nn-modularity: ``L = L_task - lambda * mean_l C(W_l)``, equivalently ``+ lambda * (1 - C)``. In
a transformer the clustered matrices are the MLP's (``W_in``, ``W_gate``, ``W_out``), so neuron cluster c reads from and
writes to residual block c in every layer; ``heads=True`` adds the attention matrices with whole head groups assigned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from modmask_lens.modularity.bridge_graph import unit_graph_of
from modmask_lens.modularity.clusterability import (
    ClusterMethod,
    cluster_units,
    edge_clusterability,
    measured_edges,
)
from modmask_lens.modularity.unit_graph import UnitGraph


@dataclass(frozen=True)
class ClusterabilityConfig:
    """Attributes:
    n_clusters: k (4 throughout Golechha et al.).
    strength: lambda (20: the CIFAR notebook and the default of ``gpt2-small.py``; 40 in the Pythia trainer).
    method: how the fixed clusters are found: ``blocks`` (the reference's default) or ``spectral``.
    heads: also cluster whole head groups and the attention matrices (an extension; the reference clusters MLP
        matrices only).
    seed: k-means seed for ``spectral``.
    """

    n_clusters: int = 4  # Golechha et al., k = 4 throughout
    strength: float = 20.0  # Golechha et al., CIFAR notebook and gpt2-small.py
    method: ClusterMethod = "blocks"  # 7vik/nn-modularity default (fixed contiguous blocks)
    heads: bool = False  # 7vik/nn-modularity: MLP matrices only
    seed: int = 0


class ClusterabilityLoss:
    """Fixes the clusters of a model once, then scores its current weights against them.

    Example:
        >>> regulariser = ClusterabilityLoss(bridge)                        # doctest: +SKIP
        >>> loss = task_loss + regulariser.penalty()                         # doctest: +SKIP
    """

    def __init__(self, model: nn.Module | UnitGraph, config: ClusterabilityConfig = ClusterabilityConfig()):
        self.config = config
        self.graph = model if isinstance(model, UnitGraph) else unit_graph_of(model)
        self.edges = measured_edges(self.graph, config.heads)
        self.clusters = cluster_units(self.graph, config.n_clusters, config.method, config.heads, config.seed)

    def mean_clusterability(self) -> Float[Tensor, ""]:
        """Mean over the clustered matrices of their clusterability (differentiable). A matrix whose weights are
        all zero has none (0 / 0) and is left out of the mean.

        Raises:
            ValueError: every clustered matrix is all zero.
        """
        values = [edge_clusterability(edge, self.clusters) for edge in self.edges]
        defined = [value for value in values if not bool(torch.isnan(value))]
        if not defined:
            raise ValueError("every clustered matrix of the model is all zero: there is no weight to cluster")
        return torch.stack(defined).mean()

    def penalty(self) -> Float[Tensor, ""]:
        """``-lambda * mean clusterability``: add it to the task loss."""
        return -self.config.strength * self.mean_clusterability()
