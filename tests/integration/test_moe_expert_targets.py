"""Mixture-of-experts blocks that store their experts as batched 3-D parameters (Mixtral, OLMoE, Qwen2/3-MoE, ...):
``bridge.state_dict()`` leaves those out, so the derived adapter adds them as mask targets, and at neuron granularity
locates hidden unit i of expert e (neuron ``e * d_expert + i``) on each stack's expert and hidden-unit axes."""

from __future__ import annotations

import pytest
import torch
from conftest import D_EXPERT, D_SHARED, MOE, N_EXPERTS
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

from modmask_lens import MaskConfig, MaskSet, load_masks, save_masks
from modmask_lens.adapters import adapter_for, derived
from modmask_lens.masks.identity import ModelMismatch
from modmask_lens.masks.io import MaskFileError
from modmask_lens.testing import conformance, run_conformance
from modmask_lens.testing.conformance import check_gradients
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny


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
    mask = MaskSet.for_bridge(mixtral, MaskConfig(granularity="neuron", neuron_mask="in-out"))
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


def test_a_shared_expert_s_neurons_follow_the_routed_experts_and_a_dense_layer_has_its_own(tmp_path):
    """GLM-4-MoE: layer 0 is a dense MLP (neurons ``[d_mlp]``); layer 1's neurons are the routed experts'
    (``n_experts * d_expert``) then its shared expert's (``d_expert`` more, ``n_shared_experts=1``): turning shared
    neuron 3 off removes exactly row 3 of its gate and up projections and column 3 of its down projection."""
    bridge = boot_tiny(MOE["glm4_moe"](), tmp_path)
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"))
    assert {name: tuple(logits.shape) for name, logits in mask.logits.items()} == {
        "blocks.0.mlp": (64,),
        "blocks.1.mlp": (N_EXPERTS * D_EXPERT + D_EXPERT,),
    }
    assert {member.key for member in mask.units[0].members} == {
        f"blocks.0.mlp.dense_{part}.weight" for part in ("gate", "in", "out")
    }
    unit_kept = {name: torch.ones(logits.shape, dtype=torch.bool) for name, logits in mask.logits.items()}
    unit_kept["blocks.1.mlp"][N_EXPERTS * D_EXPERT + 3] = False
    kept = mask.binary_from(unit_kept).kept
    shared = "blocks.1.mlp.shared_experts"
    for part, rows_removed in (("gate_proj", True), ("up_proj", True), ("down_proj", False)):
        expected = torch.ones(bridge.get_parameter(_path(mask, f"{shared}.{part}.weight")).shape, dtype=torch.bool)
        if rows_removed:
            expected[3, :] = False
        else:
            expected[:, 3] = False
        assert torch.equal(kept[f"{shared}.{part}.weight"], expected), part
    assert kept["blocks.1.mlp.experts.gate_up_proj"].all() and kept["blocks.1.mlp.experts.down_proj"].all()


def _path(mask: MaskSet, key: str) -> str:
    return next(member.path for member in mask.members if member.key == key)


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


def test_the_kit_catches_fused_halves_placed_as_interleaved(mixtral, monkeypatch):
    """Not vacuous: an adapter that read Mixtral's concatenated gate/up rows as interleaved fails the check."""
    correct = derived.expert_layout

    def interleaved(*args):
        layout = correct(*args)
        if layout.get("unit_repeats") == 2:
            layout.update(unit_repeats=1, unit_width=2)
        return layout

    monkeypatch.setattr(derived, "expert_layout", interleaved)
    [result] = run_conformance(mixtral, checks=["neuron_off_equals_zeroed_hook_post"])
    assert not result.passed and "max difference" in result.detail


