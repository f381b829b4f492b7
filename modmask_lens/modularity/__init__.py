"""Training for modularity, and measuring it.

* BIMT, Brain-Inspired Modular Training (Liu, Gan & Tegmark 2023): :func:`train_bimt` on a :class:`BimtMLP` or a
  TransformerBridge, with :class:`ConnectionCost` and swaps (:func:`relocate_units`) that keep the function.
* Clusterability (Golechha, Cope & Schoots 2024/2025): :func:`clusterability` of any bridge or MLP, and
  :class:`ClusterabilityLoss` for training.
* :func:`mlp_connectome` lays out a network's weights for :func:`modmask_lens.viz.connectome_svg`;
  :func:`connected_modules` finds its disconnected parts.

Example:
    >>> from modmask_lens.modularity import clusterability                       # doctest: +SKIP
    >>> clusterability(bridge, k=4).groupby(["method", "role"])["clusterability"].mean()  # doctest: +SKIP
"""

from modmask_lens.modularity.bimt import MODULAR_ADDITION, SYMBOLIC, BimtConfig, BimtObjective, train_bimt
from modmask_lens.modularity.bridge_graph import UnsupportedForModularity, unit_graph_of
from modmask_lens.modularity.clusterability import (
    UnitClusters,
    cluster_units,
    clusterability,
    matrix_clusterability,
)
from modmask_lens.modularity.clusterability_loss import ClusterabilityConfig, ClusterabilityLoss
from modmask_lens.modularity.coclustering import spectral_cocluster
from modmask_lens.modularity.connection_cost import ConnectionCost, ConnectionCostConfig
from modmask_lens.modularity.connectome import mlp_connectome, transformer_block_connectome
from modmask_lens.modularity.mlp import BimtMLP
from modmask_lens.modularity.modules import connected_modules
from modmask_lens.modularity.swaps import relocate_units
from modmask_lens.modularity.unit_graph import UnitAxis, UnitGraph, WeightEdge, permute_units

__all__ = [
    "MODULAR_ADDITION",
    "SYMBOLIC",
    "BimtConfig",
    "BimtMLP",
    "BimtObjective",
    "ClusterabilityConfig",
    "ClusterabilityLoss",
    "ConnectionCost",
    "ConnectionCostConfig",
    "UnitAxis",
    "UnitClusters",
    "UnitGraph",
    "UnsupportedForModularity",
    "WeightEdge",
    "cluster_units",
    "clusterability",
    "connected_modules",
    "matrix_clusterability",
    "mlp_connectome",
    "permute_units",
    "relocate_units",
    "spectral_cocluster",
    "train_bimt",
    "transformer_block_connectome",
    "unit_graph_of",
]
