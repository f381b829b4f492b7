"""Families whose adapter needs more than TransformerLens's map (docs/architectures.md): each passes the conformance
kit's checks at the granularities its adapter adds, on a tiny random model, and its units are what the docstring of
its adapter says they are."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_nemotron_h
from transformers import (
    BitNetConfig,
    BitNetForCausalLM,
    DeepseekV4Config,
    DeepseekV4ForCausalLM,
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    JetMoeConfig,
    JetMoeForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import GranularityNotApplicable, adapter_for
from modmask_lens.analysis.circuit_graph import circuit_graph
from modmask_lens.masks.apply import masked
from modmask_lens.masks.identity import ModelMismatch
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import check_gradients
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
    units = MaskSet.for_bridge(bitnet, MaskConfig(granularity="neuron", neuron_mask="in-out")).units
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
    units = MaskSet.for_bridge(rwkv, MaskConfig(granularity="neuron", neuron_mask="in-out")).units
    assert [(unit.shape, sorted(member.role for member in unit.members)) for unit in units] == [
        ((64,), ["W_in", "W_out"])
    ] * 2


def test_rwkv_refuses_head_masks_with_one_line_saying_it_has_no_attention(rwkv):
    with pytest.raises(GranularityNotApplicable, match="time_mix.*no attention component"):
        MaskSet.for_bridge(rwkv, MaskConfig(granularity="head"))


@pytest.fixture(scope="module")
def jetmoe(tmp_path_factory):
    torch.manual_seed(0)
    config = JetMoeConfig(
        num_key_value_heads=2, kv_channels=8, num_local_experts=4, num_experts_per_tok=2, **TINY_HF_SIZES
    )
    return boot_tiny(JetMoeForCausalLM(config), tmp_path_factory.mktemp("jetmoe"))


def test_jetmoe_masks_every_parameter_and_passes_the_checks_that_apply(jetmoe):
    checks = ["all_ones_bit_identical", "every_target_matters", "neuron_off_equals_zeroed_hook_post"]
    results = run_conformance(jetmoe, checks=[*checks, "head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views"])
    assert [str(result) for result in results if result.applies and not result.passed] == []
    assert [result.name for result in results if not result.applies] == ["unit_slices_equal_tl_views"]
    targets = {id(jetmoe.get_parameter(spec.path)) for spec in adapter_for(jetmoe).tensor_specs(jetmoe)}
    assert [name for name, parameter in jetmoe.original_model.named_parameters() if id(parameter) not in targets] == []


def test_the_circuit_graph_refuses_heads_of_attention_experts_in_one_line(jetmoe):
    mask = MaskSet.for_bridge(jetmoe, MaskConfig(granularity="head")).binary()
    with pytest.raises(ValueError, match=r"cannot draw blocks\.0\.attn\.experts\.output_linear\.weight .* 8 heads"):
        circuit_graph(mask)


def test_a_jetmoe_head_off_equals_zeroing_its_slice_of_its_experts_attention_output(jetmoe):
    """Head e * n_kv_heads + j off equals zeroing, for the tokens routed to attention expert e, features
    j * d_head .. (j + 1) * d_head of what the expert's output projection reads (a pre-hook on that projection,
    which transformers calls with its inputs sorted by expert and the size of each expert's share)."""
    tokens = _tokens(jetmoe)
    mask = MaskSet.for_bridge(jetmoe, MaskConfig(granularity="head"))
    assert [unit.shape for unit in mask.units] == [(8,), (8,)]  # 4 experts x 2 heads
    expert, head, d_head = 2, 1, 8
    projection = jetmoe.original_model.model.layers[1].self_attention.experts.output_linear

    def zero_head(module, args):
        inputs, expert_size = args
        start = sum(expert_size[:expert])
        inputs = inputs.clone()
        inputs[start : start + expert_size[expert], head * d_head : (head + 1) * d_head] = 0.0
        return inputs, expert_size

    handle = projection.register_forward_pre_hook(zero_head)
    try:
        expected = jetmoe(tokens)
    finally:
        handle.remove()
    for logits in mask.logits.values():
        logits.data.fill_(1.0)
    mask.logits["blocks.1.attn"].data[expert * 2 + head] = -1.0
    with masked(jetmoe, mask):
        actual = jetmoe(tokens)
    assert (actual - jetmoe(tokens)).abs().max() > 1e-4  # the head was routed to and mattered
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def tiny_deepseek_v4(folder, o_groups: int, o_lora_rank: int = 4):
    torch.manual_seed(0)
    config = DeepseekV4Config(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=8,
        q_lora_rank=16,
        o_lora_rank=o_lora_rank,
        o_groups=o_groups,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        index_n_heads=2,
        index_head_dim=8,
        qk_rope_head_dim=4,
        sliding_window=4,
        max_position_embeddings=32,
    )
    return boot_tiny(DeepseekV4ForCausalLM(config), folder)


