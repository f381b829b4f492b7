"""RecurrentGemma: one recurrent and one attention layer, which TransformerLens wraps whole; its adapter maps both."""

from __future__ import annotations

import pytest
import torch
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

from modmask_lens import MaskConfig, MaskSet, adapter_for
from modmask_lens.adapters import registry
from modmask_lens.adapters.recurrent_gemma import RecurrentGemmaAdapter
from modmask_lens.masks.apply import masked
from modmask_lens.testing import check_head_mask, run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    config = RecurrentGemmaConfig(
        block_types=["recurrent", "attention"], num_key_value_heads=2, lru_width=32, head_dim=8, **TINY_HF_SIZES
    )
    return boot_tiny(RecurrentGemmaForCausalLM(config), tmp_path_factory.mktemp("recurrent_gemma"))


def test_every_parameter_of_the_model_is_a_mask_target(bridge):
    adapter = adapter_for(bridge)
    assert adapter.name == "recurrent_gemma"
    targets = {id(bridge.get_parameter(spec.path)) for spec in adapter.tensor_specs(bridge)}
    assert targets == {id(parameter) for parameter in bridge.original_model.parameters()}


def test_heads_only_in_the_attention_layer_and_neurons_in_both(bridge):
    heads = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"))
    neurons = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron"))
    assert {name: tuple(logits.shape) for name, logits in heads.logits.items()} == {"blocks.1.attn": (4,)}
    assert {tuple(logits.shape) for logits in neurons.logits.values()} == {(32,)}  # intermediate_size // 2
    assert len(neurons.logits) == 2


def test_kit_passes_every_check(bridge):
    failures = [str(result) for result in run_conformance(bridge) if not result.passed]
    assert failures == []


def test_a_head_off_equals_zeroing_its_slice_of_o_proj_input(bridge):
    """Independently of the kit: head 2 off equals zeroing entries 16..23 of ``o_proj``'s input, which changes the
    logits (so the comparison is not vacuous); the kit's ``check_head_mask`` agrees."""
    tokens = torch.randint(0, bridge.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(1))
    o_proj = bridge.original_model.model.layers[1].temporal_block.o_proj
    handle = o_proj.register_forward_pre_hook(lambda module, args: (args[0].index_fill(-1, torch.arange(16, 24), 0),))
    try:
        expected = bridge(tokens)
    finally:
        handle.remove()
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"))
    mask.logits["blocks.1.attn"].data = torch.tensor([1.0, 1.0, -1.0, 1.0])
    with masked(bridge, mask):
        actual = bridge(tokens)
    assert not torch.allclose(expected, bridge(tokens))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert check_head_mask(bridge, mask, tokens) is None


class KeyHeadsTooWide(RecurrentGemmaAdapter):
    """Places the key/value heads as if there were as many as query heads (half as wide as they are)."""

    def _unit_layout(self, role, layout, dims, shape):
        unit, axis, width = super()._unit_layout(role, layout, dims, shape)
        return (unit, axis, width // 2) if role in ("W_K", "W_V") else (unit, axis, width)


def test_kit_reports_wrongly_placed_key_heads_without_transformer_lens_views(bridge, monkeypatch):
    """TransformerLens has no ``W_K`` for this family; the kit builds the view from the module's own map."""
    monkeypatch.setattr(registry, "_BUILT_IN", (KeyHeadsTooWide,))
    [result] = run_conformance(bridge, checks=["unit_slices_equal_tl_views"])
    assert str(result).startswith("FAIL RecurrentGemmaForCausalLM unit_slices_equal_tl_views: blocks.1.attn.k.weight")
