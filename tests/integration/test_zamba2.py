"""Zamba2: a Mamba layer, then two hybrid layers that run one shared transformer block (with per-layer adapters),
which TransformerLens runs whole; its adapter maps them, one mask per shared tensor applied at both depths."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_zamba2

from modmask_lens import MaskConfig, MaskSet, adapter_for
from modmask_lens.masks.apply import masked, masked_call
from modmask_lens.masks.sharding import ShardedBridge
from modmask_lens.testing import check_head_mask, run_conformance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    return tiny_zamba2(tmp_path_factory.mktemp("zamba2"), attention_adapters=True)


def _tokens(bridge) -> torch.Tensor:
    return torch.randint(0, bridge.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(1))


def test_every_parameter_is_a_target_and_a_shared_tensor_is_one_target(bridge):
    adapter = adapter_for(bridge)
    assert adapter.name == "zamba2"
    specs = adapter.tensor_specs(bridge)
    targets = [id(bridge.get_parameter(spec.path)) for spec in specs]
    assert set(targets) == {id(parameter) for parameter in bridge.original_model.parameters()}
    untied = [id(bridge.get_parameter(spec.path)) for spec in specs if spec.tied_to is None]  # W_U is W_E
    assert len(untied) == len(set(untied))  # each shared tensor once, though two modules hold it
    keys = {spec.key: spec for spec in specs}
    assert "blocks.1.attn.q.weight" in keys and "blocks.2.attn.q.weight" not in keys
    layers = bridge.original_model.model.layers
    assert layers[1].shared_transformer.self_attn.q_proj is not layers[2].shared_transformer.self_attn.q_proj
    # Each hybrid layer's own adapters, keyed where they are read: slot k by the k-th hybrid layer.
    assert bridge.get_parameter(keys["blocks.2.mlp.in_lora_B.weight"].path) is (
        layers[2].shared_transformer.feed_forward.gate_up_proj_adapter_list[1][1].weight
    )


def test_units_are_the_shared_blocks_heads_and_gated_neurons(bridge):
    heads = MaskSet.for_bridge(bridge, MaskConfig(granularity="head", head_mask="qkvo"))
    neurons = MaskSet.for_bridge(bridge, MaskConfig(granularity="neuron", neuron_mask="in-out"))
    assert {name: tuple(logits.shape) for name, logits in heads.logits.items()} == {"blocks.1.attn": (4,)}
    assert {name: tuple(logits.shape) for name, logits in neurons.logits.items()} == {"blocks.1.mlp": (64,)}
    assert sorted(member.role for member in neurons.units[0].members) == ["W_in", "W_out"]


def test_kit_passes_every_check(bridge):
    """Every check applies and passes: the view check compares with the map each module computes (TransformerLens
    exposes no view here), compatibility mode and the export included; but for the gated pass, which does not apply:
    the shared block's writers are read again at every depth, so its masks train through weight products."""
    results = {result.name: result for result in run_conformance(bridge)}
    gates = results.pop("output_gates_equal_weight_products")
    assert not gates.applies and "never gated" in gates.detail
    assert [str(result) for result in results.values() if not (result.applies and result.passed)] == []


def _zeroing_inputs(modules, start: int, stop: int):
    return [
        module.register_forward_pre_hook(lambda module, args: (args[0].index_fill(-1, torch.arange(start, stop), 0),))
        for module in modules
    ]


def _run_with(bridge, tokens, handles) -> torch.Tensor:
    try:
        return bridge(tokens)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_a_shared_unit_off_is_removed_at_both_depths(bridge, granularity):
    """Independently of the kit: head 2 (entries 32..47 of ``o_proj``'s input) or neuron 5 (entry 5 of
    ``down_proj``'s input) off equals zeroing it in both hybrid layers' modules, and differs from zeroing it in the
    first only (so the one mask reaches the second depth)."""
    tokens = _tokens(bridge)
    blocks = [bridge.original_model.model.layers[layer].shared_transformer for layer in (1, 2)]
    if granularity == "head":
        modules, (start, stop), index = [block.self_attn.o_proj for block in blocks], (32, 48), 2
    else:
        modules, (start, stop), index = [block.feed_forward.down_proj for block in blocks], (5, 6), 5
    expected = _run_with(bridge, tokens, _zeroing_inputs(modules, start, stop))
    first_depth_only = _run_with(bridge, tokens, _zeroing_inputs(modules[:1], start, stop))
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity=granularity))
    [name] = mask.logits
    mask.logits[name].data.fill_(1.0)
    mask.logits[name].data[index] = -1.0
    with masked(bridge, mask):
        actual = bridge(tokens)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert (actual - first_depth_only).abs().max() > 1e-4
    if granularity == "head":
        assert check_head_mask(bridge, mask, tokens) is None


def test_zeroing_a_shared_tensor_by_its_one_path_zeroes_it_at_both_depths(bridge):
    """``masked_call`` with the first depth's path alone: the second depth's module reads the zeroed tensor too."""
    tokens = _tokens(bridge)
    layers = bridge.original_model.model.layers
    path = next(spec.path for spec in adapter_for(bridge).tensor_specs(bridge) if spec.key == "blocks.1.mlp.out.weight")
    actual = masked_call(bridge, {path: torch.zeros(())}, bridge.forward, tokens)
    zeroed = {
        f"model.layers.{layer}._original_component.shared_transformer.feed_forward.down_proj.weight": torch.zeros(
            layers[layer].shared_transformer.feed_forward.down_proj.weight.shape
        )
        for layer in (1, 2)
    }
    expected = torch.func.functional_call(bridge.original_model, zeroed, (tokens,), tie_weights=False).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_sharded_training_refuses_a_block_shared_across_depths_in_one_line(bridge):
    with pytest.raises(ValueError, match="read at several depths.*without fully_shard"):
        ShardedBridge(bridge)