def test_the_kit_ablates_routed_and_shared_expert_neurons(tmp_path):
    """Qwen2-MoE's check covers a routed neuron of the first and of the last routed expert whose removal changes the
    logits, and the first and last neuron of the shared expert (numbered after the routed ones)."""
    bridge = boot_tiny(MOE["qwen2_moe"](), tmp_path)
    tokens = torch.randint(5, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    [unit] = [
        unit
        for unit in MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron")).units
        if unit.name == "blocks.1.mlp"
    ]
    ablations = conformance._expert_neuron_ablations(bridge, tokens, unit)
    routed = N_EXPERTS * D_EXPERT
    assert len(ablations) == 4 and {routed, routed + D_SHARED - 1} < set(ablations)
    assert min(ablations) % D_EXPERT == 0 and max(key for key in ablations if key < routed) % D_EXPERT == D_EXPERT - 1


def test_gpt_oss_expert_biases_are_targets_and_share_their_neurons(tmp_path):
    """GPT-OSS interleaves each hidden unit's gate and up rows (``[n_experts, d_model, 2 * d_expert]``) and has
    per-expert biases: neuron (expert 1, unit 5) off removes gate_up_proj_bias entries 10 and 11 of expert 1, and
    down_proj_bias (per expert and ``d_model``, no neuron of its own) is masked only per weight or as a whole."""
    bridge = boot_tiny(MOE["gpt_oss"](), tmp_path)
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out", kinds=("linear", "bias")))
    unit_kept = {name: torch.ones(logits.shape, dtype=torch.bool) for name, logits in mask.logits.items()}
    unit_kept["blocks.1.mlp"][D_EXPERT + 5] = False
    kept = mask.binary_from(unit_kept).kept
    expected_bias = torch.ones(N_EXPERTS, 2 * D_EXPERT, dtype=torch.bool)
    expected_bias[1, [10, 11]] = False
    assert torch.equal(kept["blocks.1.mlp.experts.gate_up_proj_bias"], expected_bias)
    expected_gate_up = torch.ones(N_EXPERTS, 32, 2 * D_EXPERT, dtype=torch.bool)
    expected_gate_up[1, :, [10, 11]] = False
    assert torch.equal(kept["blocks.1.mlp.experts.gate_up_proj"], expected_gate_up)
    assert "blocks.1.mlp.experts.down_proj_bias" not in kept
    weight_mask = MaskSet.for_bridge(bridge, MaskConfig(kinds=("bias",)))
    assert {"blocks.1.mlp.experts.gate_up_proj_bias", "blocks.1.mlp.experts.down_proj_bias"} <= set(weight_mask.logits)


def test_a_dense_layer_after_a_sparse_one_is_a_neuron_layer_checked_against_its_own_view(tmp_path):
    """Qwen2-MoE with layer 1 dense (``mlp_only_layers=[1]``): its ``dense_*`` projections are ``W_gate``/``W_in``/
    ``W_out`` neuron tensors, and the kit compares them with TransformerLens's ``W_in``/``W_out``, which stack only
    the dense layers (one entry, which belongs to layer 1)."""
    config = Qwen2MoeConfig(
        num_key_value_heads=2,
        num_experts=N_EXPERTS,
        num_experts_per_tok=2,
        moe_intermediate_size=D_EXPERT,
        shared_expert_intermediate_size=D_SHARED,
        mlp_only_layers=[1],
        **TINY_HF_SIZES,
    )
    bridge = boot_tiny(Qwen2MoeForCausalLM(config), tmp_path)
    dense = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge) if spec.key.startswith("blocks.1.mlp")}
    assert {key: (spec.role, spec.unit) for key, spec in dense.items()} == {
        "blocks.1.mlp.dense_gate.weight": ("W_gate", "neuron"),
        "blocks.1.mlp.dense_in.weight": ("W_in", "neuron"),
        "blocks.1.mlp.dense_out.weight": ("W_out", "neuron"),
    }
    assert bridge.W_in.shape[0] == 1
    checks = ["unit_slices_equal_tl_views", "neuron_off_equals_zeroed_hook_post"]
    results = run_conformance(bridge, checks=checks)
    assert all(result.passed for result in results), [str(result) for result in results]


