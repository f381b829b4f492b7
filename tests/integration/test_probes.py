"""Gated-module probes: losses and analyses against hand-computed values, and probes trained on a real model."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from conftest import MOE, N_EXPERTS

from modmask_lens import TrainConfig, train_masks
from modmask_lens.analysis import unit_importance
from modmask_lens.probes import (
    GatedProbe,
    ProbeConfig,
    ProbeData,
    ProbeEvaluation,
    ProbeTrainer,
    error_attribution,
    evaluate_probe,
    expert_ablation,
    expert_accuracy,
    read_activations,
    routing_information,
    routing_table,
    transfer_test,
)
from modmask_lens.probes.component_gate import (
    ComponentGateConfig,
    compare_with_masks,
    component_usage,
    gated_logits,
    train_component_gate,
)
from modmask_lens.probes.moe import importance_cv2, probe_loss
from modmask_lens.probes.training import CHECKPOINT_FILE
from modmask_lens.testing.copy_task import FIRST, SECOND, build_model, copy_subtask
from modmask_lens.testing.tiny_models import boot_tiny

HOOKS = ["blocks.1.hook_resid_post"]


def hand_probe(kind: str) -> tuple[GatedProbe, torch.Tensor, torch.Tensor]:
    """A 2-expert linear probe on 3 features and 3 classes with fixed weights."""
    probe = GatedProbe(3, 3, ProbeConfig(n_experts=2, gate=kind))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return probe, torch.randn(4, 3, generator=generator), torch.tensor([0, 2, 1, 2])


def test_expectation_loss_is_the_mixture_nll():
    probe, x, y = hand_probe("expectation")
    output = probe(x)
    gate = torch.softmax(probe.gate(x), dim=1)
    experts = torch.stack([torch.softmax(expert(x), dim=1) for expert in probe.experts], dim=1)
    expected = -torch.log((gate[:, :, None] * experts).sum(1)[torch.arange(4), y] + 1e-7).mean()
    torch.testing.assert_close(probe_loss(probe, output, y), expected)


def test_pre_softmax_and_stochastic_losses_follow_their_formulas():
    probe, x, y = hand_probe("pre_softmax")
    gate = torch.softmax(probe.gate(x), dim=1)
    logits = torch.stack([expert(x) for expert in probe.experts], dim=1)
    expected = torch.nn.functional.cross_entropy((gate[:, :, None] * logits).sum(1), y)
    torch.testing.assert_close(probe_loss(probe, probe(x), y), expected)
    probe, x, y = hand_probe("stochastic")
    gate = torch.softmax(probe.gate(x), dim=1)
    nll = -torch.stack([torch.log_softmax(expert(x), 1)[torch.arange(4), y] for expert in probe.experts], dim=1)
    expected = -torch.log((gate * torch.exp(-0.5 * nll)).sum(1)).mean()
    torch.testing.assert_close(probe_loss(probe, probe(x), y), expected)


def test_importance_cv2_by_hand():
    gate = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])  # importance [2.5, 0.5]: mean 1.5, variance 1.0
    torch.testing.assert_close(importance_cv2(gate), torch.tensor(1.0 / 1.5**2))


def test_a_gate_forced_to_one_expert_routes_everything_there():
    probe, x, y = hand_probe("expectation")
    with torch.no_grad():
        probe.gate.weight.zero_()
        probe.gate.bias.copy_(torch.tensor([-30.0, 30.0]))
    output = probe(x)
    assert torch.equal(output.gate.argmax(1), torch.ones(4, dtype=torch.long))
    assert torch.equal(output.log_probs.argmax(1), probe.experts[1](x).argmax(1))
    evaluation = ProbeEvaluation(
        output.gate.detach(),
        output.expert_logits.argmax(-1) == y[:, None],
        output.log_probs.argmax(-1) == y,
        torch.tensor([0, 0, 1, 1]),
        ("a", "b"),
    )
    table = routing_table(evaluation)
    assert table[table.expert == 0]["count"].sum() == 0 and table[table.expert == 1]["count"].sum() == 4
    information = routing_information(evaluation).iloc[0]
    assert information.mutual_information == pytest.approx(0.0) and information.expert_entropy == pytest.approx(0.0)
    assert information.usage_entropy == pytest.approx(0.0, abs=1e-6) and information.subtask_entropy == pytest.approx(
        1.0
    )


def test_routing_that_follows_the_subtasks_carries_one_bit():
    gate = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    evaluation = ProbeEvaluation(
        gate,
        torch.ones(4, 2, dtype=torch.bool),
        torch.ones(4, dtype=torch.bool),
        torch.tensor([0, 0, 1, 1]),
        ("a", "b"),
    )
    information = routing_information(evaluation).iloc[0]
    assert information.mutual_information == pytest.approx(1.0)
    per_sample = [-(p * math.log2(p) + (1 - p) * math.log2(1 - p)) for p in (0.9, 0.8, 0.7, 0.9)]
    assert information.mean_gate_entropy == pytest.approx(sum(per_sample) / 4)
    mass = routing_table(evaluation).set_index(["subtask", "expert"]).gate_mass
    assert mass[("a", 0)] == pytest.approx(1.7) and mass[("b", 1)] == pytest.approx(1.6)


def test_error_attribution_and_expert_accuracy_on_a_hand_built_case():
    # Expert 0 is always right. Examples: right; mixing error; gate error (chosen 1 wrong, 0 right); expert error.
    gate = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    expert_correct = torch.tensor([[True, False], [True, False], [True, False], [False, False]])
    correct = torch.tensor([True, False, False, False])
    evaluation = ProbeEvaluation(gate, expert_correct, correct, torch.zeros(4, dtype=torch.long), ("all",))
    row = error_attribution(evaluation).iloc[0]
    assert (row.mixing_errors, row.gate_errors, row.expert_errors, row.errors) == (1, 1, 1, 3)
    assert row.accuracy == 0.25 and row.ideal_gate_accuracy == 0.75 and row.gap == 0.5
    accuracy = expert_accuracy(evaluation).set_index("expert")
    assert accuracy.loc[0, "accuracy_all"] == 0.75 and accuracy.loc[0, "own_examples"] == 3
    assert accuracy.loc[1, "accuracy_own"] == 0.0


@pytest.fixture(scope="module")
def copy_model_and_data(tmp_path_factory):
    bridge = build_model(tmp_path_factory.mktemp("probe"), steps=300)
    subtasks = [copy_subtask("copy_first", FIRST, 0), copy_subtask("copy_second", SECOND, 1)]
    return bridge, subtasks


def test_probe_reads_the_answer_from_the_residual_stream(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    data = ProbeData.from_subtasks(subtasks, target="answer", vocab_size=bridge.cfg.d_vocab)
    assert torch.equal(data.positions, torch.full((200,), 2))
    assert torch.equal(data.targets[:100], subtasks[0].input_ids[:, 0])  # copy_first answers the first token
    probe = ProbeTrainer(
        bridge, HOOKS, data, ProbeConfig(n_experts=2, steps=300, batch_size=32, lr=1e-2), progress=False
    ).train()
    evaluation = evaluate_probe(probe, bridge, HOOKS, data)
    assert evaluation.correct.float().mean() > 0.9
    assert set(expert_ablation(probe, bridge, HOOKS, data).removed_expert) == {-1, 0, 1}


def test_subtask_probe_and_transfer_test(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=200, batch_size=16, lr=1e-2)
    probe = ProbeTrainer(bridge, HOOKS, data, config, progress=False).train()
    assert evaluate_probe(probe, bridge, HOOKS, data).correct.float().mean() >= 0.95
    transfer = transfer_test(probe, bridge, HOOKS, data, data).set_index("variant")
    assert set(transfer.index) == {"original", "frozen_gate_fresh_experts", "fresh_probe"}
    assert transfer.loc["original", "accuracy"] >= 0.95 and transfer.accuracy.between(0, 1).all()


def test_interrupted_probe_training_resumes_identically(copy_model_and_data, tmp_path, monkeypatch):
    bridge, subtasks = copy_model_and_data
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=6, batch_size=8, checkpoint_every=2, gate="top1", regulariser="ideal_gate")
    straight = ProbeTrainer(bridge, HOOKS, data, config, progress=False).train()
    original_step = ProbeTrainer._train_step

    def crash_at_three(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(ProbeTrainer, "_train_step", crash_at_three)
    with pytest.raises(KeyboardInterrupt):
        ProbeTrainer(bridge, HOOKS, data, config, checkpoint_dir=tmp_path, progress=False).train()
    monkeypatch.setattr(ProbeTrainer, "_train_step", original_step)
    resumed = ProbeTrainer(bridge, HOOKS, data, config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.step == 2 and (tmp_path / CHECKPOINT_FILE).exists()
    for (name, value), other in zip(straight.state_dict().items(), resumed.train().state_dict().values()):
        assert torch.equal(value, other), name


def test_unknown_hook_names_are_refused(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    with pytest.raises(KeyError, match="no hook point"):
        read_activations(bridge, ["blocks.9.hook_resid_post"], subtasks[0].input_ids[:2], torch.tensor([2, 2]))


def test_a_closed_head_gate_equals_zeroing_its_hook_z(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    input_ids = subtasks[0].input_ids[:4]
    gates = torch.ones(4, bridge.cfg.n_layers, bridge.cfg.n_heads + 1)
    gates[:, 1, 2] = 0.0  # layer 1, head 2
    gates[:, 0, -1] = 0.0  # layer 0's MLP

    def zero_head(z, hook):
        z[:, :, 2] = 0.0
        return z

    expected = bridge.run_with_hooks(
        input_ids,
        fwd_hooks=[("blocks.1.attn.hook_z", zero_head), ("blocks.0.hook_mlp_out", lambda out, hook: out * 0.0)],
    )
    torch.testing.assert_close(gated_logits(bridge, gates, input_ids), expected, rtol=0, atol=1e-5)


def test_component_gate_trains_keeps_accuracy_and_compares_with_masks(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    gate = train_component_gate(bridge, subtasks, ComponentGateConfig(steps=80, sparsity=0.1), progress=False)
    assert all(parameter.grad is None for parameter in bridge.parameters())
    usage = component_usage(gate, bridge, subtasks)
    assert len(usage) == 2 * bridge.cfg.n_layers * (bridge.cfg.n_heads + 1) and usage.mean_gate.between(0, 1).all()
    assert usage.mean_gate.mean() < 0.9  # the sparsity penalty closes some gates
    masks = train_masks(bridge, subtasks, train_config=TrainConfig(steps=20, batch_size=32, lr=0.05), progress=False)
    importance = pd.concat([unit_importance(mask.binary(), "head") for mask in masks.values()])
    comparison = compare_with_masks(usage, importance)
    assert len(comparison) == 2 * bridge.cfg.n_layers * bridge.cfg.n_heads
    assert comparison.spearman.dropna().between(-1, 1).all()


def test_routing_heatmap_shows_each_subtasks_share_per_expert():
    from modmask_lens.viz import routing_heatmap

    gate = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    evaluation = ProbeEvaluation(
        gate,
        torch.ones(4, 2, dtype=torch.bool),
        torch.ones(4, dtype=torch.bool),
        torch.tensor([0, 0, 1, 1]),
        ("a", "b"),
    )
    view = routing_heatmap(routing_table(evaluation))
    assert view.values.loc["a"].tolist() == [1.0, 0.0] and view.values.loc["b"].tolist() == [0.5, 0.5]
    html = view._repr_html_()
    assert "<svg" in html and "expert 1" in html and "http" not in html.split("xmlns")[0]


def test_attention_patterns_are_read_at_the_query_position(copy_model_and_data):
    """``hook_pattern`` is [batch, head, query, key]: the probe reads every head's attention from the example's
    position, not the head numbered like it (a reviewer found the head read, or an IndexError past the heads)."""
    bridge, subtasks = copy_model_and_data
    input_ids = subtasks[0].input_ids[:3]
    positions = torch.tensor([0, 1, input_ids.shape[1] - 1])
    name = "blocks.0.attn.hook_pattern"
    _, cache = bridge.run_with_cache(input_ids, names_filter=[name])
    expected = torch.stack([cache[name][row, :, position] for row, position in enumerate(positions.tolist())])
    read = read_activations(bridge, [name, "blocks.0.hook_resid_post"], input_ids, positions)
    torch.testing.assert_close(read[:, : expected[0].numel()], expected.flatten(1).float())
    assert read.shape[1] == expected[0].numel() + bridge.cfg.d_model


def test_hooks_without_a_row_per_example_and_position_are_refused_naming_the_readable_ones(tmp_path):
    """A router's ``[batch * pos, experts]`` weights with as many positions as experts were read at [example,
    position] of the flattened tokens (one number per example, without a word); a rotary table's ``[1, pos, d]``
    passed the one-example read of the trainer and failed with an IndexError at the first step."""
    bridge = boot_tiny(MOE["mixtral"](), tmp_path)
    input_ids = torch.randint(5, 40, (2, N_EXPERTS), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([1, N_EXPERTS - 1])
    with pytest.raises(ValueError, match=r"hook_expert_weights has shape \(8, 4\).*blocks.\{l\}.hook_resid_post"):
        read_activations(bridge, ["blocks.0.mlp.hook_expert_weights"], input_ids, positions)
    data = ProbeData(input_ids, positions, torch.tensor([0, 1]), torch.tensor([0, 1]), ("a", "b"), 2)
    with pytest.raises(ValueError, match=r"hook_cos has shape \(1, 4, 8\).*hook_pattern"):
        ProbeTrainer(bridge, ["blocks.0.attn.hook_cos"], data, ProbeConfig(steps=1), progress=False)


def test_probes_read_the_model_in_eval_mode_and_leave_its_mode(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    dropout = [module for module in bridge.modules() if isinstance(module, torch.nn.Dropout)]
    input_ids, positions = subtasks[0].input_ids[:4], torch.full((4,), 2)
    expected = read_activations(bridge, HOOKS, input_ids, positions)
    bridge.train()
    try:
        for module in dropout:  # dropout that would change every read in training mode
            module.p = 0.5
        assert torch.equal(read_activations(bridge, HOOKS, input_ids, positions), expected)
        gates = torch.ones(4, bridge.cfg.n_layers, bridge.cfg.n_heads + 1)
        assert torch.equal(gated_logits(bridge, gates, input_ids), gated_logits(bridge, gates, input_ids))
        assert bridge.training and all(module.training for module in bridge.modules())
    finally:
        for module in dropout:
            module.p = 0.0
        bridge.eval()
    assert dropout, "the copy-task model has no dropout module to test with"


def test_a_probe_is_evaluated_at_the_gate_temperature_it_ended_training_at(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=3, steps=30, batch_size=16, lr=1e-2, temperature=5.0, temperature_decay=0.5)
    probe = ProbeTrainer(bridge, HOOKS, data, config, progress=False).train()
    last = 5.0 / (1 + 0.5 * 29 * 16 / len(data))  # T / (1 + decay * epochs) at the last step, 29
    assert probe.temperature == pytest.approx(last)
    evaluation = evaluate_probe(probe, bridge, HOOKS, data)
    activations = read_activations(bridge, HOOKS, data.input_ids, data.positions)
    with torch.no_grad():
        expected = torch.softmax(probe.gate(activations) / last, dim=-1)
    torch.testing.assert_close(evaluation.gate, expected)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        probe(activations, temperature=0.0)
    # Saved and loaded the torch way, the probe keeps the temperature it was trained to (it read config's 5.0).
    reloaded = GatedProbe(probe.d_in, probe.n_classes, config, HOOKS)
    reloaded.load_state_dict(probe.state_dict())
    assert reloaded.temperature == pytest.approx(last)
    torch.testing.assert_close(evaluate_probe(reloaded, bridge, HOOKS, data).gate, expected)


def test_evaluate_probe_refuses_hooks_the_probe_was_not_trained_on(copy_model_and_data):
    """Hooks of the probe's width in another order were read without a word; another width died in a matmul."""
    bridge, subtasks = copy_model_and_data
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=2, batch_size=8)
    both = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    probe = ProbeTrainer(bridge, both, data, config, progress=False).train()
    assert probe.hook_names == tuple(both)
    with pytest.raises(ValueError, match="the probe reads .*pass the hooks it was trained on, in that order"):
        evaluate_probe(probe, bridge, both[::-1], data)
    unnamed = GatedProbe(probe.d_in, probe.n_classes, config)
    with pytest.raises(ValueError, match=f"give {bridge.cfg.d_model} activations per example, the probe reads"):
        evaluate_probe(unnamed, bridge, both[:1], data)


