"""Masks applied through functional_call compute exactly what a hand-masked model computes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_unchanged, boot_native, state_snapshot
from torch import nn

from modmask_lens import BinaryMask, MaskConfig, MaskSet, masked, masked_call
from modmask_lens.testing.tiny_models import tiny_bridge

ALL_KINDS = MaskConfig(kinds=("linear", "norm", "embedding", "bias"))


def constant_mask(masks: MaskSet, value: bool) -> BinaryMask:
    binary = masks.binary()
    return BinaryMask(binary.specs, {k: torch.full_like(v, value) for k, v in binary.kept.items()}, binary.origin)


def test_all_ones_mask_reproduces_logits_exactly(any_bridge, tokens):
    reference = any_bridge(tokens)
    masks = MaskSet.for_bridge(any_bridge, ALL_KINDS)
    with masked(any_bridge, constant_mask(masks, True)):
        assert torch.equal(any_bridge(tokens), reference)


def test_all_zeros_mask_changes_logits(any_bridge, tokens):
    reference = any_bridge(tokens)
    with masked(any_bridge, constant_mask(MaskSet.for_bridge(any_bridge), False)):
        assert not torch.allclose(any_bridge(tokens), reference)


def test_every_masked_tensor_on_its_own_affects_the_output(any_bridge, tokens):
    """Catches tensors the forward pass never reads (fused originals) and aliases that shadow each other."""
    reference = any_bridge(tokens)
    masks = MaskSet.for_bridge(any_bridge, ALL_KINDS)
    assert len(masks.members) >= 20
    for spec in masks.members:
        if spec.role == "b_K" and spec.layer is not None and not _rotary(any_bridge):
            continue  # q . b_K shifts all scores of a query equally: softmax cancels it exactly
        zeroed = {spec.path: torch.zeros(spec.shape)}
        output = masked_call(any_bridge, zeroed, any_bridge.forward, tokens)
        assert not torch.allclose(output, reference), f"zeroing {spec.key} ({spec.role}) changed nothing"


def _rotary(bridge) -> bool:
    return bridge.cfg.positional_embedding_type == "rotary"


def test_random_binary_mask_equals_hand_masked_deep_copy(any_bridge, tokens):
    masks = MaskSet.for_bridge(any_bridge, ALL_KINDS)
    generator = torch.Generator().manual_seed(3)
    binary = masks.binary()
    binary.kept = {key: torch.rand(kept.shape, generator=generator) < 0.7 for key, kept in binary.kept.items()}
    hand_masked = copy.deepcopy(any_bridge)
    for spec in binary.specs:  # a fresh Parameter per path also unties GPT-2's W_E / W_U, as the masks do
        module_path, _, attribute = spec.path.rpartition(".")
        module = hand_masked.get_submodule(module_path)
        weight = getattr(module, attribute).detach()
        setattr(module, attribute, torch.nn.Parameter(weight * binary.kept[spec.key]))
    snapshot = state_snapshot(any_bridge)
    with masked(any_bridge, binary):
        output = any_bridge(tokens)
    torch.testing.assert_close(output, hand_masked(tokens), rtol=0, atol=1e-6)
    assert_unchanged(any_bridge, snapshot)


def test_tied_embedding_and_unembedding_take_separate_masks(gpt2_bridge, tokens):
    masks = MaskSet.for_bridge(gpt2_bridge, MaskConfig(kinds=("embedding",)))
    unembed_only = MaskSet.for_bridge(gpt2_bridge, MaskConfig(roles=("W_U",)))
    reference = gpt2_bridge(tokens)
    for mask_set in (masks, unembed_only):
        with masked(gpt2_bridge, constant_mask(mask_set, False)):
            assert not torch.allclose(gpt2_bridge(tokens), reference)
    assert torch.equal(gpt2_bridge(tokens), reference)


class SharedAcrossDepths(nn.Module):
    """Two blocks whose modules of their own hold one weight (as Hugging Face ties Zamba2's shared transformer block
    at each depth), and an embedding tied to the unembedding (as GPT-2's)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)])
        self.blocks[1].weight = self.blocks[0].weight
        self.unembed = nn.Linear(4, 5, bias=False)
        self.unembed.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        residual = self.embed(ids)
        for block in self.blocks:
            residual = residual + torch.tanh(block(residual))
        return self.unembed(residual)


def test_a_mask_of_a_tensor_shared_across_depths_applies_at_each_but_tied_places_keep_their_own():
    torch.manual_seed(0)
    model, ids = SharedAcrossDepths(), torch.tensor([[0, 3, 1, 4]])
    mask = (torch.rand(4, 4) > 0.5).float()

    def by_hand(masked_paths: list[str], weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked_weights = {path: weight.detach() * mask for path in masked_paths}
        return torch.func.functional_call(model, masked_weights, (ids,), tie_weights=False)

    shared = by_hand(["blocks.0.weight", "blocks.1.weight"], model.blocks[0].weight, mask)
    assert not torch.allclose(shared, by_hand(["blocks.0.weight"], model.blocks[0].weight, mask))
    torch.testing.assert_close(masked_call(model, {"blocks.0.weight": mask}, model.forward, ids), shared)
    vocab_mask = (torch.rand(5, 4) > 0.5).float()
    unembed_only = by_hand(["unembed.weight"], model.unembed.weight, vocab_mask)
    torch.testing.assert_close(masked_call(model, {"unembed.weight": vocab_mask}, model.forward, ids), unembed_only)


@pytest.mark.parametrize("head", [0, 2])
def test_head_off_equals_zeroing_hook_z(any_bridge, tokens, head):
    masks = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="head"))
    masks.logits["blocks.1.attn"].data[head] = -1.0
    with masked(any_bridge, masks):
        output = any_bridge(tokens)

    def zero_head(z, hook):
        z[:, :, head] = 0.0
        return z

    expected = any_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("neuron_mask", "roles"), [("output", {"W_out"}), ("in-out", {"W_in", "W_out"})])
