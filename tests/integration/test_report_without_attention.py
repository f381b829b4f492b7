"""The report on models whose blocks do not all have attention: a pure state-space model (Mamba), a hybrid whose
attention layer TransformerLens hooks (Jamba), and a hybrid whose attention TransformerLens runs inside whole layers
(Zamba2). Each renders; the attention views show the layers that have a pattern and name the others, with why."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import boot_jamba, tiny_zamba2
from test_viz_views import random_mask_set
from transformers import (
    MambaConfig,
    MambaForCausalLM,
)

from modmask_lens import adapter_for
from modmask_lens.testing.tiny_models import boot_tiny
from modmask_lens.viz import attention_patterns, write_report
from modmask_lens.viz.attention_patterns import FULL

pytestmark = pytest.mark.integration

PROMPT = torch.tensor([5, 6, 7, 8])


def boot_mamba(directory):
    config = MambaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=40, state_size=16)
    return boot_tiny(MambaForCausalLM(config), directory)


def headings(html: str, level: int) -> list[str]:
    return re.findall(rf"<h{level}>([^<]+)</h{level}>", html)


def section_caption(html: str, title: str) -> str:
    return re.search(rf'<h2>{title}</h2><p class="mm-caption">([^<]*)</p>', html)[1]


def test_state_space_model_replaces_the_attention_section_by_one_line(tmp_path):
    bridge = boot_mamba(tmp_path / "mamba")
    html = write_report(tmp_path / "report.html", bridge, {"m": random_mask_set(bridge, "m", 0)}, PROMPT).read_text()
    note = "No attention pattern in layers 0, 1 (no attention there)."
    assert section_caption(html, "Attention through masks") == note
    assert headings(html, 3) == [
        "Masks",
        "Circuit of m",
        "Kept fraction per layer and role",
        "Mask logits",
        "Model, masks and settings",
    ]
    assert "mm-attention-view" not in html and "CircuitsVis.render(" not in html
    assert "click a head for its attention pattern" not in html  # the circuit view offers no pattern to click


def test_hybrid_shows_its_attention_layer_and_names_the_mamba_layer(tmp_path):
    bridge = boot_jamba(tmp_path / "jamba")
    mask = random_mask_set(bridge, "m", 0)
    patterns = attention_patterns(bridge, PROMPT, {"m": mask.binary()})
    _, cache = bridge.run_with_cache(PROMPT[None])
    assert patterns.layers == (0,) and patterns.without_pattern == {1: "no attention there"}
    torch.testing.assert_close(patterns.patterns[FULL][0], cache["blocks.0.attn.hook_pattern"][0])
    torch.testing.assert_close(patterns.head(FULL, 0, 3), cache["blocks.0.attn.hook_pattern"][0, 3])
    with pytest.raises(KeyError, match="layer 1 has no attention pattern: no attention there"):
        patterns.head("m", 1, 0)

    html = write_report(tmp_path / "report.html", bridge, {"m": mask}, PROMPT).read_text()
    assert headings(html, 3) == [
        "Masks",
        "Circuit of m",
        "Attention through m",
        "Kept fraction per layer and role",
        "Mask logits",
        "Model, masks and settings",
    ]
    assert '<p class="mm-caption mm-no-pattern">No attention pattern in layer 1 (no attention there).</p>' in html
    # One circuitsvis panel per condition, each with layer 0's four heads only.
    assert html.count('"attentionHeadNames":["L0H0","L0H1","L0H2","L0H3"]') == 3
    assert '"layers":[0],"without_pattern":{"1":"no attention there"}' in html  # the circuit view's click panel


def test_zamba2_names_its_hybrid_layers_as_attention_without_a_pattern_hook(tmp_path):
    """Zamba2's shared block is keyed at layer 1 and runs at layers 1 and 2; TransformerLens runs both layers whole,
    with no hook_pattern. Its shared block reads the residual stream concatenated with the embeddings, which the
    circuit graph cannot draw: the report says so and renders the rest, the overlap as its IoU table."""
    bridge = tiny_zamba2(tmp_path / "zamba2")
    assert adapter_for(bridge).head_layers(bridge) == {1, 2}
    masks = {name: random_mask_set(bridge, name, seed) for seed, name in enumerate(["first", "second"])}
    html = write_report(tmp_path / "report.html", bridge, masks, PROMPT).read_text()
    assert section_caption(html, "Attention through masks") == (
        "No attention pattern in layer 0 (no attention there) or layers 1, 2 (attention, but no "
        "blocks.{l}.attn.hook_pattern in the bridge)."
    )
    assert section_caption(html, "Circuits").startswith(
        "No circuit graph: the graph cannot draw blocks.1.attn.q.weight (W_Q (64, 64)) as a node of the residual "
        "stream: its residual axis has 64 entries, not d_model=32."
    )
    assert headings(html, 3) == [
        "Masks",
        "IoU per layer and role",
        "Kept fraction per layer and role",
        "IoU of masks per layer and role",
        "Mask logits",
        "Model, masks and settings",
    ]
