"""Clusterability: the share of squared weight inside k paired clusters of units (Golechha, Cope & Schoots 2024/2025).

For a weight matrix from inputs U to outputs V and clusters (U_c, V_c), c = 1..k:
``C(W) = sum_c sum_{u in U_c, v in V_c} W_vu^2 / sum W^2``; i.i.d. weights with k equal blocks give about 1/k.

Clusters are found once for the whole network, one label per unit of every clustered axis, so a unit has the same
cluster in every matrix it belongs to: in a transformer the residual stream has one partition shared by all blocks,
and each MLP neuron (and, optionally, each head group) belongs to one cluster. Two ways to find them:

* ``blocks``: equal contiguous blocks per axis, as the reference code's default (unit i of n in block
  ``i // (n // k)``; the remainder of n / k belongs to no cluster).
* ``spectral``: Dhillon's co-clustering of the network's unit graph. Every matrix joins two axes; the axes split in two
  sides (in a transformer: the residual stream against all neurons and heads; in an MLP: alternate layers) and the
  affinity between two units is the root of the summed squares of all weights that join them (``|w|`` for one weight).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from modmask_lens.modularity.bridge_graph import unit_graph_of
from modmask_lens.modularity.coclustering import BipartiteSpectralEmbedding
from modmask_lens.modularity.unit_graph import UnitGraph, WeightEdge

ClusterMethod = Literal["blocks", "spectral"]
NO_CLUSTER = -1


@dataclass(frozen=True, eq=False)
class UnitClusters:
    """A cluster label per unit of each clustered axis (:data:`NO_CLUSTER` = -1 for units in none).

    Attributes:
        n_clusters: k.
        method: ``blocks`` or ``spectral``.
        labels: axis name -> ``[n_units]`` labels in ``-1 .. k-1``.
    """

    n_clusters: int
    method: ClusterMethod
    labels: dict[str, Int[Tensor, " n_units"]]

    def entry_labels(self, axis_name: str, n_entries: int) -> Int[Tensor, " n_entries"]:
        """Labels of the ``n_entries`` entries of one side of a matrix (a head's ``d_head`` entries share its label)."""
        labels = self.labels[axis_name]
        return labels.repeat_interleave(n_entries // labels.shape[0])


def block_labels(n_units: int, n_clusters: int) -> Int[Tensor, " n_units"]:
    """Equal contiguous blocks: unit i in cluster ``i // (n_units // n_clusters)``, the remainder in none (-1)."""
    block = n_units // n_clusters
    labels = torch.full((n_units,), NO_CLUSTER)
    if block:
        labels[: block * n_clusters] = torch.arange(block * n_clusters) // block
    return labels


def matrix_clusterability(
    matrix: Float[Tensor, "n_out n_in"],
    out_labels: Int[Tensor, " n_out"],
    in_labels: Int[Tensor, " n_in"],
    n_clusters: int,
) -> Float[Tensor, ""]:
    """``sum_c sum_{u in U_c, v in V_c} W_vu^2 / sum W^2`` as ``trace(P_V^T (W*W) P_U) / ||W||^2`` with one-hot
    cluster indicators P (units labelled -1 count in no cluster). Golechha, Cope & Schoots 2025, eq. for C(W). NaN
    for an all-zero matrix, which has no weight to place inside or outside a cluster. Half-precision weights are
    summed in float32 (in bfloat16 the share itself would round to steps of about 0.002 near 0.5).

    Raises:
        ValueError: a label outside ``-1 .. n_clusters - 1`` (it would count in no cluster).

    Example:
        >>> matrix_clusterability(torch.eye(4), torch.arange(4) // 2, torch.arange(4) // 2, 2)
        tensor(1.)
    """
    labels = torch.cat([out_labels, in_labels])
    if bool(((labels < NO_CLUSTER) | (labels >= n_clusters)).any()):
        raise ValueError(
            f"labels must lie in -1 .. {n_clusters - 1} for {n_clusters} clusters, got {labels.unique().tolist()}: "
            "pass the k the labels were made for"
        )
    return _share_inside(matrix, out_labels, in_labels, n_clusters)


def _share_inside(
    matrix: Float[Tensor, "n_out n_in"],
    out_labels: Int[Tensor, " n_out"],
    in_labels: Int[Tensor, " n_in"],
    n_clusters: int,
) -> Float[Tensor, ""]:
    """:func:`matrix_clusterability` of labels known to be in range (no check, so no device synchronisation)."""
    squared = matrix.to(torch.promote_types(matrix.dtype, torch.float32)) ** 2
    inside = (
        _indicator(out_labels, n_clusters, squared) * (squared @ _indicator(in_labels, n_clusters, squared))
    ).sum()
    return inside / squared.sum()


def _indicator(labels: Int[Tensor, " n"], n_clusters: int, like: Tensor) -> Float[Tensor, "n k"]:
    """One-hot rows, all-zero for label -1 (on the labels' device)."""
    return (labels[:, None] == torch.arange(n_clusters, device=labels.device)[None, :]).to(like)


def clustered_axis_names(graph: UnitGraph, heads: bool = False) -> list[str]:
    """The axes that get clusters: all of an MLP's; a transformer's residual stream and neurons, and its head groups
    if ``heads``."""
    return [axis.name for axis in graph.axes if heads or axis.kind != "head_group"]


def clustered_edges(graph: UnitGraph, axis_names: Iterable[str]) -> list[WeightEdge]:
    """The matrices with a clustered axis on both sides (embeddings and the unembedding have none on one side)."""
    names = set(axis_names)
    return [edge for edge in graph.edges if edge.in_axis in names and edge.out_axis in names]


def measured_edges(graph: UnitGraph, heads: bool = False) -> list[WeightEdge]:
    """:func:`clustered_edges` of the clustered axes, refusing a graph that has none (an attention-only model
    without ``heads``).

    Raises:
        ValueError: no matrix has clustered units on both sides.
    """
    edges = clustered_edges(graph, clustered_axis_names(graph, heads))
    if not edges:
        raise ValueError(
            "the model has no matrix with clustered units on both sides (MLP matrices, or attention "
            "with heads=True): pass heads=True for an attention-only model, else check that its adapter locates "
            "neurons"
        )
    return edges


def check_cluster_count(graph: UnitGraph, n_clusters: object, heads: bool = False, blocks: bool = True) -> None:
    """Refuse a number of clusters that is not a positive integer, or, for ``blocks``, that exceeds the units of
    every clustered axis (then no unit is clustered and every value would read 0; an axis with fewer units than
    clusters is left unclustered, :func:`block_labels`, while a larger one is clustered). Spectral co-clustering
    clusters the units of all axes together and takes any k up to their number (:func:`kmeans` checks it).

    Raises:
        ValueError: naming the valid range.
    """
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"k={n_clusters!r} clusters: give a positive integer (the paper measures 2 to 20)")
    largest = max(graph.axis(name).n_units for name in clustered_axis_names(graph, heads))
    if blocks and n_clusters > largest:
        raise ValueError(
            f"k={n_clusters} clusters: blocks need at most {largest}, the units of the largest clustered axis "
            "(the paper measures 2 to 20); method 'spectral' takes more"
        )


def cluster_units(
    graph: UnitGraph,
    n_clusters: int = 4,
    method: ClusterMethod = "blocks",
    heads: bool = False,
    seed: int = 0,
    embedding: BipartiteSpectralEmbedding | None = None,
) -> UnitClusters:
    """Clusters of every clustered unit of ``graph`` (see the module docstring for the two methods).

    Args:
        graph: the network's unit graph.
        n_clusters: k (4 in Golechha et al.'s training; 2 to 20 when measuring).
        method: ``blocks`` or ``spectral``.
        heads: also cluster whole head groups (attention matrices then count as clustered matrices).
        seed: k-means seed for ``spectral``.
        embedding: a precomputed :func:`unit_spectral_embedding` of the same graph and ``heads`` (to reuse it
            across k).

    Raises:
        ValueError: ``embedding`` has another number of rows or columns than the clustered units.
    """
    check_cluster_count(graph, n_clusters, heads, blocks=method == "blocks")
    axis_names = clustered_axis_names(graph, heads)
    if method == "blocks":
        return UnitClusters(
            n_clusters, method, {name: block_labels(graph.axis(name).n_units, n_clusters) for name in axis_names}
        )
    if method != "spectral":
        raise ValueError(f"method={method!r}: choose 'blocks' or 'spectral'")
    sides = _two_sides(graph, axis_names)
    embedding = embedding if embedding is not None else unit_spectral_embedding(graph, n_clusters, heads)
    side_units = tuple(sum(graph.axis(name).n_units for name in side_names) for side_names in sides)
    if (embedding.rows.shape[0], embedding.columns.shape[0]) != side_units:
        raise ValueError(
            f"the embedding has {embedding.rows.shape[0]} rows and {embedding.columns.shape[0]} columns, the clustered "
            f"units {side_units[0]} and {side_units[1]}: compute it with unit_spectral_embedding of this graph and "
            f"heads={heads}"
        )
    row_labels, column_labels = embedding.cocluster(n_clusters, seed)
    labels = {}
    for side_names, side_labels in zip(sides, (row_labels, column_labels)):
        start = 0
        for name in side_names:
            labels[name] = side_labels[start : start + graph.axis(name).n_units]
            start += graph.axis(name).n_units
    return UnitClusters(n_clusters, method, labels)


def unit_spectral_embedding(graph: UnitGraph, max_clusters: int, heads: bool = False) -> BipartiteSpectralEmbedding:
    """Dhillon's embedding of the graph's clustered units, rows = the first side's units, columns = the second's."""
    axis_names = clustered_axis_names(graph, heads)
    sides = _two_sides(graph, axis_names)
    offsets = {}
    for side_names in sides:
        start = 0
        for name in side_names:
            offsets[name] = start
            start += graph.axis(name).n_units
    side_of = {name: index for index, side_names in enumerate(sides) for name in side_names}
    n_rows, n_columns = (sum(graph.axis(name).n_units for name in side_names) for side_names in sides)
    squared_mass = torch.zeros(n_rows, n_columns, dtype=torch.float64)
    for edge in clustered_edges(graph, axis_names):
        out_axis, in_axis = graph.axis(edge.out_axis), graph.axis(edge.in_axis)
        squared = edge.matrix().detach().double().cpu() ** 2
        per_unit = squared.view(out_axis.n_units, -1, in_axis.n_units, squared.shape[1] // in_axis.n_units).sum((1, 3))
        if side_of[edge.out_axis] == 1:
            per_unit, out_axis, in_axis = per_unit.T, in_axis, out_axis
        squared_mass[
            offsets[out_axis.name] : offsets[out_axis.name] + out_axis.n_units,
            offsets[in_axis.name] : offsets[in_axis.name] + in_axis.n_units,
        ] += per_unit
    return BipartiteSpectralEmbedding.of(squared_mass.sqrt(), max_clusters)


def _two_sides(graph: UnitGraph, axis_names: list[str]) -> tuple[list[str], list[str]]:
    """Split the clustered axes into two sides so that every clustered matrix joins one side to the other."""
    side_of = {axis_names[0]: 0}
    edges = clustered_edges(graph, axis_names)
    changed = True
    while changed:
        changed = False
        for edge in edges:
            for this, other in ((edge.in_axis, edge.out_axis), (edge.out_axis, edge.in_axis)):
                if this in side_of and other not in side_of:
                    side_of[other] = 1 - side_of[this]
                    changed = True
                elif this in side_of and side_of[other] == side_of[this]:
                    raise ValueError(
                        f"the unit graph is not bipartite ({edge.key} joins two axes of one side); "
                        "spectral co-clustering needs two sides, use method='blocks'"
                    )
    missing = [name for name in axis_names if name not in side_of]
    if missing:
        raise ValueError(f"axes {missing} are not joined to {axis_names[0]} by any clustered matrix")
    return ([name for name in axis_names if side_of[name] == 0], [name for name in axis_names if side_of[name] == 1])


def edge_clusterability(edge: WeightEdge, clusters: UnitClusters) -> Float[Tensor, ""]:
    """Clusterability of one matrix under the network's clusters (differentiable in the weight)."""
    matrix = edge.matrix()
    return _share_inside(
        matrix,
        clusters.entry_labels(edge.out_axis, matrix.shape[0]).to(matrix.device),
        clusters.entry_labels(edge.in_axis, matrix.shape[1]).to(matrix.device),
        clusters.n_clusters,
    )


def chance_clusterability(edge: WeightEdge, clusters: UnitClusters) -> float:
    """Expected clusterability of i.i.d. weights under these clusters: ``sum_c |V_c| |U_c| / (n_out n_in)``
    (1/k for equal blocks that cover the matrix)."""
    matrix = edge.matrix()
    return float(
        _share_inside(
            torch.ones(matrix.shape),
            clusters.entry_labels(edge.out_axis, matrix.shape[0]),
            clusters.entry_labels(edge.in_axis, matrix.shape[1]),
            clusters.n_clusters,
        )
    )


def clusterability(
    model: nn.Module | UnitGraph,
    k: numbers.Integral | Iterable[numbers.Integral] = range(2, 21),
    methods: Iterable[str] = ("blocks", "spectral"),
    heads: bool = False,
    baseline: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Clusterability of every clustered matrix of a model, per layer and role, for several k and both methods.

    Args:
        model: a TransformerBridge (any family with an adapter), a :class:`~modmask_lens.modularity.BimtMLP`, or a
            unit graph.
        k: the number of clusters (an int, numpy integers too), or several (the paper measures 2 to 20).
        methods: ``blocks`` and/or ``spectral`` (see the module docstring).
        heads: also assign whole head groups to clusters and measure ``W_Q``, ``W_K``, ``W_V``, ``W_O``.
        baseline: add ``random``: the same measurement (clusters recomputed the same way) on i.i.d. normal weights of
            the same shapes.
        seed: seed of k-means and of the random weights.

    Returns:
        Tidy frame, one row per (method, k, matrix): ``method``, ``k``, ``layer``, ``role``, ``key``,
        ``clusterability`` (NaN for an all-zero matrix), ``chance`` (expected for i.i.d. weights under the same
        clusters), and ``random`` if ``baseline``.

    Example:
        >>> frame = clusterability(bridge, k=4, methods=["spectral"])                      # doctest: +SKIP
        >>> frame.groupby("role")["clusterability"].mean()                                # doctest: +SKIP
    """
    graph = model if isinstance(model, UnitGraph) else unit_graph_of(model)
    n_clusters = [  # numpy integers as ints; a bool or a float is refused below
        int(count) if isinstance(count, numbers.Integral) and not isinstance(count, bool) else count
        for count in ([k] if isinstance(k, numbers.Integral) else k)
    ]
    methods = (methods,) if isinstance(methods, str) else tuple(methods)  # one name, not its letters
    unknown = sorted(set(methods) - set(get_args(ClusterMethod)))
    if not methods or unknown:
        raise ValueError(f"methods={methods!r}: choose one or more of {get_args(ClusterMethod)}")
    measured_edges(graph, heads)
    if not n_clusters:
        raise ValueError(f"k={k!r}: give a number of clusters, or several")
    for count in n_clusters:
        check_cluster_count(graph, count, heads, blocks="blocks" in methods)
    measured = _measure(graph, n_clusters, methods, heads, seed)
    if baseline:
        random = _measure(graph.with_random_weights(seed), n_clusters, methods, heads, seed)
        measured["random"] = random["clusterability"].to_numpy()
    return measured


def _measure(
    graph: UnitGraph, n_clusters: list[int], methods: Iterable[ClusterMethod], heads: bool, seed: int
) -> pd.DataFrame:
    rows = []
    edges = measured_edges(graph, heads)
    for method in methods:
        embedding = unit_spectral_embedding(graph, max(n_clusters), heads) if method == "spectral" else None
        for k in n_clusters:
            clusters = cluster_units(graph, k, method, heads, seed, embedding)
            with torch.no_grad():
                rows += [
                    {
                        "method": method,
                        "k": k,
                        "layer": edge.layer,
                        "role": edge.role,
                        "key": edge.key,
                        "clusterability": float(edge_clusterability(edge, clusters)),
                        "chance": chance_clusterability(edge, clusters),
                    }
                    for edge in edges
                ]
    return pd.DataFrame(rows)