@pytest.mark.parametrize("neuron", [0, 17])
def test_neuron_off_equals_zeroing_hook_post(any_bridge, tokens, neuron, neuron_mask, roles):
    masks = MaskSet.for_bridge(any_bridge, MaskConfig(granularity="neuron", neuron_mask=neuron_mask))
    found = {spec.role for spec in masks.members}
    assert found == roles if neuron_mask == "output" else found >= roles  # and W_gate where the MLP is gated
    masks.logits["blocks.0.mlp"].data[neuron] = -1.0
    with masked(any_bridge, masks):
        output = any_bridge(tokens)

    def zero_neuron(post, hook):
        post[..., neuron] = 0.0
        return post

    expected = any_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", zero_neuron)])
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-5)


def test_gqa_head_granularity_keeps_a_kv_group_while_one_of_its_heads_is_kept():
    bridge = boot_native(gqa=True)
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", head_mask="qkvo"))
    masks.logits["blocks.0.attn"].data[:] = torch.tensor([-1.0, 1.0, -1.0, -1.0])
    kept = masks.binary().kept_fraction(by="head")
    keys = kept[(kept.layer == 0) & (kept.role == "W_K")]
    assert keys.kept_fraction.tolist() == [1.0, 0.0]  # group 0 serves heads 0 and 1; group 1 serves heads 2 and 3
    queries = kept[(kept.layer == 0) & (kept.role == "W_Q")]
    assert queries.kept_fraction.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_entry_points_run_masked_with_user_hooks(any_bridge, tokens):
    masks = MaskSet.for_bridge(any_bridge)
    ones, zeros = constant_mask(masks, True), constant_mask(masks, False)
    plain_logits, plain_cache = any_bridge.run_with_cache(tokens)
    seen = []

    def record(activation, hook):
        seen.append(activation.detach().clone())

    plain_hooked = any_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", record)])
    with masked(any_bridge, ones):
        logits, cache = any_bridge.run_with_cache(tokens)
        hooked = any_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", record)])
    assert torch.equal(logits, plain_logits) and torch.equal(hooked, plain_hooked)
    assert torch.equal(cache["blocks.1.attn.hook_pattern"], plain_cache["blocks.1.attn.hook_pattern"])
    assert torch.equal(seen[0], seen[1])
    with masked(any_bridge, zeros):
        _, zero_cache = any_bridge.run_with_cache(tokens)
    assert not torch.allclose(zero_cache["blocks.1.hook_resid_post"], plain_cache["blocks.1.hook_resid_post"])


