"""Gated-module probes on encoder data, on data without answers and on attention-only models, and the inputs they
refuse: positions, attention masks and label shifts checked against the model run by hand."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

from modmask_lens.core.checkpoint import CHECKSUM_FIELD, METADATA_KEY, content_sha256
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.random import seeded
from modmask_lens.masks.model_config import ModelConfigUnchecked
from modmask_lens.probes import (
    GatedProbe,
    ProbeConfig,
    ProbeData,
    ProbeTrainer,
    error_attribution,
    evaluate_probe,
    expert_ablation,
    read_activations,
)
from modmask_lens.probes.component_gate import (
    ComponentGate,
    ComponentGateConfig,
    component_usage,
    gated_logits,
    train_component_gate,
)
from modmask_lens.probes.training import CHECKPOINT_FILE
from modmask_lens.testing.tiny_models import (
    TINY_HF_SIZES,
    TINY_NATIVE_CONFIG,
    boot_tiny,
    placeholder_bert_tokenizer,
)

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tokenizer = placeholder_bert_tokenizer(40)
    bridge = boot_tiny(
        BertForMaskedLM(BertConfig(**TINY_HF_SIZES)), tmp_path_factory.mktemp("bert"), tokenizer=tokenizer
    )
    short = SubtaskData.from_masked_sentences("short", [("w11 [MASK]", "w12"), ("w13 w14 [MASK] w7", "w15")], tokenizer)
    long = SubtaskData.from_masked_sentences(
        "long", [("w5 w6 [MASK] w7", "w8"), ("w9 [MASK] w7 w6 w6 w6 w6", "w10")], tokenizer
    )
    return bridge, tokenizer, [long, short]


def test_masked_lm_probe_reads_each_mask_position_with_the_attention_mask(bert):
    bridge, tokenizer, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="answer", vocab_size=bridge.cfg.d_vocab)
    mask_positions = (data.input_ids == tokenizer.mask_token_id).int().argmax(dim=1)
    assert data.positions.tolist() == mask_positions.tolist() == [3, 2, 2, 3]  # [CLS] first
    assert data.targets.tolist() == tokenizer.convert_tokens_to_ids(["w8", "w10", "w12", "w15"])
    attention_mask = (data.input_ids != tokenizer.pad_token_id).long()
    assert torch.equal(data.attention_mask, attention_mask)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(data.input_ids, attention_mask=attention_mask, names_filter=[HOOK])
        _, unpadded = bridge.run_with_cache(data.input_ids, names_filter=[HOOK])
    expected = cache[HOOK][torch.arange(4), mask_positions]
    read = read_activations(bridge, [HOOK], data.input_ids, data.positions, data.attention_mask)
    torch.testing.assert_close(read, expected, rtol=0, atol=0)
    assert not torch.allclose(unpadded[HOOK][torch.arange(4), mask_positions], expected)  # the mask matters here
    selected = data.select(torch.tensor([2, 0]))
    assert torch.equal(selected.attention_mask, attention_mask[[2, 0]])


def test_probe_trains_on_masked_lm_data(bert):
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    probe = ProbeTrainer(bridge, [HOOK], data, ProbeConfig(n_experts=2, steps=3, batch_size=4), progress=False).train()
    assert isinstance(probe, GatedProbe)


def test_texts_without_answers_are_read_at_their_last_real_token(bert):
    bridge, tokenizer, _ = bert
    texts = [
        SubtaskData.from_texts("a", ["w5 w6 w7", "w8"], tokenizer),
        SubtaskData.from_texts("b", ["w9 w10", "w11 w12 w13 w14"], tokenizer),
    ]
    data = ProbeData.from_subtasks(texts, target="subtask")
    # [CLS] words [SEP]: the [SEP] of each text
    assert data.positions.tolist() == [4, 2, 3, 5]
    assert all(data.input_ids[row, position] == tokenizer.sep_token_id for row, position in enumerate(data.positions))
    with pytest.raises(ValueError, match="target='subtask'"):
        ProbeData.from_subtasks(texts, target="answer", vocab_size=bridge.cfg.d_vocab)
    with pytest.raises(ValueError, match=r"subtasks \['a', 'b'\] have no answers to train the gate on"):
        train_component_gate(bridge, texts, ComponentGateConfig(steps=1), progress=False)


def test_component_gate_on_masked_lm_data_scores_the_mask_positions(bert, monkeypatch):
    bridge, _, subtasks = bert
    merged = SubtaskData.concatenate("all", subtasks)
    gates = torch.ones(len(merged), bridge.cfg.n_layers, bridge.cfg.n_heads + 1)
    with torch.no_grad():
        expected = bridge(merged.input_ids, attention_mask=merged.attention_mask)
        torch.testing.assert_close(
            gated_logits(bridge, gates, merged.input_ids, merged.attention_mask), expected, rtol=0, atol=1e-6
        )
    from modmask_lens.probes import component_gate

    shifts = []
    original = component_gate.score_answers
    monkeypatch.setattr(
        component_gate,
        "score_answers",
        lambda logits, labels, label_shift=1: shifts.append(label_shift) or original(logits, labels, label_shift),
    )
    train_component_gate(bridge, subtasks, ComponentGateConfig(steps=2, batch_size=4), progress=False)
    assert shifts == [0, 0]


def test_component_gate_on_an_attention_only_model_gates_heads_only():
    from transformer_lens.model_bridge import TransformerBridge

    with seeded(0):
        bridge = TransformerBridge.boot_native(TINY_NATIVE_CONFIG | {"normalization_type": "LN", "attn_only": True})
    input_ids = torch.randint(1, 40, (6, 5), generator=torch.Generator().manual_seed(0))
    subtasks = [
        SubtaskData(name, input_ids[rows], torch.where(torch.arange(5) >= 3, input_ids[rows], -100))
        for name, rows in (("a", slice(0, 3)), ("b", slice(3, 6)))
    ]
    gate = train_component_gate(bridge, subtasks, ComponentGateConfig(steps=2, batch_size=4), progress=False)
    usage = component_usage(gate, bridge, subtasks)
    assert set(usage.component) == {"head"} and len(usage) == 2 * bridge.cfg.n_layers * bridge.cfg.n_heads


def test_bad_probe_settings_and_data_are_refused(bert):
    _, _, subtasks = bert
    for settings, message in (
        ({"batch_size": 0}, "batch_size"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"steps": -5}, "steps"),
        ({"temperature_decay": -1.0}, "temperature_decay"),
        ({"lr": 0.0}, "lr"),
    ):
        with pytest.raises(ValueError, match=message):
            ProbeConfig(**settings)
    with pytest.raises(ValueError, match="outside vocab_size 10"):
        ProbeData.from_subtasks(subtasks, target="answer", vocab_size=10)
    with pytest.raises(ValueError, match="repeat"):
        ProbeData.from_subtasks([subtasks[0], subtasks[0]], target="subtask")


def test_removing_experts_is_checked_and_a_single_expert_is_not_ablated(bert):
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    activations = read_activations(bridge, [HOOK], data.input_ids, data.positions, data.attention_mask)
    probe = GatedProbe(activations.shape[1], 2, ProbeConfig(n_experts=2))
    with pytest.raises(ValueError, match="all 2 experts"):
        probe(activations, removed_experts=(0, 1))
    with pytest.raises(ValueError, match=r"removed_experts \[5\]"):
        probe(activations, removed_experts=(5,))
    single = ProbeTrainer(bridge, [HOOK], data, ProbeConfig(n_experts=1, steps=2, batch_size=4), progress=False).train()
    assert set(expert_ablation(single, bridge, [HOOK], data).removed_expert) == {-1}


def test_a_finished_probe_run_extends_with_more_steps(bert, tmp_path):
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")

    def trainer(steps: int) -> ProbeTrainer:
        config = ProbeConfig(n_experts=2, steps=steps, batch_size=4, checkpoint_every=2)
        return ProbeTrainer(bridge, [HOOK], data, config, checkpoint_dir=tmp_path, progress=False)

    trainer(2).train()
    extended = trainer(4)
    assert extended.step == 2
    extended_state = extended.train().state_dict()
    uninterrupted = ProbeTrainer(
        bridge, [HOOK], data, ProbeConfig(n_experts=2, steps=4, batch_size=4, checkpoint_every=2), progress=False
    )
    for name, value in uninterrupted.train().state_dict().items():
        torch.testing.assert_close(extended_state[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than steps=1"):
        trainer(1)
    other = ProbeData.from_subtasks(subtasks[::-1], target="subtask")  # the same examples, other targets
    with pytest.raises(ValueError, match="other probe data"):
        ProbeTrainer(
            bridge, [HOOK], other, ProbeConfig(n_experts=2, steps=4, batch_size=4, checkpoint_every=2), tmp_path
        )


def test_a_probe_refuses_data_of_another_target(bert):
    """A probe of subtask targets read on answer targets scored ~0.1 and called every miss an expert error, silently:
    its classes are not the data's."""
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    answers = ProbeData.from_subtasks(subtasks, target="answer", vocab_size=bridge.cfg.d_vocab)
    activations = read_activations(bridge, [HOOK], data.input_ids, data.positions, data.attention_mask)
    probe = GatedProbe(activations.shape[1], data.n_classes, ProbeConfig(n_experts=2))
    assert len(evaluate_probe(probe, bridge, [HOOK], data).correct) == len(data)
    with pytest.raises(ValueError, match=f"predicts 2 classes, the data has {bridge.cfg.d_vocab}"):
        evaluate_probe(probe, bridge, [HOOK], answers)


