"""Families whose tiny models failed in their own forward pass. Heads whose stored width is not ``cfg.d_head``:
latent attention (DeepSeek V2), whose output projection reads ``v_head_dim`` per head while ``cfg.d_head`` is the
rotary width, and a gated query projection (Qwen3-Next), which holds each head's query rows then its gate rows. A head
mask drops exactly that head's slice, checked against zeroing the same slice of the Hugging Face weight directly (no
TransformerLens hook involved). A config that transformers itself cannot run is reported as failing outside
TransformerLens, in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import LINEAR_ATTENTION_SIZES, assert_local_expectation_is_removal_cost
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM

from modmask_lens import MaskConfig, MaskSet, adapter_for
from modmask_lens.masks.apply import masked
from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

V_HEAD_DIM = 8
LATENT = DeepseekV2Config(
    **TINY_HF_SIZES,
    num_key_value_heads=4,
    kv_lora_rank=16,
    q_lora_rank=24,
    qk_nope_head_dim=8,
    qk_rope_head_dim=4,
    v_head_dim=V_HEAD_DIM,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    first_k_dense_replace=1,
)
GATED = Qwen3NextConfig(**LINEAR_ATTENTION_SIZES)
HEAD_CHECKS = ["head_off_equals_zeroed_hook_z", "unit_slices_equal_tl_views", "neuron_off_equals_zeroed_hook_post"]


@pytest.fixture(scope="module")
def latent_bridge(tmp_path_factory):
    torch.manual_seed(0)
    return boot_tiny(DeepseekV2ForCausalLM(LATENT), tmp_path_factory.mktemp("deepseek_v2"))


@pytest.fixture(scope="module")
def gated_bridge(tmp_path_factory):
    torch.manual_seed(0)
    return boot_tiny(Qwen3NextForCausalLM(GATED), tmp_path_factory.mktemp("qwen3_next"))


def test_latent_attention_heads_are_v_head_dim_wide_on_the_output_projection(latent_bridge):
    assert latent_bridge.cfg.d_head == LATENT.qk_rope_head_dim != V_HEAD_DIM
    [spec] = [
        spec for spec in adapter_for(latent_bridge).tensor_specs(latent_bridge) if spec.key == "blocks.0.attn.o.weight"
    ]
    assert (spec.unit, spec.unit_axis, spec.unit_width, spec.unit_count) == ("head", 1, V_HEAD_DIM, 4)


def test_a_latent_attention_head_off_equals_zeroing_its_columns_of_the_hf_output_projection(latent_bridge):
    tokens = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = MaskSet.for_bridge(latent_bridge, MaskConfig(granularity="head"))
    for logits in mask.logits.values():
        logits.data.fill_(1.0)
    mask.logits[next(name for name in mask.logits if name.startswith("blocks.1."))].data[2] = -1.0
    with torch.no_grad(), masked(latent_bridge, mask.binary()):
        actual = latent_bridge(tokens)
    weight = latent_bridge.original_model.model.layers[1].self_attn.o_proj.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, 2 * V_HEAD_DIM : 3 * V_HEAD_DIM] = 0.0
            expected = latent_bridge(tokens)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, latent_bridge(tokens), atol=1e-3)


def test_a_gated_query_head_holds_its_query_and_gate_rows(gated_bridge):
    specs = {spec.key: spec for spec in adapter_for(gated_bridge).tensor_specs(gated_bridge)}
    query = specs["blocks.1.attn.q.weight"]
    assert query.shape == (2 * 4 * 8, 32) and (query.unit_axis, query.unit_width) == (0, 16)
    assert specs["blocks.1.attn.o.weight"].unit_width == 8


@pytest.mark.parametrize("bridge_name", ["latent_bridge", "gated_bridge"])
def test_the_kit_passes_at_head_and_neuron_granularity(bridge_name, request):
    bridge = request.getfixturevalue(bridge_name)
    for result in run_conformance(bridge, checks=HEAD_CHECKS):
        assert result.passed, str(result)


def test_an_export_that_transformers_itself_cannot_run_is_reported_as_transformers_own(tmp_path):
    """Two key/value groups contradict latent attention (every head reads its own keys and values): TransformerLens
    runs the attention itself and boots, but transformers' own forward pass fails, so the exported model cannot
    reload and run. The kit says so in one line instead of a bare size mismatch."""
    torch.manual_seed(0)
    config = DeepseekV2Config(**(LATENT.to_dict() | {"num_key_value_heads": 2}))
    [result] = run_conformance(boot_tiny(DeepseekV2ForCausalLM(config), tmp_path), checks=["hf_export_reloads"])
    assert not result.passed
    assert result.detail.startswith("transformers' own DeepseekV2ForCausalLM fails on these tokens with this config")
    assert "no mask is involved" in result.detail and "\n" not in result.detail


def test_a_model_that_transformers_itself_cannot_run_is_reported_as_failing_outside_transformer_lens(tmp_path):
    """DeepSeek V2's default ``num_experts_per_tok`` is ``None``: its routing fails in transformers' own code, in the
    bridge and outside it alike, and every check says so in one line."""
    torch.manual_seed(0)
    config = DeepseekV2Config(**(LATENT.to_dict() | {"num_experts_per_tok": None}))
    bridge = boot_tiny(DeepseekV2ForCausalLM(config), tmp_path)
    for result in run_conformance(bridge, checks=["all_ones_bit_identical", "head_off_equals_zeroed_hook_z"]):
        assert not result.passed and "\n" not in result.detail
        assert result.detail.startswith(
            "the unmasked model itself fails on these tokens, and so does transformers' own DeepseekV2ForCausalLM "
            "outside TransformerLens (TypeError: topk()"
        )


def test_the_default_head_sampler_removes_a_latent_attention_head_at_its_v_head_dim_slice(latent_bridge):
    """TransformerLens splits latent attention's ``hook_z`` by the rotary width; the Bernoulli sampler's gates must
    cover each head's ``v_head_dim`` entries (its gradient is the head's removal cost, not another slice's)."""
    assert_local_expectation_is_removal_cost(latent_bridge, "blocks.0.attn", (0, 3))


def test_every_latent_attention_tensor_is_a_mask_target_that_matters(latent_bridge):
    """The low-rank query and key/value projections and their norms had the role ``other``, which no
    ``MaskConfig.kinds`` selects: a mask of any kind and granularity left 26% of the tiny model's parameters (every
    attention matrix but ``o_proj``) untouched while the kit passed. Each is now a target, and zeroing it alone
    changes the logits; the all-ones mask still reproduces them and the exported masked model reloads."""
    specs = adapter_for(latent_bridge).tensor_specs(latent_bridge)
    assert [spec.key for spec in specs if spec.kind == "other"] == []
    roles = {spec.key.split(".", 2)[2]: spec.role for spec in specs if spec.layer == 0 and ".attn." in spec.key}
    assert roles == {
        "attn.q_a_proj.weight": "W_Q_a",
        "attn.q_a_layernorm.weight": "q_a_norm.w",
        "attn.q_b_proj.weight": "W_Q_b",
        "attn.kv_a_proj_with_mqa.weight": "W_KV_a",
        "attn.kv_a_layernorm.weight": "kv_norm.w",
        "attn.kv_b_proj.weight": "W_KV_b",
        "attn.o.weight": "W_O",
    }
    checks = ["all_ones_bit_identical", "every_target_matters", "hf_export_reloads"]
    for result in run_conformance(latent_bridge, checks=checks):
        assert result.passed, str(result)
