"""The circuit graph draws a model's heads only in the blocks that run attention and its MLP nodes only in the blocks
that run an MLP, as the mask recorded when it was made (``MaskOrigin.components``): a state-space model (Mamba) has
neither, hybrids (Jamba, NemotronH) have them in some blocks only, and GPT-2 draws as it always did. The blocks
expected are written out from the models' configs, never read from an adapter."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import boot_gpt2, boot_jamba, tiny_nemotron_h, tiny_zamba2
from test_report_without_attention import PROMPT, boot_mamba
from test_viz_views import random_mask_set

from modmask_lens import load_masks, save_masks
from modmask_lens.adapters.components import BlockComponents
from modmask_lens.analysis import circuit_graph
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.viz import CircuitView, write_report
from modmask_lens.viz.graph_view import STAGE_WIDTH, node_positions

pytestmark = pytest.mark.integration


def edges(graph) -> dict[tuple[str, str], float]:
    return {(row.source, row.target): row.weight for row in graph.edges.itertuples()}


def without_record(mask: BinaryMask) -> BinaryMask:
    """The same mask with an origin that records no components (built by hand): the graph's old drawing."""
    origin = mask.origin
    return BinaryMask(mask.specs, mask.kept, MaskOrigin(origin.adapter, origin.mode, origin.model, origin.norms))


def test_state_space_model_draws_only_embed_to_unembed_and_says_why(tmp_path):
    bridge = boot_mamba(tmp_path / "mamba")
    mask = random_mask_set(bridge, "m", 0).binary()
    assert mask.origin.components == BlockComponents(frozenset(), frozenset())
    graph = circuit_graph(mask)
    assert list(graph.nodes.node) == ["embed", "unembed"]
    # The one edge by hand: kept fraction per residual dimension of W_U's rows, through ln_final's kept gains (the
    # default mask leaves the embedding unmasked: all its paths count as kept).
    kept = {spec.role: mask.kept[spec.key] for spec in mask.specs}
    assert "W_E" not in kept and kept["W_U"].shape == (40, 32)
    expected = float((kept["ln_final.w"].float() * kept["W_U"].float().mean(dim=0)).mean())
    assert 0 < expected < 1
    assert edges(graph) == {("embed", "unembed"): pytest.approx(expected, abs=1e-6)}

    assert "Layers 0, 1 run neither attention heads nor an MLP" in CircuitView(graph).caption
    positions = node_positions(graph.nodes)  # the empty blocks take no column
    assert positions["unembed"][0] - positions["embed"][0] == STAGE_WIDTH
    html = write_report(tmp_path / "report.html", bridge, {"m": mask}, PROMPT).read_text()
    assert "<h3>Circuit of m</h3>" in html and 'data-node="L0H0"' not in html and 'data-node="L0MLP"' not in html
    assert "Layers 0, 1 run neither attention heads nor an MLP (recurrent, state-space or convolution blocks)" in html


def test_hybrid_draws_heads_only_in_its_attention_layer(tmp_path):
    """Jamba's layer 0 runs attention (4 heads) and a dense MLP, layer 1 a Mamba mixer and experts."""
    bridge = boot_jamba(tmp_path / "jamba")
    mask = random_mask_set(bridge, "m", 1).binary()
    assert mask.origin.components == BlockComponents(frozenset({0}), frozenset({0, 1}))
    graph = circuit_graph(mask)
    assert list(graph.nodes.node) == ["embed", "L0H0", "L0H1", "L0H2", "L0H3", "L0MLP", "L1MLP", "unembed"]
    # Removing the phantom heads leaves every other edge as it was; none runs through a head of layer 1 any more.
    old = edges(circuit_graph(without_record(mask)))
    assert {("L0H0", "L1H0"), ("L1H3", "unembed")} <= old.keys()
    drawn = set(graph.nodes.node)
    assert edges(graph) == {pair: weight for pair, weight in old.items() if set(pair) <= drawn}

    html = write_report(tmp_path / "report.html", bridge, {"m": mask}, PROMPT).read_text()
    assert re.findall(r'data-node="(L\dH\d)"', html) == ["L0H0", "L0H1", "L0H2", "L0H3"]


