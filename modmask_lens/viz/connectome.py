"""Connectome plots as standalone SVG: neurons as dots, weights as lines (width ``|w| / max |W|``, blue > 0, red < 0).

BIMT's drawing (Liu, Gan & Tegmark 2023, code ``BioMLP.plot``): each neuron sits at its coordinate along its layer,
layers are stacked bottom (input) to top (output), and every weight of a matrix is a line whose width is its magnitude
relative to the largest of that matrix. Weights below ``min_relative`` of the largest are not drawn (invisible anyway),
which keeps files small. No script, font or network access: the SVG opens anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from modmask_lens.core.atomic_files import write_text_atomically
from modmask_lens.modularity.connectome import DrawnMatrix, mlp_connectome
from modmask_lens.modularity.unit_graph import UnitGraph
from modmask_lens.viz.html import escape
from modmask_lens.viz.svg import check_something_to_plot

POSITIVE_COLOUR = "#1f4e9c"  # BIMT: blue for w > 0
NEGATIVE_COLOUR = "#c0392b"  # BIMT: red for w < 0
DRAWN_MATRICES = "the matrices of mlp_connectome(graph) or transformer_block_connectome(graph, layer)"


def connectome_svg(
    drawn: Sequence[DrawnMatrix],
    title: str = "",
    width: int = 640,
    row_height: int = 120,
    max_line_width: float = 3.0,
    min_relative: float = 0.01,
) -> str:
    """An SVG document of the drawn matrices.

    Args:
        drawn: matrices and their rows (:func:`mlp_connectome`, :func:`transformer_block_connectome`).
        title: text above the plot.
        width: width in pixels; neuron coordinates in [0, 1] span it less a margin.
        row_height: pixels between rows.
        max_line_width: stroke width (pixels) of each matrix's largest weight.
        min_relative: weights below this fraction of their matrix's largest magnitude are not drawn.

    Raises:
        ValueError: ``drawn`` is empty (nothing decides the plot's rows).
    """
    check_something_to_plot(drawn, DRAWN_MATRICES)
    margin = 20
    n_rows = 1 + max(max(item.in_row, item.out_row) for item in drawn)
    height = 2 * margin + 20 + (n_rows - 1) * row_height

    def x_pixel(coordinate: float) -> float:
        return margin + coordinate * (width - 2 * margin)

    def y_pixel(row: int) -> float:
        return float(height - margin - row * row_height)

    lines, dots = [], set()
    for item in drawn:
        if not item.edge.placed:
            continue
        matrix = item.edge.matrix().detach().float().cpu()
        largest = matrix.abs().max().clamp_min(1e-30)
        x_in, x_out = item.edge.x_in.tolist(), item.edge.x_out.tolist()
        dots |= {(round(x, 6), item.in_row) for x in x_in} | {(round(x, 6), item.out_row) for x in x_out}
        for out_index, in_index in torch.nonzero(matrix.abs() >= min_relative * largest).tolist():
            value = float(matrix[out_index, in_index])
            lines.append(
                f'<line x1="{x_pixel(x_in[in_index]):.1f}" y1="{y_pixel(item.in_row):.1f}" '
                f'x2="{x_pixel(x_out[out_index]):.1f}" y2="{y_pixel(item.out_row):.1f}" '
                f'stroke="{POSITIVE_COLOUR if value > 0 else NEGATIVE_COLOUR}" '
                f'stroke-width="{max_line_width * abs(value) / float(largest):.2f}"/>'
            )
    circles = [f'<circle cx="{x_pixel(x):.1f}" cy="{y_pixel(row):.1f}" r="2.5"/>' for x, row in sorted(dots)]
    heading = f'<text x="{margin}" y="{margin}" font-size="14">{escape(title)}</text>' if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">\n<rect width="100%" height="100%" fill="white"/>\n{heading}\n'
        f'<g stroke-linecap="round">\n'
        + "\n".join(lines)
        + '\n</g>\n<g fill="black">\n'
        + "\n".join(circles)
        + "\n</g>\n</svg>\n"
    )


class ConnectomeFrames:
    """A :func:`~modmask_lens.modularity.train_bimt` callback that writes a connectome frame
    ``{directory}/frame_{step:06d}.svg`` at every logged step (frames of BIMT's training videos).

    Example:
        >>> train_bimt(mlp, loss, callback=ConnectomeFrames(mlp.unit_graph(), "frames"))     # doctest: +SKIP
    """

    def __init__(self, graph: UnitGraph, directory: str | Path, drawn: Sequence[DrawnMatrix] | None = None):
        self.drawn = list(drawn) if drawn is not None else mlp_connectome(graph)
        check_something_to_plot(self.drawn, DRAWN_MATRICES)  # before training, not at its first logged step
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int) -> None:
        write_text_atomically(
            self.directory / f"frame_{step:06d}.svg", connectome_svg(self.drawn, title=f"step {step}")
        )
