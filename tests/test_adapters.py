"""Adapters resolve exactly the tensors the forward pass reads, with their roles and unit layouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import boot_native
from modmask_lens import UnsupportedArchitecture, adapter_for


def test_unknown_architecture_names_itself_the_installed_adapters_and_the_fix():
    fake = torch.nn.Module()
    fake.cfg = SimpleNamespace(architecture="Qwen3ForCausalLM")
    with pytest.raises(UnsupportedArchitecture, match=r"Qwen3ForCausalLM: no adapter; installed: gpt2, native.*CONTRIBUTING"):
        adapter_for(fake)


def test_gpt2_fused_c_attn_is_not_a_target_and_layouts_follow_conv1d(gpt2_bridge):
    specs = {spec.key: spec for spec in adapter_for(gpt2_bridge).tensor_specs(gpt2_bridge)}
    assert not any("qkv" in key or "c_attn" in spec.path for key, spec in specs.items())
    assert "unembed.bias" not in specs  # synthetic zero bias of the bridge, not a parameter
    assert specs["blocks.0.mlp.in.weight"].shape == (32, 128) and specs["blocks.0.mlp.in.weight"].unit_axis == 1
    assert specs["blocks.0.mlp.out.weight"].unit_axis == 0
    assert specs["blocks.0.attn.o.weight"].unit_axis == 0 and specs["blocks.0.attn.q.weight"].unit_axis == 0
    assert specs["embed.weight"].role == "W_E" and specs["unembed.weight"].role == "W_U"


def test_head_slices_match_transformer_lens_w_q(gpt2_bridge):
    """Head h of our W_Q layout is TransformerLens's W_Q[layer, h] (transposed [d_head, d_model] rows)."""
    spec = next(s for s in adapter_for(gpt2_bridge).tensor_specs(gpt2_bridge) if s.key == "blocks.1.attn.q.weight")
    weight = gpt2_bridge.get_parameter(spec.path)
    for head in range(gpt2_bridge.cfg.n_heads):
        rows = weight.narrow(spec.unit_axis, head * spec.unit_width, spec.unit_width)
        torch.testing.assert_close(rows.T, gpt2_bridge.W_Q[1, head])


def test_gqa_native_key_value_tensors_are_kv_head_units():
    bridge = boot_native(gqa=True)
    specs = {spec.key: spec for spec in adapter_for(bridge).tensor_specs(bridge)}
    assert specs["blocks.0.attn.k.weight"].unit == "kv_head" and specs["blocks.0.attn.k.weight"].shape == (16, 32)
    assert specs["blocks.0.mlp.gate.weight"].role == "W_gate" and specs["blocks.0.mlp.gate.weight"].unit == "neuron"