def test_error_attribution_after_removing_an_expert_counts_only_the_experts_left(bert):
    """Expert 0 always answers 0 (the ``long`` subtask), expert 1 always 1 (``short``), and the gate picks expert 0.
    With expert 0 removed only expert 1 is left: the ideal gate is expert 1 (accuracy 1/2) and each miss is that
    expert's, not the gate's (it was: ideal-gate accuracy 1, both misses gate errors)."""
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    probe = GatedProbe(bridge.cfg.d_model, 2, ProbeConfig(n_experts=2))
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.zero_()
        probe.experts[0].bias.copy_(torch.tensor([1.0, 0.0]))
        probe.experts[1].bias.copy_(torch.tensor([0.0, 1.0]))
        probe.gate.bias.copy_(torch.tensor([5.0, 0.0]))
    intact = error_attribution(evaluate_probe(probe, bridge, [HOOK], data)).iloc[0]
    assert (intact.accuracy, intact.ideal_gate_accuracy, intact.gate_errors, intact.expert_errors) == (0.5, 1.0, 2, 0)
    removed = error_attribution(evaluate_probe(probe, bridge, [HOOK], data, removed_experts=(0,))).iloc[0]
    assert (removed.accuracy, removed.ideal_gate_accuracy, removed.gate_errors, removed.expert_errors) == (
        0.5,
        0.5,
        0,
        2,
    )


