"""Plots of analysis results as inline SVG: kept fraction per layer and role, IoU heat maps, mask-logit histograms and
accuracy tables. Each takes the tidy DataFrame an analysis returns (or mask logits) and gives a view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor

from modmask_lens.analysis.accuracy import own_accuracy
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.viz.colors import sequential, series_colors, text_on
from modmask_lens.viz.html import TableView
from modmask_lens.viz.svg import Pixels, SvgView, check_something_to_plot, svg_document, text, tooltip

_MARGIN_LEFT, _MARGIN_TOP = 48, 30


def component_label(layer: object, role: str) -> str:
    """``L0 W_Q`` for a layer's tensor, ``W_U`` for a tensor outside the blocks."""
    return role if pd.isna(layer) else f"L{int(layer)} {role}"


def _legend(colors: Mapping[str, str], x: Pixels, y: Pixels) -> str:
    items = []
    for index, (name, color) in enumerate(colors.items()):
        items.append(
            f'<rect x="{x:.1f}" y="{y + 16 * index - 9:.1f}" width="10" height="10" '
            f'fill="{color}"/>' + text(x + 15, y + 16 * index, name, anchor="start")
        )
    return "".join(items)


def _y_axis(x: Pixels, top: Pixels, height: Pixels, width: Pixels, label: str) -> str:
    """Gridlines and ticks for values 0..1 over ``height`` px."""
    parts = []
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - tick)
        parts.append(f'<line class="mm-grid" x1="{x:.1f}" x2="{x + width:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(text(x - 5, y + 4, f"{tick:g}", anchor="end", css_class="mm-label-small"))
    parts.append(text(12, top + height / 2, label, rotate=-90))
    return "".join(parts)


class BarChart(SvgView):
    """Grouped bars of values in [0, 1]: one group per category, one bar (and colour) per series.

    Args:
        values: rows = categories (in drawing order), columns = series; NaN draws no bar.
        title: heading.
        value_label: y-axis label.
        caption: a sentence under the heading.
    """

    def __init__(self, values: pd.DataFrame, title: str, value_label: str, caption: str = ""):
        self.values, self.title, self.value_label, self.caption = values, title, value_label, caption

    def svg(self) -> str:
        series = list(self.values.columns)
        colors = series_colors(series)
        bar, gap, plot_height = 12, 12, 180
        group_width = bar * len(series) + gap
        plot_width = group_width * len(self.values)
        legend_width = 20 + 7 * max(len(name) for name in series)
        parts = [_y_axis(_MARGIN_LEFT, _MARGIN_TOP, plot_height, plot_width, self.value_label)]
        for group, (category, row) in enumerate(self.values.iterrows()):
            x0 = _MARGIN_LEFT + group * group_width + gap / 2
            for index, name in enumerate(series):
                value = row[name]
                if pd.isna(value):
                    continue
                height = plot_height * float(value)
                parts.append(
                    f'<rect class="mm-bar" x="{x0 + index * bar:.1f}" y="{_MARGIN_TOP + plot_height - height:.1f}" '
                    f'width="{bar - 1}" height="{height:.1f}" fill="{colors[name]}">'
                    f"{tooltip(f'{name} · {category}: {float(value):.3f}')}</rect>"
                )
            label_x = x0 + bar * len(series) / 2
            parts.append(
                text(
                    label_x,
                    _MARGIN_TOP + plot_height + 10,
                    category,
                    anchor="end",
                    rotate=-50,
                    css_class="mm-label-small",
                )
            )
        parts.append(_legend(colors, _MARGIN_LEFT + plot_width + 16, _MARGIN_TOP + 10))
        width = _MARGIN_LEFT + plot_width + 16 + legend_width
        return svg_document(width, _MARGIN_TOP + plot_height + 80, "".join(parts))


class Heatmap(SvgView):
    """A matrix of values in [0, 1] as coloured cells with their numbers.

    Args:
        values: rows and columns as drawn; NaN cells are left grey.
    """

    def __init__(self, values: pd.DataFrame, title: str, caption: str = ""):
        self.values, self.title, self.caption = values, title, caption

    def svg(self) -> str:
        cell_width, cell_height = 46, 24
        row_label_width = 8 + 7 * max(len(str(label)) for label in self.values.index)
        top = 80
        parts = []
        for column, label in enumerate(self.values.columns):
            x = row_label_width + column * cell_width + cell_width / 2
            parts.append(text(x, top - 6, label, anchor="start", rotate=-50, css_class="mm-label-small"))
        for row, (label, values) in enumerate(self.values.iterrows()):
            y = top + row * cell_height
            parts.append(text(row_label_width - 6, y + cell_height / 2 + 4, label, anchor="end"))
            for column, (name, value) in enumerate(values.items()):
                x = row_label_width + column * cell_width
                missing = pd.isna(value)
                fill = "#eceff2" if missing else sequential(float(value))
                shown = "–" if missing else f"{float(value):.2f}"
                parts.append(
                    f'<g class="mm-cell"><rect x="{x:.1f}" y="{y:.1f}" width="{cell_width - 1}" '
                    f'height="{cell_height - 1}" fill="{fill}">{tooltip(f"{label} · {name}: {shown}")}</rect>'
                    f'<text x="{x + cell_width / 2:.1f}" y="{y + cell_height / 2 + 4:.1f}" text-anchor="middle" '
                    f'style="fill:{"#55606b" if missing else text_on(float(value))}">{shown}</text></g>'
                )
        width = row_label_width + cell_width * len(self.values.columns) + 40
        return svg_document(width, top + cell_height * len(self.values) + 10, "".join(parts))


class Histogram(SvgView):
    """Overlaid step histograms, one colour per series, each with its marked threshold.

    Args:
        samples: series name -> 1-d tensor of values.
        thresholds: series name -> x value drawn as a dashed vertical line in the series' colour (a mask's readout
            threshold: it keeps the logits above it); series without one get no line.
        value_label: x-axis label.
        bins: number of equal-width bins over the pooled range of all series.
        counted: what each value is, plural, for the y-axis ("fraction of ..."), e.g. ``heads``.
        colors: series name -> colour (default: by position, :func:`~modmask_lens.viz.colors.series_colors`); a
            report passes every mask's colour, so that a series keeps the colour the other views give it.
    """

    def __init__(
        self,
        samples: Mapping[str, Tensor],
        title: str,
        value_label: str,
        thresholds: Mapping[str, float] | None = None,
        bins: int = 40,
        caption: str = "",
        counted: str = "values",
        colors: Mapping[str, str] | None = None,
    ):
        self.samples, self.title, self.value_label = dict(samples), title, value_label
        self.thresholds, self.bins, self.caption, self.counted = dict(thresholds or {}), bins, caption, counted
        self.colors = {name: (colors or series_colors(self.samples))[name] for name in self.samples}

    def svg(self) -> str:
        pooled = torch.cat([values.flatten().float() for values in self.samples.values()])
        marks = [float(value) for value in self.thresholds.values() if math.isfinite(value)]
        low, high = min([float(pooled.min()), *marks]) - 1e-6, max([float(pooled.max()), *marks]) + 1e-6
        plot_width, plot_height = 420, 180
        counts = {
            name: torch.histc(values.flatten().float(), bins=self.bins, min=low, max=high)
            for name, values in self.samples.items()
        }
        fractions = {name: count / count.sum() for name, count in counts.items()}
        top_value = max(float(fraction.max()) for fraction in fractions.values())

        def x_of(value: float) -> Pixels:
            return _MARGIN_LEFT + plot_width * (value - low) / (high - low)

        parts = []
        for tick in torch.linspace(low, high, 5).tolist():
            parts.append(text(x_of(tick), _MARGIN_TOP + plot_height + 14, f"{tick:.1f}", css_class="mm-label-small"))
        parts.append(
            f'<line class="mm-grid" x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT + plot_width}" '
            f'y1="{_MARGIN_TOP + plot_height}" y2="{_MARGIN_TOP + plot_height}"/>'
        )
        parts.append(text(_MARGIN_LEFT + plot_width / 2, _MARGIN_TOP + plot_height + 32, self.value_label))
        parts.append(text(12, _MARGIN_TOP + plot_height / 2, f"fraction of {self.counted}", rotate=-90))
        step = (high - low) / self.bins
        for name, fraction in fractions.items():
            points = [(x_of(low), _MARGIN_TOP + plot_height)]
            for bin_index, value in enumerate(fraction.tolist()):
                y = _MARGIN_TOP + plot_height * (1 - value / top_value)
                points += [(x_of(low + bin_index * step), y), (x_of(low + (bin_index + 1) * step), y)]
            points.append((x_of(high), _MARGIN_TOP + plot_height))
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline class="mm-histogram" points="{path}" fill="none" '
                f'stroke="{self.colors[name]}" stroke-width="1.5">'
                f"{tooltip(f'{name}: {int(counts[name].sum())} logits')}</polyline>"
            )
        for name in fractions:
            threshold = self.thresholds.get(name, math.nan)
            if not math.isfinite(threshold):
                continue
            x = x_of(threshold)
            parts.append(
                f'<line class="mm-threshold" x1="{x:.1f}" x2="{x:.1f}" y1="{_MARGIN_TOP - 8}" '
                f'y2="{_MARGIN_TOP + plot_height}" stroke="{self.colors[name]}" stroke-dasharray="4 3">'
                f"{tooltip(f'{name} keeps {self.value_label} > {threshold:.3g}')}</line>"
            )
            parts.append(text(x + 4, _MARGIN_TOP - 12, "kept →", anchor="start", css_class="mm-label-small"))
        parts.append(_legend(self.colors, _MARGIN_LEFT + plot_width + 16, _MARGIN_TOP + 10))
        width = _MARGIN_LEFT + plot_width + 36 + 7 * max(len(name) for name in fractions)
        return svg_document(width, _MARGIN_TOP + plot_height + 44, "".join(parts))


