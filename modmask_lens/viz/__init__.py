"""Circuits you can see: circuit and overlap graphs of masks, attention through masks, plots, and an offline HTML
report. Every view renders in a notebook (``_repr_html_``) and saves as a standalone page (``save_html``); graphs and
plots also export to SVG and PNG. Nothing is ever loaded from the network (docs/viz.md).

Example:
    >>> from modmask_lens.viz import write_report                                          # doctest: +SKIP
    >>> write_report("report.html", bridge, mask_sets, torch.tensor([3, 7, 10, 3, 12]))    # doctest: +SKIP
"""

from modmask_lens.viz.attention_patterns import AttentionPatterns, attention_patterns
from modmask_lens.viz.attention_view import AttentionView
from modmask_lens.viz.browser import BrowserUnavailable
from modmask_lens.viz.connectome import ConnectomeFrames, connectome_svg
from modmask_lens.viz.graph_view import CircuitView, OverlapView
from modmask_lens.viz.html import TableView, View
from modmask_lens.viz.plots import (
    accuracy_table,
    iou_heatmap,
    kept_fraction_plot,
    logit_histogram,
    removal_table,
    routing_heatmap,
)
from modmask_lens.viz.report import report_from_files, write_report

__all__ = [
    "AttentionPatterns",
    "AttentionView",
    "BrowserUnavailable",
    "CircuitView",
    "ConnectomeFrames",
    "OverlapView",
    "TableView",
    "View",
    "accuracy_table",
    "attention_patterns",
    "connectome_svg",
    "iou_heatmap",
    "kept_fraction_plot",
    "logit_histogram",
    "removal_table",
    "report_from_files",
    "routing_heatmap",
    "write_report",
]