def test_probes_and_component_gates_run_on_a_bf16_model_and_leave_it_unchanged(copy_model_and_data):
    bridge, subtasks = copy_model_and_data
    half = copy.deepcopy(bridge).to(torch.bfloat16)
    before = {name: value.clone() for name, value in half.state_dict().items()}
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    probe = ProbeTrainer(half, HOOKS, data, ProbeConfig(n_experts=2, steps=3, batch_size=8), progress=False).train()
    assert evaluate_probe(probe, half, HOOKS, data).gate.dtype == torch.float32
    gate = train_component_gate(half, subtasks, ComponentGateConfig(steps=2, batch_size=4), progress=False)
    assert len(component_usage(gate, half, subtasks)) == 2 * bridge.cfg.n_layers * (bridge.cfg.n_heads + 1)
    assert all(torch.equal(before[name], value) for name, value in half.state_dict().items())


def test_component_gate_settings_and_mask_names_are_checked(copy_model_and_data):
    for bad in ({"steps": 0}, {"batch_size": 0}, {"hidden": 0}, {"lr": 0.0}, {"sparsity": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ComponentGateConfig(**bad)
    with pytest.raises(ValueError, match="no subtasks"):
        train_component_gate(copy_model_and_data[0], [], progress=False)
    usage = pd.DataFrame([{"subtask": "copy_first", "layer": 0, "component": "head", "head": 0, "mean_gate": 0.5}])
    importance = pd.DataFrame([{"mask": "first", "layer": 0, "head": 0, "kept_fraction": 0.5}])
    with pytest.raises(ValueError, match=r"no mask named \['copy_first'\]"):
        compare_with_masks(usage, importance)