def kept_fraction_plot(kept: pd.DataFrame) -> BarChart:
    """Bars of kept fraction per layer and role, one colour per mask.

    Args:
        kept: ``BinaryMask.kept_fraction(by="layer_role")`` of one or more masks, concatenated.
    """
    check_something_to_plot(kept, "BinaryMask.kept_fraction(by='layer_role') of one mask or more")
    kept = kept.assign(component=[component_label(layer, role) for layer, role in zip(kept["layer"], kept["role"])])
    values = kept.pivot_table(index="component", columns="mask", values="kept_fraction", sort=False)
    return BarChart(
        values,
        "Kept fraction per layer and role",
        "kept fraction",
        "Fraction of each tensor's weights that the mask keeps (logit above the mask's readout threshold).",
    )


def iou_heatmap(overlap: pd.DataFrame) -> Heatmap:
    """IoU of every pair of masks per layer and role.

    Args:
        overlap: ``analysis.pairwise_overlap(masks, by="layer_role")``.
    """
    check_something_to_plot(overlap, "analysis.pairwise_overlap(masks, by='layer_role') of two masks or more")
    overlap = overlap.assign(
        pair=overlap["mask_a"] + " ∩ " + overlap["mask_b"],
        component=[component_label(layer, role) for layer, role in zip(overlap["layer"], overlap["role"])],
    )
    values = overlap.pivot_table(index="pair", columns="component", values="iou", sort=False, dropna=False)
    return Heatmap(
        values,
        "IoU of masks per layer and role",
        "Intersection over union of the kept weights of two masks (Csordás et al. 2021); "
        "– where neither keeps anything.",
    )


