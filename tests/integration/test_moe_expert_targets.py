"""Mixture-of-experts blocks that store their experts as batched 3-D parameters (Mixtral, OLMoE, Qwen2/3-MoE, ...):
``bridge.state_dict()`` leaves those out, so the derived adapter adds them as mask targets (per weight or as a whole;
neuron granularity does not place them yet)."""

from __future__ import annotations

import pytest
from transformers import MixtralConfig, MixtralForCausalLM

from modmask_lens.adapters import adapter_for
from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    config = MixtralConfig(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **TINY_HF_SIZES)
    return boot_tiny(MixtralForCausalLM(config), tmp_path_factory.mktemp("mixtral"))


def test_the_batched_expert_matrices_are_mask_targets(mixtral):
    specs = {spec.key: spec for spec in adapter_for(mixtral).tensor_specs(mixtral)}
    gate_up, down = specs["blocks.1.mlp.experts.gate_up_proj"], specs["blocks.1.mlp.experts.down_proj"]
    assert (gate_up.role, gate_up.shape, gate_up.layout) == ("W_experts_in", (4, 128, 32), "unknown")
    assert (down.role, down.shape, down.unit) == ("W_experts_out", (4, 32, 64), None)
    assert mixtral.get_parameter(down.path) is mixtral.original_model.model.layers[1].mlp.experts.down_proj


@pytest.mark.parametrize("check", ["all_ones_bit_identical", "every_target_matters", "hf_export_reloads"])
def test_masks_on_the_experts_act_as_the_forward_pass_reads_them(check, mixtral):
    """Zeroing either expert stack alone changes the logits, and per-weight masks on every tensor, experts included,
    exported to the Hugging Face layout, reload with the masked bridge's logits."""
    [result] = run_conformance(mixtral, checks=[check])
    assert result.passed, str(result)
