"""Families whose adapter needs more than TransformerLens's map (docs/architectures.md): each passes the conformance
kit's checks at the granularities its adapter adds, on a tiny random model, and its units are what the docstring of
its adapter says they are."""

from __future__ import annotations

import pytest
import torch
from transformers import BitNetConfig, BitNetForCausalLM, RwkvConfig, RwkvForCausalLM

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import GranularityNotApplicable, adapter_for
from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

pytestmark = pytest.mark.integration


def _tokens(bridge) -> torch.Tensor:
    return torch.randint(0, bridge.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(0))


def _failures(bridge, checks: list[str]) -> list[str]:
    return [str(result) for result in run_conformance(bridge, checks=checks) if not result.passed]


@pytest.fixture(scope="module")
def bitnet(tmp_path_factory):
    torch.manual_seed(0)
    model = BitNetForCausalLM(BitNetConfig(num_key_value_heads=2, **TINY_HF_SIZES))
    return boot_tiny(model, tmp_path_factory.mktemp("bitnet"))


def test_bitnet_neuron_off_equals_zeroed_hook_post_and_sub_norm_gains_are_read(bitnet):
    checks = ["neuron_off_equals_zeroed_hook_post", "unit_slices_equal_tl_views", "every_target_matters"]
    assert not _failures(bitnet, [*checks, "head_off_equals_zeroed_hook_z", "hf_export_reloads"])
    keys = {spec.key for spec in adapter_for(bitnet).tensor_specs(bitnet)}
    assert {"blocks.1.attn.attn_sub_norm.weight", "blocks.1.mlp.ffn_sub_norm.weight"} <= keys


def test_a_bitnet_neuron_is_its_ffn_sub_norm_gain_and_w_out_column_not_the_rows_the_norm_reads(bitnet):
    units = MaskSet.for_bridge(bitnet, MaskConfig(granularity="neuron")).units
    assert [sorted(member.role for member in unit.members) for unit in units] == [["W_out", "mlp_sub_norm.w"]] * 2
    # Why the rows are not part of a neuron: zeroing neuron 3's W_in and W_gate rows rescales every other unit
    # through the norm, so it is not zeroing hook_post[..., 3].
    tokens = _tokens(bitnet)

    def zero_unit(activation, hook):
        activation[..., 3] = 0.0
        return activation

    expected = bitnet.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", zero_unit)])
    mlp = bitnet.blocks[0].mlp
    rows = {
        f"blocks.0.mlp.{part}._original_component.weight": getattr(mlp, part).weight.detach().clone()
        for part in ("in", "gate")
    }
    for weight in rows.values():
        weight[3] = 0.0
    rows_zeroed = torch.func.functional_call(bitnet, rows, (tokens,), tie_weights=False, strict=False)
    assert (rows_zeroed - expected).abs().max() > 1e-5


@pytest.fixture(scope="module")
def rwkv(tmp_path_factory):
    torch.manual_seed(0)
    config = RwkvConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, intermediate_size=64, context_length=32)
    return boot_tiny(RwkvForCausalLM(config), tmp_path_factory.mktemp("rwkv"))


def test_rwkv_masks_every_parameter_and_its_channel_mix_units_are_neurons(rwkv):
    checks = ["all_ones_bit_identical", "every_target_matters", "neuron_off_equals_zeroed_hook_post"]
    assert not _failures(rwkv, [*checks, "unit_slices_equal_tl_views", "hf_export_reloads"])
    targets = {id(rwkv.get_parameter(spec.path)) for spec in adapter_for(rwkv).tensor_specs(rwkv)}
    unmasked = [name for name, parameter in rwkv.original_model.named_parameters() if id(parameter) not in targets]
    assert not unmasked
    units = MaskSet.for_bridge(rwkv, MaskConfig(granularity="neuron")).units
    assert [(unit.shape, sorted(member.role for member in unit.members)) for unit in units] == [
        ((64,), ["W_in", "W_out"])
    ] * 2


def test_rwkv_refuses_head_masks_with_one_line_saying_it_has_no_attention(rwkv):
    with pytest.raises(GranularityNotApplicable, match="time_mix.*no attention component"):
        MaskSet.for_bridge(rwkv, MaskConfig(granularity="head"))
