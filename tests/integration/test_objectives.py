"""Objectives: each built-in's value against an independent computation, the once-per-example reference of the loss
constraint, encoder data with attention masks, and training, saving and resuming under every objective."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import modmask_lens as mm
from modmask_lens import analysis
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.masks.objectives import model_outputs
from modmask_lens.testing.tiny_models import (
    TINY_HF_SIZES,
    boot_tiny,
    placeholder_bert_tokenizer,
    placeholder_word_tokenizer,
    tiny_bridge,
)

QUICK = mm.TrainConfig(steps=4, batch_size=8, n_samples=2)
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def causal():
    """The tiny native model and a causal subtask with two answer tokens per example."""
    bridge = tiny_bridge()
    input_ids = torch.randint(5, 40, (16, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(6) >= 4, input_ids, IGNORE_INDEX)
    return bridge, mm.SubtaskData("copy", input_ids, labels)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    model = BertForMaskedLM(BertConfig(**TINY_HF_SIZES))
    return boot_tiny(model, tmp_path_factory.mktemp("bert"), tokenizer=placeholder_bert_tokenizer(40))


def random_mask(bridge, seed: int = 0) -> mm.BinaryMask:
    masks = mm.MaskSet.for_bridge(bridge, mm.MaskConfig(granularity="head"), name="random")
    generator = torch.Generator().manual_seed(seed)
    return masks.binary_from(
        {name: torch.rand(logit.shape, generator=generator) > 0.5 for name, logit in masks.logits.items()}
    )


def masked_logits(bridge, mask, input_ids, **kwargs):
    with torch.no_grad(), mm.masked(bridge, mask):
        return bridge(input_ids, **kwargs)


def test_kl_divergence_matches_torch_kl_div(causal):
    bridge, data = causal
    mask = random_mask(bridge)
    batch = data.examples(torch.arange(len(data)))
    full = model_outputs(bridge, batch)
    objective = mm.KLDivergence()
    with torch.no_grad():
        reference = objective.reference(full, batch)
        score = objective.score(mm.Outputs(masked_logits(bridge, mask, batch.input_ids)), reference, batch)
    full_log_probs = full.logits[:, 3:5].log_softmax(-1)  # positions 3, 4 predict the answers at 4, 5
    masked_log_probs = masked_logits(bridge, mask, batch.input_ids)[:, 3:5].log_softmax(-1)
    expected = torch.nn.functional.kl_div(masked_log_probs, full_log_probs, log_target=True, reduction="sum")
    assert objective.normaliser(batch) == 2 * len(data)
    assert float(score.loss_sum) == pytest.approx(float(expected), rel=1e-5)
    agreement = (full_log_probs.argmax(-1) == masked_log_probs.argmax(-1)).float().mean(dim=1).sum()
    assert score.metric_sum == pytest.approx(float(agreement))
    assert mm.objective_metric(bridge, data, objective) == pytest.approx(1.0)  # the full model agrees with itself


def test_logit_difference_matches_gathered_logits(causal):
    bridge, data = causal
    foils = (data.input_ids[:, 4] + 1).clamp(max=39)
    tokenizer_free = mm.SubtaskData(data.name, data.input_ids, data.labels, foils=torch.full_like(data.labels, -100))
    tokenizer_free.foils[:, 4] = foils
    batch = tokenizer_free.examples(torch.arange(len(data)))
    logits = masked_logits(bridge, random_mask(bridge), batch.input_ids)
    score = mm.LogitDifference().score(mm.Outputs(logits), None, batch)
    rows = torch.arange(len(data))
    difference = logits[rows, 3, data.input_ids[:, 4]] - logits[rows, 3, foils]
    assert float(score.loss_sum) == pytest.approx(float(-difference.sum()), rel=1e-5)
    assert score.metric_sum == float((difference > 0).sum())


def test_with_foils_places_each_foil_at_the_first_answer_token():
    tokenizer = placeholder_word_tokenizer(40)
    data = mm.SubtaskData.from_pairs("pairs", [("w5 w6", "w7 w8"), ("w9", "w10")], tokenizer)
    with_foils = data.with_foils(["w11", "w12 w13"], tokenizer)
    first = (data.labels[:, 1:] != IGNORE_INDEX).int().argmax(dim=1) + 1
    assert with_foils.foils[torch.arange(2), first].tolist() == tokenizer.convert_tokens_to_ids(["w11", "w12"])
    assert int((with_foils.foils != IGNORE_INDEX).sum()) == 2


def test_attention_mask_keeps_real_tokens_states_as_if_unpadded(bert):
    data = mm.SubtaskData.from_texts("texts", ["w5 w6 w7 w8 w9 w10", "w11 w12"], bert.tokenizer)
    assert data.input_ids[1].tolist()[:4] == [2, 11, 12, 3]  # [CLS] w11 w12 [SEP], then padding
    assert data.attention_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    padded = model_outputs(bert, data.examples(torch.arange(2)), (HOOK,)).activations[HOOK][1, :4]
    alone = model_outputs(bert, data.examples(torch.tensor([1])), (HOOK,)).activations[HOOK][0]
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-5)
    unmasked = bert.run_with_cache(data.input_ids[1:])[1][HOOK][0, :4]
    assert float((unmasked - alone).abs().max()) > 1e-3  # what padding does without the mask


def test_hidden_state_pools_over_the_attention_mask(bert):
    data = mm.SubtaskData.from_texts("texts", ["w5 w6 w7 w8 w9 w10", "w11 w12"], bert.tokenizer)
    mask, objective = random_mask(bert), mm.HiddenState(HOOK)
    lengths = [8, 4]  # [CLS] + words + [SEP]; the second row is padded to 8

    def embeddings(binary=None):
        """Mean of each sentence's own tokens, each sentence run alone (no padding at all)."""
        rows = []
        for row, length in enumerate(lengths):
            tokens = data.input_ids[row : row + 1, :length]
            with torch.no_grad():
                if binary is None:
                    _, cache = bert.run_with_cache(tokens)
                else:
                    with mm.masked(bert, binary):
                        _, cache = bert.run_with_cache(tokens)
            rows.append(cache[HOOK][0].mean(0))
        return torch.stack(rows)

    full, kept = embeddings(), embeddings(mask)
    expected = torch.nn.functional.cosine_similarity(kept, full, dim=-1).mean()
    assert mm.objective_metric(bert, data, objective, mask) == pytest.approx(float(expected), rel=1e-5)
    assert mm.objective_metric(bert, data, objective) == pytest.approx(1.0, rel=1e-6)


