"""Modules of a sparse network: the connected components of its unit graph once weak weights are dropped.

BIMT's figures (Liu, Gan & Tegmark 2023) draw each weight with width ``|w| / max |W|`` of its layer, so weights far
below the layer's largest are invisible; "two disconnected modules" means two components of the remaining graph.
"""

from __future__ import annotations

import pandas as pd
import torch

from modmask_lens.modularity.unit_graph import UnitGraph


def connected_modules(graph: UnitGraph, relative_threshold: float = 0.05) -> pd.DataFrame:
    """Connected components of the units joined by strong weights (``|w| >= relative_threshold * max |W|`` of the
    weight's matrix; a unit joins another if any entry between them is strong). Embeddings and the unembedding, which
    join an axis to a fixed interface, do not join units.

    Returns:
        One row per unit that has at least one strong weight: ``module`` (0, 1, ... by first appearance along the
        axes), ``axis``, ``unit`` (its slot); units with no strong weight are left out.

    Example:
        >>> connected_modules(mlp.unit_graph()).groupby("module")["axis"].value_counts()      # doctest: +SKIP
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def root(node: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for edge in graph.edges:
        if edge.in_axis is None or edge.out_axis is None:
            continue
        magnitude = edge.matrix().detach().abs()
        out_width = magnitude.shape[0] // graph.axis(edge.out_axis).n_units
        in_width = magnitude.shape[1] // graph.axis(edge.in_axis).n_units
        strong = (magnitude >= relative_threshold * magnitude.max()) & (magnitude > 0)  # an all-zero matrix joins none
        for out_index, in_index in torch.nonzero(strong).tolist():
            first, second = root((edge.out_axis, out_index // out_width)), root((edge.in_axis, in_index // in_width))
            parent[first] = second
    order = {axis.name: position for position, axis in enumerate(graph.axes)}
    nodes = sorted(parent, key=lambda node: (order[node[0]], node[1]))
    module_of_root: dict[tuple[str, int], int] = {}
    rows = [
        {"module": module_of_root.setdefault(root(node), len(module_of_root)), "axis": node[0], "unit": node[1]}
        for node in nodes
    ]
    return pd.DataFrame(rows, columns=["module", "axis", "unit"])
