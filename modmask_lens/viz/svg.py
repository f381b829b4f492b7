"""Views drawn as one SVG element: exported as a standalone ``.svg`` file, or as ``.png`` through headless Chromium.

The SVG carries its own styles and ``<title>`` tooltips, so an exported file keeps its hover numbers in any viewer;
the interactive parts (tooltips that follow the mouse, click-to-show panels) live outside it in the HTML view.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sized
from pathlib import Path

from modmask_lens.core.atomic_files import write_bytes_atomically, write_text_atomically
from modmask_lens.viz.html import View, escape, write_page

Pixels = float | int
"""A length or coordinate in SVG pixels."""

SVG_CSS = """
text { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 11px;
  fill: #1d232a; }
.mm-axis line, .mm-axis path { stroke: #8a949e; }
.mm-grid { stroke: #e3e7eb; }
.mm-label-small { font-size: 10px; fill: #55606b; }
"""


def check_something_to_plot(items: Sized, to_pass: str) -> None:
    """Raise ``ValueError`` naming ``to_pass`` (what the caller should have given) if ``items`` (a plot's rows,
    matrices or masks) is empty: a plot of nothing has no axes to scale, so it is refused when asked for."""
    if len(items) == 0:
        raise ValueError(f"nothing to plot; pass {to_pass}")


def svg_document(width: Pixels, height: Pixels, content: str, css: str = "") -> str:
    """A standalone ``<svg>`` element of the given size in pixels, with :data:`SVG_CSS` plus ``css`` inline."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}"><style>{SVG_CSS}{css}</style>'
        f'<rect width="100%" height="100%" fill="#ffffff"/>{content}</svg>'
    )


def text(
    x: Pixels, y: Pixels, content: object, anchor: str = "middle", css_class: str = "", rotate: Pixels | None = None
) -> str:
    """An SVG ``<text>`` at (x, y) px."""
    transform = f' transform="rotate({rotate:.0f} {x:.1f} {y:.1f})"' if rotate is not None else ""
    css = f' class="{css_class}"' if css_class else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{css}{transform}>{escape(content)}</text>'


def tooltip(content: str) -> str:
    """An SVG ``<title>`` child (the native hover text of its parent)."""
    return f"<title>{escape(content)}</title>"


class SvgView(View):
    """A view whose picture is one SVG element. Subclasses implement :meth:`svg`; :meth:`body` wraps it with the
    title and caption, and subclasses may add interactive parts around it."""

    caption: str = ""

    def svg(self) -> str:
        """The picture as a standalone SVG document."""
        raise NotImplementedError

    def body(self) -> str:
        caption = f'<p class="mm-caption">{escape(self.caption)}</p>' if self.caption else ""
        return f'<div class="mm-view"><h3>{escape(self.title)}</h3>{caption}{self.svg()}</div>'

    def save_svg(self, path: str | Path) -> Path:
        """Write :meth:`svg` to ``path``; returns the path."""
        return write_text_atomically(path, self.svg())

    def save_png(self, path: str | Path, scale: float = 2.0) -> Path:
        """Render :meth:`svg` in headless Chromium and write a PNG (``scale`` device pixels per SVG pixel).

        Raises:
            BrowserUnavailable: when no Chromium is installed (``apt-get install -y chromium``).
        """
        from modmask_lens.viz.browser import HeadlessChromium

        with tempfile.TemporaryDirectory(prefix="modmask-svg-") as folder:
            page = write_page(Path(folder) / "figure.html", self.title, [_Picture(self.svg())])
            with HeadlessChromium() as browser:
                browser.open(page, settle_ms=0)
                png = browser.screenshot("svg", scale=scale)
        return write_bytes_atomically(path, png)


class _Picture(View):
    """Just an SVG, for PNG export."""

    def __init__(self, svg: str):
        self._svg = svg

    def body(self) -> str:
        return self._svg
