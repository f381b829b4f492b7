"""The report in a real browser: headless Chromium with no network opens it, nothing leaves the machine, no console
error, every view rendered, and a PNG screenshot is saved. Chromium is installed with apt when missing."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest
import torch
from conftest import boot_jamba
from test_report_without_attention import PROMPT
from test_viz_views import random_mask_set

from modmask_lens.analysis import circuit_graph
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.testing.copy_task import FIRST, SECOND, copy_subtask
from modmask_lens.viz import CircuitView, write_report
from modmask_lens.viz.browser import BrowserUnavailable, HeadlessChromium, chromium_path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session", autouse=True)
def chromium():
    """Chromium's path, installing the Debian packages first when it is missing (CI starts from a bare machine)."""
    try:
        return chromium_path()
    except BrowserUnavailable:
        apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
        if shutil.which("apt-get") is None:
            pytest.fail("Chromium is missing and there is no apt-get; install chromium and set MODMASK_LENS_CHROMIUM")
        subprocess.run([*apt, "update", "-qq"], check=True)
        subprocess.run(
            [*apt, "install", "-y", "-qq", "chromium", "chromium-driver"],
            check=True,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
        return chromium_path()


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", png[16:24])


def test_network_guard_records_a_page_that_reaches_out(tmp_path):
    page = tmp_path / "leaky.html"
    page.write_text(
        '<img src="http://example.com/pixel.png"><script>fetch("https://example.org/x").catch(() => {});</script>'
    )
    with HeadlessChromium() as browser:
        record = browser.open(page)
    assert set(record.network_requests) == {"http://example.com/pixel.png", "https://example.org/x"}
    assert record.requests[0] == page.resolve().as_uri()


@pytest.fixture
def report(gpt2_bridge, tmp_path):
    subtasks = [copy_subtask("copy_first", FIRST, 0), copy_subtask("copy_second", SECOND, 1)]
    masks = {data.name: random_mask_set(gpt2_bridge, data.name, seed) for seed, data in enumerate(subtasks)}
    return write_report(
        tmp_path / "report.html",
        gpt2_bridge,
        masks,
        torch.tensor([3, 7, FIRST, 3]),
        data={data.name: data for data in subtasks},
        token_labels=["3", "7", "FIRST", "3"],
    )


def test_report_renders_offline_with_every_view_and_no_console_error(report, tmp_path):
    with HeadlessChromium(width=1400) as browser:
        record = browser.open(report)
        assert record.network_requests == []
        assert record.console_errors == []
        counts = browser.evaluate("""({
            graphs: document.querySelectorAll('.mm-graph-view').length,
            nodes: document.querySelectorAll('.mm-graph-view .mm-node').length,
            edges: document.querySelectorAll('.mm-graph-view .mm-edge').length,
            attention: [...document.querySelectorAll('.mm-attention')].map(e => e.querySelectorAll('*').length),
            selectors: [...document.querySelectorAll('.mm-attention')].filter(
                e => e.innerText.includes('Head Selector')).length,
            patternCells: document.querySelectorAll('.mm-head-pattern .mm-pattern-cell').length,
            plots: document.querySelectorAll('.mm-bar, .mm-cell, .mm-histogram').length,
            tables: document.querySelectorAll('table.mm-table').length,
        })""")
        assert counts["graphs"] == 3  # two circuits and the overlap
        assert counts["nodes"] == 3 * 12 and counts["edges"] > 0
        assert len(counts["attention"]) == 6 and min(counts["attention"]) > 20  # circuitsvis drew each panel
        assert counts["selectors"] == 6
        # Each circuit shows its first head under full model, mask and inverse: 3 patterns of 4 x 4 tokens.
        assert counts["patternCells"] == 2 * 3 * 16
        assert counts["plots"] > 0 and counts["tables"] >= 4

        shown = browser.evaluate("""(() => {
            const view = document.querySelectorAll('.mm-graph-view')[1];
            view.querySelector('.mm-node[data-node="L1H2"]').dispatchEvent(new MouseEvent('click'));
            return [view.querySelector('.mm-head-pattern h4').textContent,
                    view.querySelector('.mm-node.mm-selected').dataset.node];
        })()""")
        assert shown == ["Attention of L1H2 on the prompt", "L1H2"]
        screenshot = browser.screenshot()
    path = tmp_path / "report.png"
    path.write_bytes(screenshot)
    width, height = png_size(path.read_bytes())
    assert width > 1200 and height > 2000


def test_graph_png_export_has_the_svgs_size(gpt2_bridge, tmp_path):
    view = CircuitView(circuit_graph(random_mask_set(gpt2_bridge, "m", 0).binary()))
    svg_width, svg_height = map(int, re.match(r'<svg[^>]* width="(\d+)" height="(\d+)"', view.svg()).groups())
    png = view.save_png(tmp_path / "circuit.png", scale=2.0).read_bytes()
    assert png_size(png) == (2 * svg_width, 2 * svg_height)


def test_clicking_a_head_of_a_layer_without_attention_says_why(tmp_path):
    """On a hybrid (Jamba: attention in layer 0, Mamba in layer 1) the circuit view opens on a head of layer 0. A
    mask that records which blocks run heads has none in layer 1; one whose origin was built by hand without that
    record draws heads in every layer, and a click on a head of layer 1 shows the reason instead of a pattern, with
    no console error."""
    bridge = boot_jamba(tmp_path / "jamba")
    mask = random_mask_set(bridge, "m", 0).binary()
    assert 'data-node="L1H0"' not in write_report(tmp_path / "r.html", bridge, {"m": mask}, PROMPT).read_text()
    bare = MaskOrigin(mask.origin.adapter, mask.origin.mode, mask.origin.model, mask.origin.norms)
    unrecorded = BinaryMask(mask.specs, mask.kept, bare, mask.name)
    report = write_report(tmp_path / "report.html", bridge, {"m": unrecorded}, PROMPT)
    with HeadlessChromium() as browser:
        record = browser.open(report)
        assert record.network_requests == [] and record.console_errors == []
        first = browser.evaluate("""[document.querySelector('.mm-node.mm-selected').dataset.layer,
            document.querySelectorAll('.mm-head-pattern .mm-pattern-cell').length]""")
        assert first == ["0", 3 * 16]  # full model, mask and inverse: 4 x 4 tokens each
        shown = browser.evaluate("""(() => {
            const view = document.querySelector('.mm-graph-view');
            view.querySelector('.mm-node[data-node="L1H0"]').dispatchEvent(new MouseEvent('click'));
            const panel = view.querySelector('.mm-head-pattern');
            return [panel.querySelector('p').textContent, panel.querySelectorAll('.mm-pattern-cell').length];
        })()""")
        assert shown == ["No attention pattern in layer 1: no attention there.", 0]


def test_a_bidirectional_heads_pattern_shows_its_attention_to_later_keys(tmp_path):
    """Clicking a head of a tiny BERT draws every cell of its pattern in the ramp's colour of the value the model
    computes (Hugging Face's own attention, not the bridge's); the cells above the diagonal were drawn blank grey
    as if masked, though query 0 puts most of its attention there."""
    from test_viz_views import boot_bert, hf_attentions

    from modmask_lens.viz import attention_patterns
    from modmask_lens.viz.colors import RAMP_HIGH, RAMP_LOW

    bridge = boot_bert(tmp_path / "bert")
    prompt = torch.tensor([2, 5, 6, 7, 3])
    mask = random_mask_set(bridge, "m", 0).binary()
    page = CircuitView(circuit_graph(mask), attention_patterns(bridge, prompt, {"m": mask})).save_html(
        tmp_path / "c.html"
    )
    expected = hf_attentions(tmp_path / "bert", prompt)[1, 2]  # L1H2 under the full model: [query, key]
    with HeadlessChromium() as browser:
        record = browser.open(page)
        assert record.network_requests == [] and record.console_errors == []
        fills = browser.evaluate("""(() => {
            const view = document.querySelector('.mm-graph-view');
            view.querySelector('.mm-node[data-node="L1H2"]').dispatchEvent(new MouseEvent('click'));
            const full = view.querySelector('.mm-pattern-block svg');
            return [...full.querySelectorAll('.mm-pattern-cell')].map(cell => cell.getAttribute('fill'));
        })()""")
    n = len(prompt)
    assert len(fills) == n * n
    for query in range(n):
        for key in range(n):
            value = float(expected[query, key])
            rgb = [low + (high - low) * value for low, high in zip(RAMP_LOW, RAMP_HIGH)]
            shown = [int(part) for part in re.findall(r"\d+", fills[query * n + key])]
            assert shown == pytest.approx(rgb, abs=1), (query, key, fills[query * n + key])


def test_a_mask_named_like_markup_leaves_every_view_of_the_page_in_place(gpt2_bridge, tmp_path):
    """A subtask name is embedded in the views' scripts (condition labels). ``<!--<script>`` in it put the HTML
    parser in a script state where the element's own ``</script>`` did not end it: the page stopped after the first
    circuit (headings Masks and Circuit of <!--<script> only, of 10)."""
    name = "<!--<script>"
    masks = {name: random_mask_set(gpt2_bridge, name, 0), "b": random_mask_set(gpt2_bridge, "b", 1)}
    report = write_report(tmp_path / "report.html", gpt2_bridge, masks, torch.tensor([3, 7, 10, 3]))
    with HeadlessChromium() as browser:
        record = browser.open(report)
        assert record.network_requests == [] and record.console_errors == []
        shown = browser.evaluate("""({
            headings: [...document.querySelectorAll('body > .mm-view > h3')].map(e => e.textContent),
            labels: [...document.querySelectorAll('.mm-graph-view')[0].querySelectorAll('.mm-pattern-block > div')]
                .map(e => e.textContent),
        })""")
    assert shown["headings"] == [
        "Masks",
        f"Circuit of {name}",
        "Circuit of b",
        f"Overlap of {name}, b",
        f"Attention through {name}",
        "Attention through b",
        "Kept fraction per layer and role",
        "IoU of masks per layer and role",
        "Mask logits",
        "Model, masks and settings",
    ]
    assert shown["labels"] == ["full model", name, f"~{name}"]