@pytest.mark.parametrize(("o_groups", "o_lora_rank"), [(2, 4), (8, 4), (8, 16), (8, 2)])
def test_deepseek_v4_head_off_equals_zeroing_its_slice_of_the_grouped_output_projection(
    o_groups, o_lora_rank, tmp_path
):
    """2 groups of 2 heads (as V4-Flash's 8 groups of 8: a head is its group's rows and its columns) and 8 groups
    for 4 heads (a head is the rows of its two groups); with rank 16 a head's rows of the output projection (32)
    outnumber its entries of the projection's input (8), with rank 2 they are fewer (4), which the check must not
    confuse."""
    bridge = tiny_deepseek_v4(tmp_path, o_groups, o_lora_rank)
    checks = ["head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views", "all_ones_bit_identical"]
    assert not _failures(bridge, checks)
    (writer,) = [
        spec for spec in adapter_for(bridge).tensor_specs(bridge) if spec.key == "blocks.0.attn.o_a_proj.weight"
    ]
    assert writer.role == "W_O" and writer.unit_count == 4
    assert (writer.unit_axis, writer.expert_width) == ((1, o_lora_rank) if o_groups == 2 else (0, 1))
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"))
    for logits in mask.logits.values():
        logits.data.fill_(1.0)
    mask.logits["blocks.0.attn"].data[3] = -1.0
    tokens = _tokens(bridge)
    unmasked = bridge(tokens)
    with masked(bridge, mask):
        assert (bridge(tokens) - unmasked).abs().max() > 1e-4  # the check above compared a real change
    assert check_gradients(bridge, tokens, "head") is None


def test_nemotron_h_reads_every_mixer_kind_and_passes_the_checks_that_apply(tmp_path):
    """One layer of each kind: Mamba-2, mixture of experts (its shared expert's neurons after the routed ones),
    attention, MLP. TransformerLens has no hook_z / hook_post in them: the kit zeroes a unit's slice of what
    ``o_proj`` / ``down_proj`` reads instead."""
    torch.manual_seed(0)
    bridge = tiny_nemotron_h(tmp_path)
    checks = ["all_ones_bit_identical", "every_target_matters", "neuron_off_equals_zeroed_hook_post"]
    results = run_conformance(bridge, checks=[*checks, "head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views"])
    assert [str(result) for result in results if result.applies and not result.passed] == []
    assert [result.name for result in results if not result.applies] == ["unit_slices_equal_tl_views"]
    targets = {id(bridge.get_parameter(spec.path)) for spec in adapter_for(bridge).tensor_specs(bridge)}
    assert [name for name, parameter in bridge.original_model.named_parameters() if id(parameter) not in targets] == []
    neurons = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron")).units
    heads = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", head_mask="qkvo")).units
    assert [(unit.name, unit.shape) for unit in neurons] == [("blocks.1.mlp", (4 * 16 + 16,)), ("blocks.3.mlp", (64,))]
    assert [(unit.name, unit.shape, len(unit.members)) for unit in heads] == [("blocks.2.attn", (4,), 4)]


@pytest.mark.parametrize("former", ["generic", "native", "llama"])
def test_a_bitnet_mask_file_of_an_adapter_bitnet_never_replaced_is_refused(bitnet, former):
    """The derived adapter accepts the names of the adapters it replaced; BitNet's adapter is new and reads another
    neuron (its sub-norm gain and W_out column, not the W_in/W_gate rows those masked), so a file they made must not
    load onto it as if it meant the same units."""
    mask = MaskSet.for_bridge(bitnet, MaskConfig(granularity="neuron"))
    made_by_former = dataclasses.replace(mask.origin, adapter=former)
    with pytest.raises(ModelMismatch, match=f"made with the '{former}' adapter; this model uses 'bitnet'"):
        made_by_former.check(bitnet, mask.members)


@pytest.mark.parametrize("n_experts", [4, 0])
def test_granite_moe_hybrid_masks_every_parameter_and_its_shared_mlp_neurons_follow_the_experts(tmp_path, n_experts):
    """A Mamba-2 layer then an attention layer, each with a mixture of experts beside the shared MLP (Granite 4.0-H
    Tiny) or the shared MLP alone (``num_local_experts=0``, Granite 4.0-H Micro). Every parameter is a target: the
    shared MLP's ``input_linear`` through its split views ``gate``/``in`` (which share its storage)."""
    torch.manual_seed(0)
    config = GraniteMoeHybridConfig(
        **{**TINY_HF_SIZES, "intermediate_size": 16},
        layer_types=["linear_attention", "full_attention"],
        num_key_value_heads=2,
        num_local_experts=n_experts,
        shared_intermediate_size=24,
        mamba_n_heads=8,
        mamba_d_state=16,
        mamba_chunk_size=16,
        position_embedding_type="nope",
    )
    bridge = boot_tiny(GraniteMoeHybridForCausalLM(config), tmp_path)
    checks = ["all_ones_bit_identical", "every_target_matters", "neuron_off_equals_zeroed_hook_post"]
    assert _failures(bridge, [*checks, "head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views"]) == []
    targets = {
        bridge.get_parameter(spec.path).untyped_storage().data_ptr()
        for spec in adapter_for(bridge).tensor_specs(bridge)
    }
    unread = [
        name
        for name, parameter in bridge.original_model.named_parameters()
        if parameter.untyped_storage().data_ptr() not in targets
    ]
    assert unread == []
    neurons = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron")).units
    assert [(unit.name, unit.shape) for unit in neurons] == [
        (f"blocks.{layer}.mlp", (n_experts * 16 + 24,)) for layer in (0, 1)
    ]
    for granularity in ("weight", "neuron", "head", "matrix"):
        assert check_gradients(bridge, _tokens(bridge), granularity) is None