ROUTERS = {
    "mixtral": ("gate.weight",),
    "gpt_oss": ("router.weight", "router.bias"),
    "llama4": ("router.weight",),
    "qwen2_moe": ("gate.weight", "shared_expert_gate.weight"),
}
"""Each family's routing tensors under ``blocks.{i}.mlp``: the router, whatever TransformerLens names it, and
Qwen2-MoE's sigmoid gate on its shared expert."""


@pytest.mark.parametrize("family", ROUTERS)
def test_routers_are_masked_per_weight_and_per_matrix_and_are_no_neurons(family, tmp_path):
    """Every layer's router is ``W_router`` (``b_router``): a ``[n_experts, d_model]`` reader of the residual stream
    that weight and matrix masks cover, whose zeroing alone changes the logits and whose matrix logit gets a gradient,
    and that no neuron unit holds."""
    bridge = boot_tiny(MOE[family](), tmp_path)
    routers = {f"blocks.{layer}.mlp.{name}" for layer in (0, 1) for name in ROUTERS[family]}
    specs = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge)}
    assert {(specs[key].role, specs[key].kind) for key in routers} <= {("W_router", "linear"), ("b_router", "bias")}
    for key in routers:
        if specs[key].role == "W_router":
            assert (specs[key].input_axis, specs[key].shape[1]) == (1, 32)
            assert specs[key].shape[0] == (1 if "shared_expert_gate" in key else N_EXPERTS)
    kinds = ("linear", "bias")
    for granularity in ("weight", "matrix"):
        assert routers <= set(MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity, kinds=kinds)).logits)
    neuron_units = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron", kinds=kinds)).units
    assert not routers & {member.key for unit in neuron_units for member in unit.members}
    [matters] = run_conformance(bridge, checks=["every_target_matters"])
    assert matters.passed, str(matters)
    tokens = torch.randint(5, 40, (2, 8), generator=torch.Generator().manual_seed(0))
    assert check_gradients(bridge, tokens, "matrix") is None


def test_a_mask_saved_before_the_routers_were_targets_fails_to_load_with_one_line_naming_the_fix(tmp_path, monkeypatch):
    """Qwen2-MoE: a weight mask saved while routing tensors were not told apart (its ``shared_expert_gate`` had
    role ``other``, which no mask selects) covers one tensor fewer per layer than this version's mask."""
    bridge = boot_tiny(MOE["qwen2_moe"](), tmp_path / "model")
    with monkeypatch.context() as earlier:
        earlier.setattr(derived, "_is_routing", lambda spec: False)
        path = save_masks(MaskSet.for_bridge(bridge, MaskConfig()), tmp_path / "earlier.safetensors")
    with pytest.raises(MaskFileError) as raised:
        load_masks(path, bridge)
    message = str(raised.value)
    assert "\n" not in message and message.endswith("retrain the mask with this version")
    assert "this model has blocks.0.mlp.shared_expert_gate.weight [1, 32], blocks.1.mlp" in message


def test_a_mask_saved_before_the_expert_biases_were_targets_fails_to_load_with_one_line_naming_the_fix(
    tmp_path, monkeypatch
):
    """GPT-OSS: a mask saved while its per-expert biases were not read has another weights hash (it covers every
    tensor the adapter reads); the error names that cause beside another model's weights."""
    bridge = boot_tiny(MOE["gpt_oss"](), tmp_path / "model")
    current = derived._expert_specs

    def without_biases(*args):
        return [spec for spec in current(*args) if not spec.key.endswith("_bias")]

    with monkeypatch.context() as earlier:
        earlier.setattr(derived, "_expert_specs", without_biases)
        path = save_masks(MaskSet.for_bridge(bridge, MaskConfig(granularity="head")), tmp_path / "earlier.safetensors")
    with pytest.raises(ModelMismatch) as raised:
        load_masks(path, bridge)
    message = str(raised.value)
    assert "\n" not in message and "weights_sha256 differ" in message
    assert message.endswith("retrain it with this version)")
