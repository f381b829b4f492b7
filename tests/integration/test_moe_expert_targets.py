"""Mixture-of-experts blocks that store their experts as batched 3-D parameters (Mixtral, OLMoE, Qwen2/3-MoE, ...):
``bridge.state_dict()`` leaves those out, so the derived adapter adds them as mask targets, and at neuron granularity
locates hidden unit i of expert e (neuron ``e * d_expert + i``) on each stack's expert and hidden-unit axes."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GptOssConfig,
    GptOssForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
)

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import adapter_for
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import check_gradients
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

N_EXPERTS, D_EXPERT = 4, 64
MOE = {
    "mixtral": lambda: MixtralForCausalLM(
        MixtralConfig(num_key_value_heads=2, num_local_experts=N_EXPERTS, num_experts_per_tok=2, **TINY_HF_SIZES)
    ),
    "olmoe": lambda: OlmoeForCausalLM(
        OlmoeConfig(num_experts=N_EXPERTS, num_experts_per_tok=2, **TINY_HF_SIZES)  # intermediate_size per expert
    ),
    # gate and up rows interleaved, stacks stored [n_experts, in, out]
    "gpt_oss": lambda: GptOssForCausalLM(
        GptOssConfig(
            num_key_value_heads=2,
            num_local_experts=N_EXPERTS,
            num_experts_per_tok=2,
            head_dim=8,
            layer_types=["full_attention", "full_attention"],
            **TINY_HF_SIZES,
        )
    ),
}


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    return boot_tiny(MOE["mixtral"](), tmp_path_factory.mktemp("mixtral"))


def test_the_batched_expert_matrices_are_mask_targets_with_neurons_on_two_axes(mixtral):
    specs = {spec.key: spec for spec in adapter_for(mixtral).tensor_specs(mixtral)}
    gate_up, down = specs["blocks.1.mlp.experts.gate_up_proj"], specs["blocks.1.mlp.experts.down_proj"]
    assert (gate_up.role, gate_up.shape, gate_up.layout) == ("W_experts_in", (N_EXPERTS, 2 * D_EXPERT, 32), "linear")
    assert (gate_up.unit, gate_up.expert_axis, gate_up.unit_axis, gate_up.unit_repeats) == ("neuron", 0, 1, 2)
    assert (down.role, down.shape, down.unit, down.expert_axis, down.unit_axis) == (
        "W_experts_out",
        (N_EXPERTS, 32, D_EXPERT),
        "neuron",
        0,
        2,
    )
    assert mixtral.get_parameter(down.path) is mixtral.original_model.model.layers[1].mlp.experts.down_proj


def test_one_expert_neuron_off_removes_its_gate_and_up_rows_and_its_down_column(mixtral):
    """Neuron (expert 2, unit 5) of layer 1 off: exactly gate row 5, up row 64 + 5 and down column 5 of expert 2."""
    mask = MaskSet.for_bridge(mixtral, MaskConfig(granularity="neuron"))
    assert mask.logits["blocks.1.mlp"].shape == (N_EXPERTS * D_EXPERT,)
    unit_kept = {name: torch.ones(logits.shape, dtype=torch.bool) for name, logits in mask.logits.items()}
    unit_kept["blocks.1.mlp"][2 * D_EXPERT + 5] = False
    kept = mask.binary_from(unit_kept).kept
    expected_gate_up = torch.ones(N_EXPERTS, 2 * D_EXPERT, 32, dtype=torch.bool)
    expected_gate_up[2, [5, D_EXPERT + 5], :] = False
    expected_down = torch.ones(N_EXPERTS, 32, D_EXPERT, dtype=torch.bool)
    expected_down[2, :, 5] = False
    assert torch.equal(kept["blocks.1.mlp.experts.gate_up_proj"], expected_gate_up)
    assert torch.equal(kept["blocks.1.mlp.experts.down_proj"], expected_down)
    assert kept["blocks.0.mlp.experts.gate_up_proj"].all() and kept["blocks.0.mlp.experts.down_proj"].all()


@pytest.mark.parametrize("family", MOE)
def test_an_expert_neuron_off_equals_zeroing_its_down_projection_column(family, tmp_path):
    """The kit's check: the mask of neuron (e, i) gives the logits of the model with column i of expert e's down
    projection zeroed (in a clone), in the first and last layers, and the model is bit-exact afterwards; two
    training steps at neuron granularity reach every layer's expert logits."""
    bridge = boot_tiny(MOE[family](), tmp_path)
    before = {name: tensor.clone() for name, tensor in bridge.named_parameters()}
    results = run_conformance(
        bridge, checks=["neuron_off_equals_zeroed_hook_post", "unit_slices_equal_tl_views", "all_ones_bit_identical"]
    )
    assert all(result.passed for result in results), [str(result) for result in results]
    assert (
        check_gradients(bridge, torch.randint(5, 40, (2, 8), generator=torch.Generator().manual_seed(0)), "neuron")
        is None
    )
    assert all(torch.equal(tensor, before[name]) for name, tensor in bridge.named_parameters())


@pytest.mark.parametrize("check", ["all_ones_bit_identical", "every_target_matters", "hf_export_reloads"])
def test_masks_on_the_experts_act_as_the_forward_pass_reads_them(check, mixtral):
    """Zeroing either expert stack alone changes the logits, and per-weight masks on every tensor, experts included,
    exported to the Hugging Face layout, reload with the masked bridge's logits."""
    [result] = run_conformance(mixtral, checks=[check])
    assert result.passed, str(result)
