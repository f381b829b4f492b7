"""Colours of every view: one categorical colour per subtask and a white-to-blue ramp for fractions in [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable

SUBTASK_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
"""Okabe-Ito colours (distinguishable with colour-vision deficiency), assigned to subtasks in order."""
SHARED_COLOR = "#1d232a"
"""Marks what several subtasks share."""
RAMP_LOW, RAMP_HIGH = (255, 255, 255), (8, 69, 148)
"""The sequential ramp's ends as RGB: white for 0, dark blue for 1 (the report's JavaScript draws with them too)."""


def subtask_color(index: int) -> str:
    """The colour of the ``index``-th subtask (cycles after eight)."""
    return SUBTASK_COLORS[index % len(SUBTASK_COLORS)]


def series_colors(names: Iterable[str]) -> dict[str, str]:
    """Each name's colour by its position (:func:`subtask_color`): a report passes every mask's name to each view, so
    a mask has one colour in every view, also in those that draw only some of the masks."""
    return {name: subtask_color(index) for index, name in enumerate(names)}


def sequential(fraction: float) -> str:
    """``#rrggbb`` from white (0) to dark blue (1); values outside [0, 1] are clipped."""
    fraction = min(max(fraction, 0.0), 1.0)
    return "#" + "".join(f"{round(low + (high - low) * fraction):02x}" for low, high in zip(RAMP_LOW, RAMP_HIGH))


def text_on(fraction: float) -> str:
    """Black or white, whichever reads on :func:`sequential` of ``fraction``."""
    return "#ffffff" if fraction > 0.55 else "#1d232a"
