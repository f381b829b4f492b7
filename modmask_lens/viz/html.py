"""Views: HTML that renders in a notebook (``_repr_html_``) and as a standalone offline page (``save_html``).

A view is a body fragment plus the JavaScript libraries it needs, inlined once per page (never fetched). Every page
carries its styles inline too, so a saved file opens on a machine with no network.
"""

from __future__ import annotations

import html
import itertools
import json
import os
from pathlib import Path

import pandas as pd

from modmask_lens.core.atomic_files import write_text_atomically
from modmask_lens.viz.colors import sequential

_view_ids = itertools.count()

PAGE_CSS = """
.mm-view { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 13px;
  color: #1d232a; margin: 8px 0 20px 0; }
.mm-view h3 { font-size: 15px; margin: 4px 0 6px 0; }
.mm-view .mm-caption { color: #55606b; max-width: 1100px; margin: 2px 0 8px 0; }
.mm-table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
.mm-table th, .mm-table td { border: 1px solid #d8dde3; padding: 3px 8px; text-align: right; }
.mm-table th { background: #f1f4f7; font-weight: 600; }
.mm-table td.mm-text { text-align: left; }
.mm-row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.mm-tooltip { position: fixed; pointer-events: none; background: #1d232a; color: #fff; padding: 6px 8px;
  border-radius: 4px; font-size: 12px; line-height: 1.35; white-space: pre; z-index: 10; display: none; }
.mm-node { cursor: pointer; }
.mm-node.mm-selected .mm-outline { stroke: #d1495b; stroke-width: 3; }
"""


def escape(text: object) -> str:
    """HTML-escape any value's string form."""
    return html.escape(str(text), quote=True)


def script_json(value: object) -> str:
    """JSON for embedding inside a ``<script>`` element: every ``<`` is written ``\\u003c`` (the same string to
    JavaScript), so that neither ``</script>`` nor ``<!--`` followed by ``<script>`` in a name or token changes
    where the element ends."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def new_view_id(prefix: str) -> str:
    """A DOM id unique within this Python process (views of one page or notebook never clash)."""
    return f"mm-{prefix}-{os.getpid()}-{next(_view_ids)}"


class View:
    """Base of every view. Subclasses set :attr:`title` and implement :meth:`body`; views that need a bundled
    JavaScript library return it from :meth:`libraries`.

    Example:
        >>> view.save_html("circuit.html")                                          # doctest: +SKIP
        >>> view                                  # in a notebook: renders inline    # doctest: +SKIP
    """

    title: str = "modmask-lens view"

    def body(self) -> str:
        """The view's HTML fragment, including its own small ``<script>`` elements."""
        raise NotImplementedError

    def libraries(self) -> dict[str, str]:
        """Library name -> JavaScript source to inline once per page (none by default)."""
        return {}

    def _repr_html_(self) -> str:
        return f"<style>{PAGE_CSS}</style>{library_scripts([self])}{self.body()}"

    def save_html(self, path: str | Path) -> Path:
        """Write the view as a standalone offline HTML page; returns the path."""
        return write_page(path, self.title, [self])


def library_scripts(views: list[View]) -> str:
    """``<script>`` elements for the libraries the views need, each library once."""
    libraries: dict[str, str] = {}
    for view in views:
        libraries |= view.libraries()
    return "".join(f'<script data-library="{escape(name)}">{source}</script>' for name, source in libraries.items())


def page_html(title: str, views: list[View], header: str = "") -> str:
    """A complete self-contained HTML document: inline styles, each library once, then the views in order."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>body {{ margin: 24px; }} {PAGE_CSS}</style></head><body>{header}"
        f"{library_scripts(views)}{''.join(view.body() for view in views)}</body></html>\n"
    )


def write_page(path: str | Path, title: str, views: list[View], header: str = "") -> Path:
    """Write :func:`page_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, page_html(title, views, header))


class TableView(View):
    """A DataFrame as an HTML table; numeric columns named in ``shade`` get a white-to-blue background by value in
    [0, 1] (kept fractions, accuracies, IoU).

    Example:
        >>> TableView(paper_table(accuracy), "Accuracy", shade=["full", "mask", "inverse"])   # doctest: +SKIP
    """

    def __init__(
        self, frame: pd.DataFrame, title: str, caption: str = "", shade: list[str] | None = None, digits: int = 3
    ):
        self.frame, self.title, self.caption, self.shade, self.digits = frame, title, caption, shade or [], digits

    def body(self) -> str:
        header = "".join(f"<th>{escape(column)}</th>" for column in self.frame.columns)
        rows = []
        for _, row in self.frame.iterrows():
            cells = []
            for column, value in row.items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                text = "" if pd.isna(value) else (f"{value:.{self.digits}f}" if isinstance(value, float) else value)
                style = (
                    f' style="background:{sequential(float(value))}"'
                    if column in self.shade and numeric and not pd.isna(value)
                    else ""
                )
                cells.append(f"<td{style}{'' if numeric else ' class=mm-text'}>{escape(text)}</td>")
            rows.append(f"<tr>{''.join(cells)}</tr>")
        caption = f'<p class="mm-caption">{escape(self.caption)}</p>' if self.caption else ""
        return (
            f'<div class="mm-view mm-table-view"><h3>{escape(self.title)}</h3>{caption}'
            f'<table class="mm-table"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        )


class Section(View):
    """A section heading with an optional sentence, between the views of a page."""

    def __init__(self, title: str, intro: str = ""):
        self.title, self.intro = title, intro

    def body(self) -> str:
        intro = f'<p class="mm-caption">{escape(self.intro)}</p>' if self.intro else ""
        return f'<section class="mm-view mm-section"><h2>{escape(self.title)}</h2>{intro}</section>'