def test_hook_reading_objectives_read_an_attention_pattern_at_each_query_position(causal):
    """``hook_pattern`` is [batch, head, query, key]: pooled or indexed as if axis 1 held the positions, a model with
    as many heads as positions was read per head without a word."""
    bridge, data = causal
    name, positions = "blocks.0.attn.hook_pattern", bridge.cfg.n_heads
    input_ids = data.input_ids[:3, :positions]
    batch = mm.Batch(input_ids, data.labels[:3, :positions], attention_mask=torch.ones_like(input_ids))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(input_ids, names_filter=[name])
        outputs = model_outputs(bridge, batch, [name])
    rows = cache[name].transpose(1, 2).flatten(2)  # [batch, query, head * key]: every head's attention from a query
    torch.testing.assert_close(mm.HiddenState(name).features(outputs, batch), rows.mean(1))
    torch.testing.assert_close(mm.HiddenState(name, pool="none").features(outputs, batch), rows)
    probe = mm.LinearProbe(name, torch.eye(rows.shape[-1]), torch.zeros(rows.shape[-1]), pool="first")
    torch.testing.assert_close(probe.probe_logits(outputs, batch), rows[:, 0])


def test_masked_lm_labels_sit_at_the_mask_positions(bert):
    data = mm.SubtaskData.from_masked_sentences(
        "mlm", [("w5 [MASK] w7", "w6"), ("w8 w9 [MASK]", "w10")], bert.tokenizer
    )
    assert data.label_shift == 0
    assert data.labels.tolist() == [[-100, -100, 6, -100, -100], [-100, -100, -100, 10, -100]]
    batch = data.examples(torch.arange(2))
    logits = model_outputs(bert, batch).logits
    score = mm.AnswerCrossEntropy().score(mm.Outputs(logits), None, batch)
    expected = torch.nn.functional.cross_entropy(logits[[0, 1], [2, 3]], torch.tensor([6, 10]), reduction="sum")
    assert float(score.loss_sum) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match=r"1 \[MASK\] token\(s\) but its answer 'w6 w7' has 2"):
        mm.SubtaskData.from_masked_sentences("bad", [("w5 [MASK]", "w6 w7"), ("w8 [MASK]", "w9")], bert.tokenizer)