def routing_heatmap(routing: pd.DataFrame) -> Heatmap:
    """Share of each subtask's examples that a gated-module probe's gate routes to each expert.

    Args:
        routing: ``probes.routing_table(evaluation)`` (columns ``subtask``, ``expert``, ``count``).
    """
    check_something_to_plot(routing, "probes.routing_table(evaluation) of a probe evaluated on examples")
    counts = routing.pivot_table(index="subtask", columns="expert", values="count", sort=False)
    shares = counts.div(counts.sum(axis=1).where(counts.sum(axis=1) > 0), axis=0)
    shares.columns = [f"expert {expert}" for expert in shares.columns]
    return Heatmap(
        shares,
        "Routing of subtasks to experts",
        "Share of each subtask's examples whose argmax gate picks each expert (Krishnamurthy & Watkins "
        "2021); a decomposition that follows the subtasks puts one dark cell in each row.",
    )


UNITS_COUNTED = {"weight": "weights", "neuron": "neurons", "head": "heads", "matrix": "matrices"}
"""What one logit of a mask stands for, by granularity: the histogram's y-axis counts these."""


def logit_histogram(mask_sets: Mapping[str, MaskSet], colors: Mapping[str, str] | None = None) -> Histogram:
    """Distribution of the mask logits of each mask set, each with its readout threshold
    (:attr:`MaskSet.threshold`): the binary mask keeps the units right of it. The y-axis counts what the logits
    stand for (``fraction of heads`` for head masks; ``fraction of units`` where the granularities differ).
    ``colors``: mask name -> colour, where the mask sets are some of a report's masks (default: by position)."""
    check_something_to_plot(mask_sets, "{name: mask_set}, one mask set or more")
    counted = {UNITS_COUNTED[mask_set.config.granularity] for mask_set in mask_sets.values()}
    samples = {
        name: torch.cat([logit.detach().flatten() for logit in mask_set.logits.values()])
        for name, mask_set in mask_sets.items()
    }
    return Histogram(
        samples,
        "Mask logits",
        "logit",
        thresholds={name: mask_set.threshold for name, mask_set in mask_sets.items()},
        counted=counted.pop() if len(counted) == 1 else "units",
        colors=colors,
        caption="Learned logits of every masked unit; the dashed line of each mask is its readout threshold "
        "(masks.threshold): its binary mask keeps the logits above it.",
    )


