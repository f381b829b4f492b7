"""Switch Transformers' feed-forward layers, which TransformerLens maps as one ``MoEBridge`` per block: dense layers
(``dense_in``/``dense_out``) and sparse layers of a router and one module per expert (``experts.expert_{e}.wi`` /
``.wo``), which the map leaves out. The stacked adapter reads every one of them: the dense MLP's neurons, the router
as ``W_router``, and expert e's hidden unit i as neuron ``e * d_ff + i`` of its layer."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import SWITCH_D_FF, SWITCH_EXPERTS, tiny_switch
from torch import nn

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.adapters import adapter_for
from modmask_lens.testing import conformance_inputs, run_conformance


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    return tiny_switch(tmp_path_factory.mktemp("switch"))


def test_every_parameter_of_the_dense_and_sparse_layers_is_a_mask_target(switch):
    specs = adapter_for(switch).tensor_specs(switch)
    targets = {id(switch.get_parameter(spec.path)) for spec in specs}
    untargeted = [name for name, p in switch.original_model.named_parameters() if id(p) not in targets]
    assert untargeted == []
    roles = {spec.key: spec.role for spec in specs}
    assert roles["encoder_blocks.0.mlp.dense_in.weight"] == "W_in"
    assert roles["encoder_blocks.1.mlp.gate.classifier.weight"] == "W_router"
    assert roles["decoder_blocks.1.mlp.experts.expert_3.wo.weight"] == "W_experts_out"


def test_one_expert_neuron_off_removes_its_wi_row_and_wo_column_and_nothing_else(switch):
    """Neuron (expert 2, unit 5) of the decoder's sparse layer (layer 3) off: row 5 of expert 2's ``wi`` and column
    5 of its ``wo``; the other experts, the router and the dense layers keep everything."""
    mask = MaskSet.for_bridge(switch, MaskConfig(granularity="neuron", neuron_mask="in-out"))
    assert mask.logits["blocks.0.mlp"].shape == (SWITCH_D_FF,)
    assert mask.logits["blocks.3.mlp"].shape == (SWITCH_EXPERTS * SWITCH_D_FF,)
    unit_kept = {name: torch.ones(logits.shape, dtype=torch.bool) for name, logits in mask.logits.items()}
    unit_kept["blocks.3.mlp"][2 * SWITCH_D_FF + 5] = False
    kept = mask.binary_from(unit_kept).kept
    dropped = {key: (~value).nonzero().tolist() for key, value in kept.items() if not value.all()}
    assert dropped == {
        "decoder_blocks.1.mlp.experts.expert_2.wi.weight": [[5, column] for column in range(32)],
        "decoder_blocks.1.mlp.experts.expert_2.wo.weight": [[row, 5] for row in range(32)],
    }


def test_the_kit_passes_at_neuron_granularity_and_every_target_matters(switch):
    results = run_conformance(
        switch, checks=["neuron_off_equals_zeroed_hook_post", "unit_slices_equal_tl_views", "every_target_matters"]
    )
    assert all(result.passed for result in results), [str(result) for result in results if not result.passed]


def test_an_expert_the_router_never_picks_is_excused_and_its_neurons_are_not_the_ones_checked(tmp_path):
    """With expert 3's router row a copy of expert 0's in the decoder's sparse layer, every token that would pick
    3 picks 0 (``argmax`` takes the first of tied maxima), so expert 3's module is never called: zeroing its weights
    changes nothing on any input, which ``every_target_matters`` must not call unread, and the neuron-off check must
    test neurons that some token activates."""
    bridge = tiny_switch(tmp_path)
    router = bridge.original_model.decoder.block[1].layer[2].mlp.router.classifier.weight
    with torch.no_grad():
        router[3] = router[0]
    called = []
    expert = bridge.original_model.decoder.block[1].layer[2].mlp.experts.expert_3
    handle = expert.register_forward_pre_hook(lambda module, args: called.append(True))
    try:
        bridge(torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(1)))
    finally:
        handle.remove()
    assert not called
    results = run_conformance(bridge, checks=["every_target_matters", "neuron_off_equals_zeroed_hook_post"])
    assert all(result.passed for result in results), [str(result) for result in results if not result.passed]
    assert "'decoder_blocks.1.mlp.experts.expert_3'" in results[0].detail, results[0].detail


def test_an_expert_the_router_picks_but_whose_module_the_model_does_not_run_fails_as_unread(tmp_path):
    """The reviewer's stale copy: the decoder's sparse layer runs a copy of ``expert_3`` in place of the module the
    adapter maps, which the forward pass then never calls although the router picks expert 3 for some token. Its
    tensors are unread, not excused."""
    bridge = tiny_switch(tmp_path)
    experts = bridge.original_model.decoder.block[1].layer[2].mlp.experts
    stale = copy.deepcopy(experts.expert_3)  # held by the closure, not registered: the adapter cannot find it

    class RunsAStaleCopy(type(experts)):
        def __getitem__(self, name: str) -> nn.Module:
            return stale if name == "expert_3" else super().__getitem__(name)

    experts.__class__ = RunsAStaleCopy
    router = bridge.original_model.decoder.block[1].layer[2].mlp.router.classifier
    picked = []
    handle = router.register_forward_hook(lambda module, args, logits: picked.append(logits.argmax(-1).unique()))
    try:
        bridge(conformance_inputs(bridge))
    finally:
        handle.remove()
    assert 3 in torch.cat(picked).tolist()
    [result] = run_conformance(bridge, checks=["every_target_matters"])
    assert not result.passed, str(result)
    assert "decoder_blocks.1.mlp.experts.expert_3.wi.weight" in result.detail, result.detail
    assert "decoder_blocks.1.mlp.experts.expert_3.wo.weight" in result.detail, result.detail
