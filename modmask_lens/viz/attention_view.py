"""Attention through masks: circuitsvis attention heads of the full model next to a mask and its inverse, with
circuitsvis's bundled JavaScript inlined (its own renderer pings a web host on every render and otherwise points at a
CDN; we use neither)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from modmask_lens.viz.attention_patterns import FULL, AttentionPatterns, inverse_label
from modmask_lens.viz.html import View, escape, new_view_id, script_json


@cache
def circuitsvis_bundle() -> str:
    """circuitsvis's browser bundle (``dist/cdn/iife.js`` of the installed package), safe to inline in ``<script>``.

    It defines the global ``CircuitsVis`` with ``render(element_id, component, props)``.
    """
    source = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js").read_text(encoding="utf-8")
    # "</script" inside the bundle would end the element; "<\/script" is the same string to JavaScript. The source map
    # comment is dropped so that no developer tool tries to fetch a file the page does not ship.
    source = source.replace("</script", "<\\/script").replace("//# sourceMappingURL=iife.js.map", "")
    return source


class AttentionView(View):
    """Side-by-side circuitsvis ``AttentionHeads`` of every head, one panel per condition, with one line naming the
    layers that have no pattern and why (:meth:`~modmask_lens.viz.attention_patterns.AttentionPatterns.missing_note`;
    that line alone when no layer has one).

    Args:
        patterns: precomputed patterns (:func:`~modmask_lens.viz.attention_patterns`).
        conditions: which conditions to show, in order; default: all.
        title: heading.

    Example:
        >>> view = AttentionView(patterns, ["full model", "copy_first", "~copy_first"])  # doctest: +SKIP
        >>> view.save_html("attention.html")  # doctest: +SKIP
    """

    def __init__(
        self, patterns: AttentionPatterns, conditions: list[str] | None = None, title: str = "Attention through masks"
    ):
        self.patterns, self.title = patterns, title
        self.conditions = conditions if conditions is not None else list(patterns.patterns)
        unknown = [condition for condition in self.conditions if condition not in patterns.patterns]
        if unknown:
            raise ValueError(f"no patterns for {unknown}; computed: {list(patterns.patterns)}")

    def libraries(self) -> dict[str, str]:
        return {"circuitsvis": circuitsvis_bundle()}

    def body(self) -> str:
        layers = self.patterns.layers
        panels, calls = [], []
        for condition in self.conditions if layers else ():
            pattern = self.patterns.patterns[condition]
            element_id = new_view_id("attention")
            props = {
                "attention": pattern.flatten(0, 1).round(decimals=4).tolist(),
                "tokens": self.patterns.tokens,
                "attentionHeadNames": [f"L{layer}H{head}" for layer in layers for head in range(pattern.shape[1])],
                "maxValue": 1.0,
                "minValue": 0.0,
                "maskUpperTri": self.patterns.causal,  # a bidirectional model attends ahead too
            }
            panels.append(
                f'<div class="mm-attention-panel" data-condition="{escape(condition)}" '
                f'style="flex: 1 1 340px; min-width: 340px"><h4>{escape(_describe(condition))}</h4>'
                f'<div id="{element_id}" class="mm-attention"></div></div>'
            )
            calls.append(
                f"CircuitsVis.render({script_json(element_id)}, CircuitsVis.AttentionHeads, {script_json(props)});"
            )
        tokens = " ".join(self.patterns.tokens)
        note = self.patterns.missing_note()
        shown = f"Every head of {'the layers with a pattern' if note else 'every layer'}; pick a head to enlarge it."
        return (
            f'<div class="mm-view mm-attention-view"><h3>{escape(self.title)}</h3>'
            f'<p class="mm-caption">Prompt: <code>{escape(tokens)}</code>.{" " + escape(shown) if layers else ""}</p>'
            + (f'<p class="mm-caption mm-no-pattern">{escape(note)}</p>' if note else "")
            + f'<div class="mm-row">{"".join(panels)}</div><script>{"".join(calls)}</script></div>'
        )


def _describe(condition: str) -> str:
    if condition == FULL:
        return "full model"
    if condition.startswith(inverse_label("")):
        return f"inverse mask {condition} (weights the mask removes)"
    return f"mask {condition} (weights it keeps)"
