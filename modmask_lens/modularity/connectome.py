"""What a connectome plot draws: which weight matrices of a unit graph go between which rows (BIMT's drawing,
Liu, Gan & Tegmark 2023). :mod:`modmask_lens.viz.connectome` renders them."""

from __future__ import annotations

from dataclasses import dataclass

from modmask_lens.modularity.unit_graph import UnitGraph, WeightEdge


@dataclass(frozen=True, eq=False)
class DrawnMatrix:
    """A matrix to draw between two rows of the plot (row 0 at the bottom)."""

    edge: WeightEdge
    in_row: int
    out_row: int


def mlp_connectome(graph: UnitGraph) -> list[DrawnMatrix]:
    """Every matrix between two axes of an MLP's graph, one row per axis in order."""
    row_of = {axis.name: row for row, axis in enumerate(graph.axes)}
    return [
        DrawnMatrix(edge, row_of[edge.in_axis], row_of[edge.out_axis])
        for edge in graph.edges
        if edge.in_axis in row_of and edge.out_axis in row_of
    ]


_BLOCK_ROWS = {
    "W_Q": (0, 1),
    "W_K": (0, 1),
    "W_V": (0, 1),
    "W_O": (1, 2),
    "W_in": (2, 3),
    "W_gate": (2, 3),
    "W_out": (3, 4),
}
"""Rows of one transformer block: residual in (0), head dimensions (1), residual after attention (2), MLP neurons (3),
residual out (4)."""


def transformer_block_connectome(graph: UnitGraph, layer: int) -> list[DrawnMatrix]:
    """The matrices of block ``layer`` of a bridge's graph: residual -> heads -> residual -> neurons -> residual."""
    drawn = [
        DrawnMatrix(edge, *_BLOCK_ROWS[edge.role])
        for edge in graph.edges
        if edge.layer == layer and edge.role in _BLOCK_ROWS
    ]
    if not drawn:
        raise ValueError(
            f"no attention or MLP matrix in block {layer}; blocks are 0 .. "
            f"{max(edge.layer for edge in graph.edges if edge.layer is not None)}"
        )
    return drawn
