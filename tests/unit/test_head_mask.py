"""``MaskConfig.head_mask``: a head logit on the head's output only, or shared by its W_Q/W_K/W_V/W_O slices."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformer_lens.model_bridge import TransformerBridge

from modmask_lens import MaskConfig, MaskSet, load_masks, masked, save_masks
from modmask_lens.core.checkpoint import CHECKSUM_FIELD, METADATA_KEY, content_sha256
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.testing.tiny_models import TINY_NATIVE_CONFIG


def test_an_output_head_mask_masks_only_w_o_and_equals_gating_hook_z(any_bridge, tokens):
    """Head h's logit scales its W_O rows: the same as multiplying ``hook_z[:, :, h]`` by the mask value."""
    mask = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="head", head_mask="output"))
    assert {member.role for member in mask.members} == {"W_O"}
    gates = {name: torch.linspace(0.0, 1.0, logits.shape[0]) for name, logits in mask.logits.items()}
    samples = {member.path: unit.expand(gates[unit.name], member) for unit in mask.units for member in unit.members}
    hooks = [
        (f"{name}.hook_z", lambda z, hook, gate=gate: z * gate[None, None, :, None]) for name, gate in gates.items()
    ]
    expected = any_bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    with masked(any_bridge, lambda: samples):
        torch.testing.assert_close(any_bridge(tokens), expected)


def test_qkvo_head_masks_share_one_logit_over_all_four_matrices(any_bridge):
    mask = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="head", head_mask="qkvo"))
    assert {member.role for member in mask.members} == {"W_Q", "W_K", "W_V", "W_O"}


def test_roles_decide_over_head_mask(any_bridge):
    mask = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="head", head_mask="output", roles=("W_Q", "W_K")))
    assert {member.role for member in mask.members} == {"W_Q", "W_K"}


def test_an_unknown_head_mask_is_refused():
    with pytest.raises((ValueError, TypeError), match="head_mask 'query' is not one of|Type-check"):  # beartype first
        MaskConfig(head_mask="query")


def test_a_mask_file_from_before_head_mask_loads_as_qkvo(gpt2_bridge, tmp_path):
    """Files written before the option existed were trained with the shared logit: they must not load as output."""
    path = save_masks(MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="head", head_mask="qkvo")), tmp_path / "m")
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
    del metadata["mask_config"]["head_mask"]
    # Rewritten as an older version wrote it: its checksum covers the header it had.
    metadata[CHECKSUM_FIELD] = content_sha256(tensors, metadata)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})
    loaded = load_masks(path, gpt2_bridge)
    assert loaded.config.head_mask == "qkvo"
    assert {member.role for member in loaded.members} == {"W_Q", "W_K", "W_V", "W_O"}


@pytest.mark.parametrize("role", ["W_K", "W_V"])
def test_head_masks_of_key_or_value_slices_alone_have_one_logit_per_query_head(any_bridge, role):
    mask = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="head", roles=(role,)))
    assert {member.role for member in mask.members} == {role}
    assert all(logits.shape == (any_bridge.cfg.n_heads,) for logits in mask.logits.values())


@pytest.mark.parametrize("roles", [None, ("b_K",)])
def test_a_key_value_bias_with_as_many_entries_as_heads_takes_its_groups_value(roles):
    """Four heads in two key/value groups of d_head 2: b_K holds 4 entries, as many as the layer's head logits, and
    was read as one entry per head: with head 0 alone kept, b_K kept [1, 0, 0, 0] where W_K keeps group 0's rows
    [1, 1, 0, 0] (and training's fused product, with roles=('b_K',), drew one sample per entry)."""
    config = TINY_NATIVE_CONFIG | {"n_key_value_heads": 2, "d_head": 2, "normalization_type": "RMS", "seed": 0}
    bridge = TransformerBridge.boot_native(config | {"positional_embedding_type": "rotary", "gated_mlp": True})
    mask = MaskSet.for_bridge(
        bridge, MaskConfig(granularity="head", head_mask="qkvo", kinds=("linear", "bias"), roles=roles)
    )
    with torch.no_grad():
        for logits in mask.logits.values():
            logits.copy_(torch.tensor([20.0, -20.0, -20.0, -20.0]))
    kept = mask.binary().kept
    for key in ("blocks.0.attn.k.bias", "blocks.0.attn.v.bias")[: 1 if roles else 2]:
        assert kept[key].tolist() == [True, True, False, False], key
    generator = torch.Generator().manual_seed(0)  # random weights: the tiny model's biases are all 0
    weights = {member.path: torch.randn(member.shape, generator=generator) for member in mask.members}
    products = mask.sample_products(weights, noise=UniformNoise(0))
    samples = mask.sample(noise=UniformNoise(0))
    assert all(torch.equal(products[path], weights[path] * samples[path]) for path in weights)
    assert all(
        torch.equal((samples[member.path] != 0).expand(member.shape), kept[member.key]) for member in mask.members
    )