def test_attention_only_and_state_space_blocks_of_nemotron_h_have_no_mlp_node(tmp_path):
    """NemotronH's layers: Mamba-2, mixture of experts, attention, MLP."""
    bridge = tiny_nemotron_h(tmp_path / "nemotron_h")
    mask = random_mask_set(bridge, "m", 2).binary()
    graph = circuit_graph(mask)
    assert list(graph.nodes.node) == ["embed", "L1MLP", "L2H0", "L2H1", "L2H2", "L2H3", "L3MLP", "unembed"]
    assert "Layer 0 runs neither attention heads nor an MLP" in CircuitView(graph).caption
    old = edges(circuit_graph(without_record(mask)))
    drawn = set(graph.nodes.node)
    assert edges(graph) == {pair: weight for pair, weight in old.items() if set(pair) <= drawn}


def test_gpt2_draws_the_same_nodes_and_edges_as_without_the_record(tmp_path):
    bridge = boot_gpt2(tmp_path / "gpt2")
    mask = random_mask_set(bridge, "m", 3).binary()
    assert mask.origin.components == BlockComponents(frozenset({0, 1}), frozenset({0, 1}))
    graph, old = circuit_graph(mask), circuit_graph(without_record(mask))
    per_layer = [f"L{layer}{part}" for layer in range(2) for part in ("H0", "H1", "H2", "H3", "MLP")]
    assert list(graph.nodes.node) == ["embed", *per_layer, "unembed"]
    assert graph.nodes.equals(old.nodes) and graph.edges.equals(old.edges) and graph.node_roles.equals(old.node_roles)


def test_a_saved_mask_comes_back_with_its_blocks_components(tmp_path):
    bridge = boot_jamba(tmp_path / "jamba")
    mask_set = random_mask_set(bridge, "m", 4)
    loaded = load_masks(save_masks(mask_set, tmp_path / "m.safetensors"), bridge)
    assert loaded.origin.components == mask_set.origin.components == BlockComponents(frozenset({0}), frozenset({0, 1}))
    assert circuit_graph(loaded.binary()).edges.equals(circuit_graph(mask_set.binary()).edges)
    assert all(torch.equal(loaded.logits[name], logit) for name, logit in mask_set.logits.items())


def test_a_shared_block_counts_at_every_depth_it_runs(tmp_path):
    """Zamba2's shared transformer block (attention and MLP), keyed at layer 1, runs at layers 1 and 2; layer 0 is a
    Mamba block."""
    bridge = tiny_zamba2(tmp_path / "zamba2")
    mask = random_mask_set(bridge, "m", 5).binary()
    assert mask.origin.components == BlockComponents(frozenset({1, 2}), frozenset({1, 2}))


def test_an_encoder_decoder_is_undrawable_with_the_reason(tmp_path):
    """The graph draws one residual stream in one stage order; an encoder-decoder (T5Gemma) has two, and its decoder
    reads the encoder's only through cross-attention. It was drawn anyway: each decoder head node pooled a
    self-attention head with the cross-attention head of the same number, the cross-attention's keys and values read
    edges from the decoder's writers, and the decoder MLP read through ln2 (the cross-attention's norm, not ln3)."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    from modmask_lens import MaskSet
    from modmask_lens.analysis.circuit_graph import undrawable_reason
    from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

    stack = T5GemmaModuleConfig(num_key_value_heads=2, head_dim=8, **TINY_HF_SIZES)
    config = T5GemmaConfig(encoder=stack, decoder=stack, vocab_size=TINY_HF_SIZES["vocab_size"])
    mask = MaskSet.for_bridge(boot_tiny(T5GemmaForConditionalGeneration(config), tmp_path)).binary()
    reason = undrawable_reason(mask)
    assert reason is not None and "cross-attention" in reason and "decoder_blocks.0.cross_attn" in reason
    with pytest.raises(ValueError, match="cross-attention"):
        circuit_graph(mask)
