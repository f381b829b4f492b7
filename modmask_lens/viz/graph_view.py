"""Circuit graph of one mask and overlap graph of several, drawn as SVG laid out by layer, with a little vanilla
JavaScript for tooltips and for showing a clicked head's attention pattern (no library, nothing fetched).

Stages run left to right: embedding, then per layer its heads (stacked) and its MLP, then the unembedding. Edges are
the residual-stream measure of :mod:`modmask_lens.analysis.circuit_graph`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import reduce

import pandas as pd

from modmask_lens.analysis import pairwise_overlap
from modmask_lens.analysis.circuit_graph import CircuitGraph, circuit_graph, shared_mask
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.viz.attention_patterns import FULL, AttentionPatterns, inverse_label
from modmask_lens.viz.colors import RAMP_HIGH, RAMP_LOW, SHARED_COLOR, sequential, subtask_color, text_on
from modmask_lens.viz.html import TableView, escape, new_view_id, script_json
from modmask_lens.viz.plots import component_label
from modmask_lens.viz.svg import Pixels, SvgView, svg_document, text, tooltip

STAGE_WIDTH, ROW_HEIGHT, NODE_SIZE, MARGIN = 150, 64, 36, 40
GRAPH_CSS = """
.mm-edge { fill: none; }
.mm-node-label { font-size: 10px; fill: #55606b; }
.mm-stage-label { font-size: 11px; font-weight: 600; fill: #55606b; }
"""

# Tooltips follow the mouse (the SVG <title> texts move into data-info, so an exported SVG keeps them as native
# tooltips); clicking a head draws its attention pattern under each condition from the embedded JSON.
_GRAPH_SCRIPT = """
(function () {
  const root = document.getElementById(%(root)s);
  const patterns = %(patterns)s;
  const tip = root.querySelector('.mm-tooltip');
  root.querySelectorAll('.mm-node, .mm-edge').forEach(function (item) {
    const title = item.querySelector('title');
    item.dataset.info = title ? title.textContent : '';
    if (title) title.remove();
    item.addEventListener('mousemove', function (event) {
      tip.textContent = item.dataset.info; tip.style.display = 'block';
      tip.style.left = (event.clientX + 14) + 'px'; tip.style.top = (event.clientY + 10) + 'px';
    });
    item.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
  if (!patterns) return;
  const panel = root.querySelector('.mm-head-pattern');
  function shade(value) {
    const low = %(ramp_low)s, high = %(ramp_high)s;
    return 'rgb(' + low.map(function (l, i) { return Math.round(l + (high[i] - l) * value); }).join(',') + ')';
  }
  function heatmap(matrix, tokens) {
    const cell = 22, left = 8 + 7 * Math.max.apply(null, tokens.map(function (t) { return t.length; })), top = 40;
    let svg = '<svg xmlns="http://www.w3.org/2000/svg" class="mm-pattern" width="' +
      (left + cell * tokens.length + 10) + '" height="' + (top + cell * tokens.length + 6) + '">';
    tokens.forEach(function (token, k) {
      svg += '<text font-size="10" text-anchor="start" transform="rotate(-50 ' + (left + k * cell + 11) + ' ' +
        (top - 4) + ')" x="' + (left + k * cell + 11) + '" y="' + (top - 4) + '"></text>';
    });
    matrix.forEach(function (row, q) {
      svg += '<text font-size="10" text-anchor="end" x="' + (left - 4) + '" y="' + (top + q * cell + 15) + '"></text>';
      row.forEach(function (value, k) {
        // Grey above the diagonal only where no query can attend there (a causal model; BERT's queries can).
        const blank = patterns.causal && k > q;
        svg += '<rect class="mm-pattern-cell" x="' + (left + k * cell) + '" y="' + (top + q * cell) + '" width="' +
          (cell - 1) + '" height="' + (cell - 1) + '" fill="' + (blank ? '#f4f5f7' : shade(value)) + '"><title>' +
          'query ' + q + ' -> key ' + k + ': ' + value.toFixed(3) + '</title></rect>';
      });
    });
    svg += '</svg>';
    const holder = document.createElement('div');
    holder.innerHTML = svg;
    const labels = holder.querySelectorAll('text');
    tokens.forEach(function (token, k) {
      labels[k].textContent = token; labels[tokens.length + k].textContent = token;
    });
    return holder.firstChild;
  }
  function show(node) {
    root.querySelectorAll('.mm-node.mm-selected').forEach(function (n) { n.classList.remove('mm-selected'); });
    node.classList.add('mm-selected');
    const layer = +node.dataset.layer, head = +node.dataset.head, index = patterns.layers.indexOf(layer);
    panel.innerHTML = '';
    const heading = document.createElement('h4');
    heading.textContent = 'Attention of ' + node.dataset.node + ' on the prompt';
    panel.appendChild(heading);
    if (index < 0) {
      const reason = document.createElement('p');
      reason.className = 'mm-caption';
      reason.textContent = 'No attention pattern in layer ' + layer + ': ' + patterns.without_pattern[layer] + '.';
      panel.appendChild(reason);
      return;
    }
    patterns.conditions.forEach(function (condition) {
      const block = document.createElement('div');
      block.className = 'mm-pattern-block';
      const label = document.createElement('div');
      label.textContent = condition.label;
      block.appendChild(label);
      block.appendChild(heatmap(condition.pattern[index][head], patterns.tokens));
      panel.appendChild(block);
    });
  }
  root.querySelectorAll('.mm-node[data-kind="head"]').forEach(function (node) {
    node.addEventListener('click', function () { show(node); });
  });
  const first = root.querySelector('.mm-node[data-node=' + JSON.stringify(%(selected)s) + ']');
  if (first) show(first);
})();
"""


def node_positions(nodes: pd.DataFrame) -> dict[str, tuple[Pixels, Pixels]]:
    """Centre (x, y) in px of every node: one column per stage that has nodes (a block without heads or an MLP
    takes no room), heads stacked by index, other nodes centred vertically."""
    n_heads = int(nodes["head"].max()) + 1 if nodes["head"].notna().any() else 1
    middle = MARGIN + 20 + (n_heads - 1) * ROW_HEIGHT / 2
    column = {stage: index for index, stage in enumerate(sorted(nodes["stage"].unique()))}
    return {
        row.node: (
            MARGIN + NODE_SIZE + column[row.stage] * STAGE_WIDTH,
            middle if pd.isna(row.head) else MARGIN + 20 + int(row.head) * ROW_HEIGHT,
        )
        for row in nodes.itertuples()
    }


def _empty_blocks_note(nodes: pd.DataFrame) -> str:
    """A sentence naming the blocks that have no node (neither heads nor an MLP: recurrent, state-space or
    convolution blocks, as the mask recorded), or ``""`` when every block has one."""
    n_layers = (int(nodes.loc[nodes["kind"] == "unembed", "stage"].iloc[0]) - 1) // 2
    empty = sorted(set(range(n_layers)) - set(nodes["layer"].dropna().astype(int)))
    if not empty:
        return ""
    which = f"Layers {', '.join(map(str, empty))} run" if len(empty) > 1 else f"Layer {empty[0]} runs"
    return f" {which} neither attention heads nor an MLP (recurrent, state-space or convolution blocks): no node there."


def _edge_markup(
    edges: pd.DataFrame,
    positions: dict[str, tuple[Pixels, Pixels]],
    color: str,
    scale: float,
    label: str,
    offset: Pixels = 0.0,
) -> str:
    """Curves from writer to reader; width and opacity grow with weight / ``scale``."""
    parts = []
    for edge in edges.sort_values("weight").itertuples():
        (x1, y1), (x2, y2) = positions[edge.source], positions[edge.target]
        x1, x2, y1, y2 = x1 + NODE_SIZE / 2, x2 - NODE_SIZE / 2, y1 + offset, y2 + offset
        strength = edge.weight / scale if scale > 0 else 0.0
        middle = (x1 + x2) / 2
        parts.append(
            f'<path class="mm-edge" data-source="{escape(edge.source)}" data-target="{escape(edge.target)}" '
            f'd="M{x1:.1f},{y1:.1f} C{middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
            f'stroke="{color}" stroke-width="{0.6 + 4.5 * strength:.2f}" stroke-opacity="{0.12 + 0.6 * strength:.2f}">'
            f"{tooltip(f'{label}{edge.source} → {edge.target}: {edge.weight:.3f} of the residual paths kept')}</path>"
        )
    return "".join(parts)


def _stage_labels(nodes: pd.DataFrame, positions: dict[str, tuple[Pixels, Pixels]]) -> str:
    parts = []
    for stage, group in nodes.groupby("stage"):
        first = group.iloc[0]
        label = {"embed": "embedding", "unembed": "unembedding"}.get(first.kind) or (
            f"layer {first.layer} {'heads' if first.kind == 'head' else 'MLP'}"
        )
        parts.append(text(positions[first.node][0], 18, label, css_class="mm-stage-label"))
    return "".join(parts)


def _node_shape(node: tuple, x: Pixels, y: Pixels, fill: str, dashed: bool) -> str:
    half = NODE_SIZE / 2
    corner = half if node.kind == "head" else 5
    dash = ' stroke-dasharray="3 2"' if dashed else ""
    return (
        f'<rect class="mm-outline" x="{x - half:.1f}" y="{y - half:.1f}" width="{NODE_SIZE}" '
        f'height="{NODE_SIZE}" rx="{corner}" fill="{fill}" stroke="#55606b" stroke-width="1.2"{dash}/>'
    )


def _node_group(node: tuple, x: Pixels, y: Pixels, inner: str, info: str, extra_class: str = "") -> str:
    head = "" if pd.isna(node.head) else f' data-head="{int(node.head)}"'
    layer = "" if pd.isna(node.layer) else f' data-layer="{int(node.layer)}"'
    return (
        f'<g class="mm-node{extra_class}" data-node="{escape(node.node)}" data-kind="{node.kind}"{layer}{head}>'
        f"{inner}{text(x, y + NODE_SIZE / 2 + 12, node.node, css_class='mm-node-label')}{tooltip(info)}</g>"
    )


def _graph_size(positions: dict[str, tuple[Pixels, Pixels]]) -> tuple[Pixels, Pixels]:
    return (
        max(x for x, _ in positions.values()) + NODE_SIZE + MARGIN,
        max(y for _, y in positions.values()) + NODE_SIZE + MARGIN,
    )


def _node_info(graph: CircuitGraph, node: tuple) -> str:
    """Hover text: the node's kept weights, per matrix, kept neurons, and its strongest edges."""
    lines = [str(node.node)]
    if node.total:
        lines.append(f"kept {node.kept} / {node.total} weights ({node.kept_fraction:.1%})")
        # A role can name several matrices of one node (a mixture-of-experts layer's router and shared-expert gate).
        matrices = graph.node_roles[graph.node_roles["node"] == node.node]
        roles = matrices.groupby("role", sort=False)[["kept", "total"]].sum()
        lines.append("  ".join(f"{role} {row.kept / row.total:.1%}" for role, row in roles.iterrows()))
    else:
        lines.append("not masked (all weights kept)")
    if not pd.isna(node.neurons):
        lines.append(f"kept neurons {node.kept_neurons} / {node.neurons}")
    for column, other, arrow in (("target", "source", "from"), ("source", "target", "to")):
        linked = graph.edges[graph.edges[column] == node.node].nlargest(3, "weight")
        if len(linked):
            lines.append(
                f"strongest {arrow}: " + ", ".join(f"{row[other]} {row['weight']:.2f}" for _, row in linked.iterrows())
            )
    return "\n".join(lines)


def _interactive(svg: str, title: str, caption: str, patterns: dict | None, selected: str, aside: str = "") -> str:
    """The SVG with its tooltip, attention panel and script, wrapped as a view body."""
    root = new_view_id("graph")
    panel = '<div class="mm-head-pattern"></div>' if patterns else ""
    script = _GRAPH_SCRIPT % {
        "root": script_json(root),
        "patterns": script_json(patterns),
        "selected": script_json(selected),
        "ramp_low": script_json(RAMP_LOW),
        "ramp_high": script_json(RAMP_HIGH),
    }
    return (
        f'<div class="mm-view mm-graph-view" id="{root}"><h3>{escape(title)}</h3>'
        f'<p class="mm-caption">{escape(caption)}</p><div class="mm-row"><div class="mm-graph">{svg}</div>'
        f'{panel}{aside}</div><div class="mm-tooltip"></div><script>{script}</script></div>'
    )


def _keep_strongest(edges: pd.DataFrame, max_edges: int) -> pd.DataFrame:
    return edges[edges["weight"] > 0].nlargest(max_edges, "weight")


class CircuitView(SvgView):
    """Circuit graph of one mask.

    Nodes are filled by kept fraction (white 0 to dark blue 1; dashed when not masked); edges are the residual
    stream measure of :mod:`~modmask_lens.analysis.circuit_graph` (width and opacity relative to the strongest edge).
    Hovering shows a node's numbers; clicking a head shows its attention pattern on the prompt of ``patterns``.

    Args:
        graph: :func:`~modmask_lens.analysis.circuit_graph` of the mask.
        patterns: attention patterns including the full model and this mask (and, if computed, its inverse).
        max_edges: draw only the strongest edges.

    Example:
        >>> CircuitView(circuit_graph(mask), patterns).save_html("circuit.html")         # doctest: +SKIP
    """

    def __init__(self, graph: CircuitGraph, patterns: AttentionPatterns | None = None, max_edges: int = 60):
        self.graph, self.patterns, self.max_edges = graph, patterns, max_edges
        self.title = f"Circuit of {graph.name}"
        self.caption = (
            f"Node fill: kept fraction of the node's masked weights. Edges: fraction of the residual "
            f"paths writer → dimension → reader whose weights are all kept (strongest {max_edges}). "
            + (
                "Hover for numbers; click a head for its attention pattern."
                if patterns is not None and patterns.layers
                else "Hover for numbers."
            )
            + _empty_blocks_note(graph.nodes)
        )

    def svg(self) -> str:
        nodes, positions = self.graph.nodes, node_positions(self.graph.nodes)
        edges = _keep_strongest(self.graph.edges, self.max_edges)
        parts = [
            _stage_labels(nodes, positions),
            _edge_markup(edges, positions, "#3b4b5a", float(edges["weight"].max()) if len(edges) else 1.0, ""),
        ]
        for node in nodes.itertuples():
            x, y = positions[node.node]
            masked = not pd.isna(node.kept_fraction)
            fraction = float(node.kept_fraction) if masked else 0.0
            label = f"{fraction:.0%}" if masked else "–"
            inner = (
                _node_shape(node, x, y, sequential(fraction) if masked else "#ffffff", not masked)
                + f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" '
                f'style="fill:{text_on(fraction)};font-size:10px">{label}</text>'
            )
            parts.append(_node_group(node, x, y, inner, _node_info(self.graph, node)))
        width, height = _graph_size(positions)
        return svg_document(width, height, "".join(parts), GRAPH_CSS)

    def body(self) -> str:
        patterns = None
        if self.patterns is not None and self.patterns.layers:
            wanted = [FULL, self.graph.name, inverse_label(self.graph.name)]
            patterns = {
                "tokens": self.patterns.tokens,
                "layers": list(self.patterns.layers),
                "without_pattern": self.patterns.without_pattern,
                "causal": self.patterns.causal,
                "conditions": [
                    {"label": condition, "pattern": self.patterns.patterns[condition].round(decimals=3).tolist()}
                    for condition in wanted
                    if condition in self.patterns.patterns
                ],
            }
        heads = self.graph.nodes[self.graph.nodes["kind"] == "head"]
        if patterns is not None:
            heads = heads[heads["layer"].isin(self.patterns.layers)]
        selected = heads.loc[heads["kept_fraction"].fillna(1.0).idxmax(), "node"] if len(heads) else ""
        return _interactive(self.svg(), self.title, self.caption, patterns, selected)


class OverlapView(SvgView):
    """Overlap graph of several masks, with a table of IoU by layer and role beside it.

    Each node holds one bar per subtask (its colour; height = the node's kept fraction under that mask) and is
    outlined thick and dark when at least ``shared_threshold`` of the weights kept by any mask are kept by two or
    more (marked ``shared``). Edges: each mask's strongest edges in its colour.

    Args:
        graphs: subtask name -> its :func:`~modmask_lens.analysis.circuit_graph`.
        shared: circuit graph of :func:`~modmask_lens.viz.shared_mask` (weights kept by at least two masks).
        union: circuit graph of the union of all masks (weights kept by any).
        overlap: ``analysis.pairwise_overlap(masks, by="layer_role")``.
        max_edges: strongest edges drawn per mask.
        shared_threshold: shared weights / weights kept by any mask, at or above which a node is marked shared.
    """

    def __init__(
        self,
        graphs: Mapping[str, CircuitGraph],
        shared: CircuitGraph,
        union: CircuitGraph,
        overlap: pd.DataFrame,
        max_edges: int = 25,
        shared_threshold: float = 0.5,
    ):
        self.graphs, self.shared, self.union, self.overlap = dict(graphs), shared, union, overlap
        self.max_edges, self.shared_threshold = max_edges, shared_threshold
        self.title = "Overlap of " + ", ".join(self.graphs)
        self.caption = (
            f"Bars: kept fraction of each node under each mask. Thick dark outline (shared): at least "
            f"{shared_threshold:.0%} of the node's weights kept by any mask are kept by two or more. "
            f"Edges: each mask's {max_edges} strongest residual-stream edges in its colour."
        )

    @classmethod
    def from_masks(
        cls, masks: Mapping[str, BinaryMask], max_edges: int = 25, shared_threshold: float = 0.5
    ) -> OverlapView:
        """The overlap view of binary masks of one model (subtask name -> mask).

        Example:
            >>> view = OverlapView.from_masks({"add": add.binary(), "mul": mul.binary()})  # doctest: +SKIP
            >>> view.save_html("overlap.html")  # doctest: +SKIP
        """
        union = reduce(operator.or_, masks.values())
        return cls(
            {name: circuit_graph(mask) for name, mask in masks.items()},
            circuit_graph(shared_mask(masks)),
            circuit_graph(union),
            pairwise_overlap(masks, by="layer_role"),
            max_edges,
            shared_threshold,
        )

    def shared_fraction(self) -> pd.Series:
        """Node -> weights kept by at least two masks / weights kept by any (NaN where none is kept)."""
        shared = self.shared.nodes.set_index("node")["kept"]
        union = self.union.nodes.set_index("node")["kept"]
        return shared / union.where(union > 0)

    def svg(self) -> str:
        nodes = self.union.nodes
        positions = node_positions(nodes)
        shared_fraction = self.shared_fraction()
        parts = [_stage_labels(nodes, positions)]
        strongest = {name: _keep_strongest(graph.edges, self.max_edges) for name, graph in self.graphs.items()}
        scale = max((float(edges["weight"].max()) for edges in strongest.values() if len(edges)), default=1.0)
        for index, (name, edges) in enumerate(strongest.items()):
            offset = (index - (len(strongest) - 1) / 2) * 3
            parts.append(_edge_markup(edges, positions, subtask_color(index), scale, f"{name}: ", offset))
        kept = {name: graph.nodes.set_index("node")["kept_fraction"] for name, graph in self.graphs.items()}
        for node in nodes.itertuples():
            x, y = positions[node.node]
            fraction_shared = shared_fraction[node.node]
            is_shared = not pd.isna(fraction_shared) and fraction_shared >= self.shared_threshold
            inner = _node_shape(node, x, y, "#ffffff", pd.isna(node.kept_fraction))
            bar_width = (NODE_SIZE - 10) / len(kept)
            lines = [str(node.node)]
            for index, (name, fractions) in enumerate(kept.items()):
                fraction = fractions[node.node]
                height = 0.0 if pd.isna(fraction) else (NODE_SIZE - 12) * float(fraction)
                inner += (
                    f'<rect class="mm-overlap-bar" x="{x - NODE_SIZE / 2 + 5 + index * bar_width:.1f}" '
                    f'y="{y + NODE_SIZE / 2 - 6 - height:.1f}" width="{bar_width - 1:.1f}" '
                    f'height="{height:.1f}" fill="{subtask_color(index)}"/>'
                )
                lines.append(f"{name}: kept {'not masked' if pd.isna(fraction) else f'{fraction:.1%}'}")
            if not pd.isna(fraction_shared):
                lines.append(
                    f"kept by 2+ masks: {fraction_shared:.1%} of the weights kept by any"
                    + (" (shared)" if is_shared else "")
                )
            if is_shared:
                half = NODE_SIZE / 2 + 3
                inner = (
                    f'<rect class="mm-shared-mark" x="{x - half:.1f}" y="{y - half:.1f}" width="{2 * half}" '
                    f'height="{2 * half}" rx="{half if node.kind == "head" else 7}" fill="none" '
                    f'stroke="{SHARED_COLOR}" stroke-width="3"/>' + inner
                )
            parts.append(_node_group(node, x, y, inner, "\n".join(lines), " mm-shared" if is_shared else ""))
        width, height = _graph_size(positions)
        legend = "".join(
            f'<rect x="{MARGIN + 150 * index}" y="{height - 4}" width="10" height="10" fill="{subtask_color(index)}"/>'
            + text(MARGIN + 150 * index + 15, height + 5, name, anchor="start")
            for index, name in enumerate(self.graphs)
        )
        return svg_document(width, height + 16, "".join(parts) + legend, GRAPH_CSS)

    def iou_table(self) -> TableView:
        """IoU per layer and role (rows) for every pair of masks (columns)."""
        frame = self.overlap.assign(
            pair=self.overlap["mask_a"] + " ∩ " + self.overlap["mask_b"],
            component=[
                component_label(layer, role) for layer, role in zip(self.overlap["layer"], self.overlap["role"])
            ],
        )
        table = frame.pivot_table(index="component", columns="pair", values="iou", sort=False, dropna=False)
        table = table.reset_index()
        table.columns.name = None
        return TableView(
            table, "IoU by layer and role", shade=[column for column in table.columns if column != "component"]
        )

    def body(self) -> str:
        return _interactive(self.svg(), self.title, self.caption, None, "", self.iou_table().body())