def removal_table(accuracy: pd.DataFrame, metric: str = "exact-match accuracy") -> TableView:
    """Every subtask's accuracy (columns) under the full model, then under each mask alone and each mask removed
    (rows): what a subtask's mask keeps of the others, and what removing it breaks or spares, the question of
    Csordás et al. 2021 (do subtasks reuse each other's weights?).

    Args:
        accuracy: ``analysis.mask_accuracy(bridge, masks, data)``.
        metric: what its ``accuracy`` column holds (the objective's metric: exact match by default).
    """
    conditions = {"mask": "mask only", "inverse": "mask removed"}
    full = accuracy[accuracy["condition"] == "full"].assign(mask="full model", condition="")
    masked = accuracy[accuracy["condition"] != "full"].assign(
        condition=lambda frame: frame["condition"].map(conditions)
    )
    rows = pd.concat([full, masked])
    table = rows.pivot_table(index=["mask", "condition"], columns="subtask", values="accuracy", sort=False)
    subtasks = list(dict.fromkeys(accuracy["subtask"]))
    table = table.reindex(columns=subtasks).reset_index()
    table.columns.name = None
    return TableView(
        table,
        "Accuracy on every subtask: each mask alone and removed",
        f"{metric[0].upper()}{metric[1:]} of each subtask (columns) under the full model, under each mask alone, and "
        "with each mask removed (its linear weights; norm gains and embeddings kept). A mask that keeps only its "
        "own subtask, and whose removal breaks only its own, marks weights that the other subtasks do not use.",
        shade=subtasks,
    )


def accuracy_table(
    accuracy: pd.DataFrame, metric: str = "exact-match accuracy", subtask_of: Mapping[str, str] | None = None
) -> TableView:
    """Full model, mask-only and inverse-mask accuracy of each mask on its own subtask, one row per mask.

    Args:
        accuracy: ``analysis.mask_accuracy(bridge, masks, data)``.
        metric: what its ``accuracy`` column holds (the objective's metric: exact match by default).
        subtask_of: mask name -> the subtask it was trained for (default: each mask is named after its subtask); a
            report passes it, since it names masks by their labels.
    """
    names = accuracy["mask"].dropna().unique()
    own = own_accuracy(accuracy, subtask_of or {name: name for name in names})
    table = own.rename(columns={"mask": "mask only"}).reset_index()
    return TableView(
        table,
        "Accuracy: full model, mask, inverse mask",
        f"{metric[0].upper()}{metric[1:]} on each mask's own subtask of the full model, of the mask only, and of "
        "its inverse (the mask's linear weights removed; norm gains and embeddings kept). A modular subtask keeps "
        "accuracy under its mask and loses it under the inverse.",
        shade=["full", "mask only", "inverse"],
    )