def test_generate_under_all_ones_mask_matches_plain_generation(any_bridge, tokens):
    kwargs = {"max_new_tokens": 4, "do_sample": False, "verbose": False, "stop_at_eos": False}
    plain = any_bridge.generate(tokens[:1, :5], **kwargs)
    with masked(any_bridge, constant_mask(MaskSet.for_bridge(any_bridge), True)):
        assert torch.equal(any_bridge.generate(tokens[:1, :5], **kwargs), plain)
    with masked(any_bridge, constant_mask(MaskSet.for_bridge(any_bridge), False)):
        zeroed = any_bridge.generate(tokens[:1, :5], **kwargs)
    assert zeroed.shape == plain.shape


def test_model_is_bit_exact_after_an_exception_inside_a_masked_call(any_bridge, tokens):
    snapshot = state_snapshot(any_bridge)
    reference = any_bridge(tokens)

    def explode(activation, hook):
        raise KeyboardInterrupt

    masks = MaskSet.for_bridge(any_bridge, ALL_KINDS)
    with pytest.raises(KeyboardInterrupt), masked(any_bridge, constant_mask(masks, False)):
        any_bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", explode)])
    assert_unchanged(any_bridge, snapshot)
    assert torch.equal(any_bridge(tokens), reference)


def test_masks_in_compatibility_mode_resolve_the_processed_weights(gpt2_bridge, tokens):
    raw_masks = MaskSet.for_bridge(gpt2_bridge)
    gpt2_bridge.enable_compatibility_mode(disable_warnings=True)
    snapshot = state_snapshot(gpt2_bridge)
    reference = gpt2_bridge(tokens)
    compat_masks = MaskSet.for_bridge(gpt2_bridge)
    assert compat_masks.origin.mode == "compat"
    with masked(gpt2_bridge, constant_mask(compat_masks, True)):
        assert torch.equal(gpt2_bridge(tokens), reference)
    with masked(gpt2_bridge, constant_mask(compat_masks, False)):
        assert not torch.allclose(gpt2_bridge(tokens), reference)
    assert_unchanged(gpt2_bridge, snapshot)
    from modmask_lens import ModelMismatch

    with pytest.raises(ModelMismatch, match="raw weights"), masked(gpt2_bridge, raw_masks):
        pass


def test_masked_contexts_do_not_nest(gpt2_bridge):
    masks = MaskSet.for_bridge(gpt2_bridge)
    with masked(gpt2_bridge, masks), pytest.raises(RuntimeError, match="do not nest"), masked(gpt2_bridge, masks):
        pass
    assert "forward" not in gpt2_bridge.__dict__


def test_random_control_keeps_as_many_units_as_the_readout_at_its_threshold():
    masks = MaskSet.for_bridge(tiny_bridge(), MaskConfig(granularity="neuron"))
    values = torch.arange(sum(logit.numel() for logit in masks.logits.values()), dtype=torch.float32) - 100.0
    for unit, part in zip(masks.units, values.split([masks.logits[unit.name].numel() for unit in masks.units])):
        masks.logits[unit.name] = part.reshape(masks.logits[unit.name].shape)
    masks.threshold = -20.5  # a faithful readout below 0: the logits -20 ... 27 are kept
    kept_neurons = int((values > -20.5).sum())
    assert kept_neurons == 48
    for control in (masks.random_binary(seed=seed) for seed in range(3)):
        assert control.count == masks.binary().count  # every neuron holds as many weights
        assert int(control.kept_fraction(by="neuron").kept.gt(0).sum()) == kept_neurons