def test_gates_of_another_model_shape_are_refused(bert):
    """Gates ``[batch, n_layers, 2]`` broadcast each layer's one head gate over all its heads, silently; a component
    gate built for other heads reported rows for heads the model does not have."""
    bridge, _, subtasks = bert
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    input_ids = subtasks[0].input_ids
    with pytest.raises(ValueError, match=rf"\[batch, {n_layers}, {n_heads + 1}\]"):
        gated_logits(bridge, torch.ones(len(input_ids), n_layers, 2), input_ids, subtasks[0].attention_mask)
    with pytest.raises(ValueError, match=rf"\[batch, {n_layers}, {n_heads + 1}\]"):
        component_usage(ComponentGate(bridge.cfg.d_model, n_layers + 1, n_heads), bridge, subtasks)


def test_a_checkpoint_resumes_only_on_the_model_it_was_written_for(bert, tmp_path):
    """A probe checkpoint of one model resumed silently on another of the same shape (seed 1's weights), the
    probe then trained further on activations it was not fitted to."""
    bridge, tokenizer, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=2, batch_size=4)
    ProbeTrainer(bridge, [HOOK], data, config, tmp_path / "run", progress=False).train()
    assert ProbeTrainer(bridge, [HOOK], data, replace(config, steps=3), tmp_path / "run", progress=False).step == 2
    other = boot_tiny(BertForMaskedLM(BertConfig(**TINY_HF_SIZES)), tmp_path / "other", seed=1, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="was written for another model"):
        ProbeTrainer(other, [HOOK], data, config, tmp_path / "run", progress=False)