def test_exact_match_scores_masked_lm_answers_at_their_positions_with_the_attention_mask(bert):
    """exact_match runs encoder data with its attention mask and scores masked-LM answers at their own positions, as
    objective_metric does (it gave 0.0 here, where the model gets every answer, before it did)."""
    sentences = ["w5 [MASK] w7", "w8 w9 [MASK] w11 w12 w13 w14", "[MASK] w20", "w30 w31 w32 [MASK] w33"]
    answers = []
    for sentence in sentences:  # each sentence alone, unpadded: the model's own prediction at its [MASK]
        tokens = bert.tokenizer(sentence, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            predicted = bert(tokens)[0, tokens[0] == bert.tokenizer.mask_token_id].argmax(-1)
        answers.append(bert.tokenizer.convert_ids_to_tokens(predicted.tolist())[0])
    data = mm.SubtaskData.from_masked_sentences("mlm", list(zip(sentences, answers)), bert.tokenizer)
    assert analysis.exact_match(bert, data) == 1.0
    mask = random_mask(bert)
    assert analysis.exact_match(bert, data, mask) == mm.objective_metric(bert, data, mm.AnswerCrossEntropy(), mask)


def test_pairs_follow_the_bert_template(bert):
    data = mm.SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8", "w9 w10")], bert.tokenizer)
    assert data.input_ids.tolist() == [[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 10, 3]]
    assert data.labels.tolist() == [[-100, -100, -100, -100, 7, 3], [-100, -100, -100, 9, 10, 3]]
    assert data.attention_mask.tolist() == [[1] * 6, [1] * 6]


def test_answers_a_bidirectional_model_sees_in_its_input_are_refused_before_any_forward(bert, causal):
    pairs = mm.SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8", "w9 w10")], bert.tokenizer)
    # The logits at position t score the token at t + 1, which BERT attends to from t.
    with pytest.raises(ValueError, match="sees the answer in its input.*from_masked_sentences"):
        analysis.exact_match(bert, pairs)
    with pytest.raises(ValueError, match="sees the answer in its input"):
        mm.train_masks(bert, pairs, train_config=mm.TrainConfig(steps=1, batch_size=2, n_samples=1), progress=False)
    # Objectives that match the full model's own activations or outputs predict no label: the same data trains.
    for objective in [mm.HiddenState("blocks.1.hook_resid_post"), mm.KLDivergence()]:
        config = mm.TrainConfig(steps=1, batch_size=2, n_samples=1)
        mm.train_masks(bert, pairs, train_config=config, progress=False, objective=objective)
        assert 0 < mm.objective_metric(bert, pairs, objective) <= 1.0 + 1e-6
    causal_bridge, causal_data = causal  # the same scoring on a causal model reads no answer ahead
    assert causal_data.labels[causal_data.labels != -100].equal(causal_data.input_ids[causal_data.labels != -100])
    causal_data.check_fits(causal_bridge)


def test_mask_accuracy_takes_the_data_its_objective_takes(bert):
    """mask_accuracy checks the data as the objective reads it: answers a bidirectional model sees in its input are
    fine for an objective that predicts no label (it refused them, which objective_metric accepts), and data an
    objective cannot read is refused before any subtask is evaluated."""
    pairs = mm.SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8", "w9 w10")], bert.tokenizer)
    mask = random_mask(bert)
    table = analysis.mask_accuracy(bert, {"pairs": mask}, {"pairs": pairs}, objective=mm.KLDivergence())
    answer_positions = [[3, 4], [2, 3, 4]]  # the logits that score each example's answer tokens (and [SEP])
    with torch.no_grad():
        full_predictions = bert(pairs.input_ids, attention_mask=pairs.attention_mask).argmax(-1)

    def agreement(binary):
        with torch.no_grad(), mm.masked(bert, binary):
            predictions = bert(pairs.input_ids, attention_mask=pairs.attention_mask).argmax(-1)
        return sum(
            float((predictions[row, positions] == full_predictions[row, positions]).float().mean())
            for row, positions in enumerate(answer_positions)
        ) / len(pairs)

    assert table["condition"].tolist() == ["full", "mask", "inverse"]
    assert table["accuracy"].tolist() == pytest.approx([1.0, agreement(mask), agreement(~mask)])
    with pytest.raises(ValueError, match="sees the answer in its input"):
        analysis.mask_accuracy(bert, {"pairs": mask}, {"pairs": pairs})

    texts = mm.SubtaskData.from_texts("texts", ["w5 w6", "w7"], bert.tokenizer, classes=[0, 1])
    probe = mm.LinearProbe(HOOK, torch.ones(2, 32), torch.zeros(2))
    forwards = []
    counting = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(ValueError, match="no classes for the probe"):
            analysis.mask_accuracy(bert, {"m": mask}, {"texts": texts, "pairs": pairs}, objective=probe)
    finally:
        counting.remove()
    assert not forwards


class CountingCrossEntropy(mm.AnswerCrossEntropy):
    """Answer cross-entropy that records how many examples each reference computation covered."""

    def __init__(self):
        object.__setattr__(self, "referenced", [])

    def reference(self, full, batch):
        self.referenced.append(len(batch))
        return super().reference(full, batch)


def test_loss_constraint_runs_the_full_model_once_per_example(causal):
    bridge, data = causal
    objective = CountingCrossEntropy()
    config = mm.TrainConfig(steps=12, batch_size=8, n_samples=2, max_loss_increase=0.02)
    mm.train_masks(bridge, data, train_config=config, progress=False, objective=objective)
    assert sum(objective.referenced) == len(data)  # 12 steps x 8 draws, yet each of 16 examples computed once
    assert len(objective.referenced) < 12


def test_cached_reference_equals_the_full_model_on_the_batch(causal):
    bridge, data = causal
    batch = data.examples(torch.arange(len(data)))
    with torch.no_grad():
        full = mm.AnswerCrossEntropy().reference(model_outputs(bridge, batch), batch)["loss"]
        whole = mm.score_answers(bridge(batch.input_ids), batch.labels).loss_sum
    assert float(full.sum()) == pytest.approx(float(whole), rel=1e-6)


@pytest.mark.parametrize(
    "objective, metric",
    [
        (mm.KLDivergence(positions="all"), "agreement"),
        (mm.HiddenState(HOOK, distance="mse", pool="none"), "cosine"),
        (mm.LinearProbe(HOOK, torch.randn(2, 32, generator=torch.Generator().manual_seed(0)), torch.zeros(2)), None),
    ],
)
def test_training_logs_saves_and_resumes_under_the_objective(bert, tmp_path, objective, metric):
    texts = [" ".join(f"w{5 + (index * 7 + offset) % 35}" for offset in range(2 + index % 5)) for index in range(12)]
    data = mm.SubtaskData.from_texts("texts", texts, bert.tokenizer, classes=[index % 2 for index in range(12)])
    metric = metric or objective.metric
    config = mm.TrainConfig(steps=10, batch_size=8, n_samples=2, checkpoint_every=5)
    masks = mm.train_masks(
        bert, data, mm.MaskConfig(granularity="head"), config, tmp_path / "run", progress=False, objective=objective
    )["texts"]
    last = masks.history[-1]
    assert metric in last and "accuracy" not in last and last["faithfulness"] is not None
    assert masks.objective == objective.to_dict()
    loaded = mm.load_masks(mm.save_masks(masks, tmp_path / "texts.safetensors"), bert)
    assert loaded.objective == objective.to_dict()
    resumed = mm.train_masks(
        bert, data, mm.MaskConfig(granularity="head"), config, tmp_path / "run", progress=False, objective=objective
    )["texts"]
    assert all(torch.equal(resumed.logits[name], masks.logits[name]) for name in masks.logits)
    with pytest.raises(ValueError, match="objective"):
        mm.train_masks(bert, data, mm.MaskConfig(granularity="head"), config, tmp_path / "run", progress=False)


def test_custom_objective_trains_and_names_a_wrong_shape(causal):
    bridge, data = causal

    def last_answer(masked, full, batch):
        target = full.logits[:, -2].argmax(-1)
        losses = torch.nn.functional.cross_entropy(masked.logits[:, -2], target, reduction="none")
        return losses, (masked.logits[:, -2].argmax(-1) == target).float()

    masks = mm.train_masks(
        bridge, data, train_config=QUICK, progress=False, objective=mm.CustomObjective(last_answer, metric_name="top1")
    )
    assert masks["copy"].history[-1]["top1"] == pytest.approx(masks["copy"].history[-1]["top1"])
    with pytest.raises(ValueError, match=r"return one of each per example"):
        mm.train_masks(
            bridge,
            data,
            train_config=QUICK,
            progress=False,
            objective=mm.CustomObjective(
                lambda masked, full, batch: (masked.logits.sum(), masked.logits.sum()), label="whole_sum"
            ),
        )


def test_objectives_refuse_data_without_what_they_need(bert, causal):
    bridge, data = causal
    texts = mm.SubtaskData.from_texts("texts", ["w5 w6", "w7"], bert.tokenizer)
    with pytest.raises(ValueError, match="no answer tokens"):
        mm.train_masks(bert, texts, train_config=QUICK, progress=False)
    with pytest.raises(ValueError, match="with_foils"):
        mm.train_masks(bridge, data, train_config=QUICK, progress=False, objective=mm.LogitDifference())
    with pytest.raises(ValueError, match="classes"):
        mm.train_masks(
            bert,
            texts,
            train_config=QUICK,
            progress=False,
            objective=mm.LinearProbe(HOOK, torch.ones(2, 32), torch.ones(2)),
        )