def test_a_checkpoint_written_before_model_configs_resumes_with_a_warning_and_another_config_is_named(bert, tmp_path):
    """A probe checkpoint's model record gained the config (activation, norm eps, positions); one written before
    resumes with a warning that the config went unchecked, and a config that differs is named."""
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=2, batch_size=4)
    ProbeTrainer(bridge, [HOOK], data, config, tmp_path, progress=False).train()
    path = tmp_path / CHECKPOINT_FILE

    def rewritten(change) -> None:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not iterable)
            metadata = json.loads(handle.metadata()[METADATA_KEY])
        change(metadata["model"])
        metadata[CHECKSUM_FIELD] = content_sha256(tensors, metadata)
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})

    rewritten(lambda model: model["config"].update(act_fn="relu"))
    with pytest.raises(ValueError, match=r"another model \(config \(act_fn: relu in the checkpoint, gelu here\)"):
        ProbeTrainer(bridge, [HOOK], data, replace(config, steps=3), tmp_path, progress=False)
    rewritten(lambda model: model.pop("config"))
    with pytest.warns(ModelConfigUnchecked, match="records no model config"):
        assert ProbeTrainer(bridge, [HOOK], data, replace(config, steps=3), tmp_path, progress=False).step == 2


def test_a_checkpoint_resumes_only_with_the_frozen_gate_it_was_written_with(bert, tmp_path):
    """A frozen-gate run pointed at another run's checkpoint took that run's trained gate, silently, in place of the
    frozen one (the transfer test's variant then is the other probe)."""
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=2, batch_size=4, checkpoint_every=1)

    def trainer(directory, frozen_gate=None, seed=0) -> ProbeTrainer:
        return ProbeTrainer(
            bridge, [HOOK], data, replace(config, seed=seed), directory, progress=False, frozen_gate=frozen_gate
        )

    gate_a, gate_b = trainer(None, seed=1).train(), trainer(None, seed=2).train()
    trainer(tmp_path / "plain").train()
    with pytest.raises(ValueError, match="without a frozen gate"):
        trainer(tmp_path / "plain", frozen_gate=gate_a)
    trainer(tmp_path / "frozen", frozen_gate=gate_a).train()
    assert trainer(tmp_path / "frozen", frozen_gate=gate_a).step == 2
    with pytest.raises(ValueError, match="with a frozen gate"):
        trainer(tmp_path / "frozen")
    with pytest.raises(ValueError, match="with another frozen gate"):
        trainer(tmp_path / "frozen", frozen_gate=gate_b)


def test_settings_that_are_not_finite_numbers_are_refused(bert):
    """A NaN temperature made every gate NaN and every prediction class 0, silently (right wherever the target is 0);
    a NaN learning rate or weight trained NaN probes and component gates."""
    nan = float("nan")
    for settings, message in (
        ({"temperature": nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature_decay": math.inf}, "temperature_decay"),
        ({"regulariser_weight": nan}, "regulariser_weight"),
        ({"lr": nan}, "lr"),
    ):
        with pytest.raises(ValueError, match=message):
            ProbeConfig(**settings)
    for settings, message in (({"lr": nan}, "lr"), ({"sparsity": nan}, "sparsity")):
        with pytest.raises(ValueError, match=message):
            ComponentGateConfig(**settings)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GatedProbe(3, 2, ProbeConfig(n_experts=2))(torch.zeros(1, 3), temperature=nan)


def test_a_two_temperature_probe_is_evaluated_at_the_gate_temperature_the_gate_learned_at(bert):
    """With ``two_temperatures`` the gate learns, and training scores the probe, at T = 1 (the experts learn against
    the gate at T); evaluating at T showed a softer gate than the one trained (the reference code evaluates at 1)."""
    bridge, _, subtasks = bert
    data = ProbeData.from_subtasks(subtasks, target="subtask")
    config = ProbeConfig(n_experts=2, steps=3, batch_size=4, temperature=5.0, two_temperatures=True)
    probe = ProbeTrainer(bridge, [HOOK], data, config, progress=False).train()
    assert probe.temperature == 1.0
    activations = read_activations(bridge, [HOOK], data.input_ids, data.positions, data.attention_mask)
    with torch.no_grad():
        expected = torch.softmax(probe.gate(activations), dim=-1)
    torch.testing.assert_close(evaluate_probe(probe, bridge, [HOOK], data).gate, expected)
