"""A user's own subtasks, from pairs, JSONL or a Dataset, run through training and the analyses."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from modmask_lens import SubtaskData, TrainConfig, train_masks
from modmask_lens.analysis import mask_accuracy, pairwise_overlap
from modmask_lens.core.encoding import IGNORE_INDEX, encode_pairs
from modmask_lens.core.pairs import load_pairs
from modmask_lens.masks.objectives import LogitDifference
from modmask_lens.masks.training import MaskTrainer
from modmask_lens.tasks.vocabulary import character_level_tokenizer
from modmask_lens.testing.tiny_models import (
    boot_tiny,
    placeholder_bert_tokenizer,
    placeholder_word_tokenizer,
    tiny_bridge,
)

PAIRS = [(f"w{a} w{b}", f"w{(a + b) % 20 + 5}") for a in range(5, 15) for b in range(5, 9)]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16))
    return boot_tiny(model, tmp_path_factory.mktemp("gpt2"))


def test_pairs_jsonl_and_dataset_give_the_same_subtask(bridge, tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS) + "\n", encoding="utf-8")
    from_pairs = SubtaskData.from_pairs("sums", PAIRS, bridge.tokenizer)
    from_jsonl = SubtaskData.from_pairs("sums", path, bridge.tokenizer)
    from_dataset = SubtaskData.from_pairs(
        "sums",
        Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]}),
        bridge.tokenizer,
    )
    from_lists = SubtaskData.from_pairs("sums", [list(pair) for pair in PAIRS], bridge.tokenizer)  # as JSON gives
    for other in (from_jsonl, from_dataset, from_lists):
        assert torch.equal(other.input_ids, from_pairs.input_ids) and torch.equal(other.labels, from_pairs.labels)
    first = bridge.tokenizer.convert_ids_to_tokens(from_pairs.input_ids[0].tolist())
    assert first == ["w5", "w5", "<eos>", "w15", "<eos>"]  # this tokenizer's SEP token is <eos>
    assert from_pairs.labels[0].tolist() == [
        -100,
        -100,
        -100,
        bridge.tokenizer.convert_tokens_to_ids("w15"),
        bridge.tokenizer.eos_token_id,
    ]


def test_the_analyses_run_on_custom_subtasks(bridge):
    evens = SubtaskData.from_pairs("evens", PAIRS[::2], bridge.tokenizer)
    odds = SubtaskData.from_pairs("odds", PAIRS[1::2], bridge.tokenizer)
    masks = train_masks(bridge, [evens, odds], train_config=TrainConfig(steps=20, batch_size=8, lr=0.1), progress=False)
    binaries = {name: mask.binary() for name, mask in masks.items()}
    overlap = pairwise_overlap(binaries, by="layer_role")
    assert overlap.iou.between(0, 1).all() and set(overlap.role) >= {"W_Q", "W_in", "W_U"}
    accuracy = mask_accuracy(bridge, binaries, {"evens": evens, "odds": odds})
    assert len(accuracy) == 2 * (1 + 2 * 2) and accuracy.accuracy.between(0, 1).all()


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "w5"}\n{"prompt": "w6", "completion": "w7"}\n', "line 1: no 'completion' key"),
        ('{"prompt": "w5", "completion": "w7"}\nnot json\n', "line 2: not valid JSON"),
        ('{"prompt": "w5", "completion": 7}\n{"prompt": "w6", "completion": "w7"}\n', "non-empty string"),
        ('{"prompt": "w5", "completion": "w7"}\n', "at least 2 examples"),
        ("", "at least 2 examples"),
    ],
)
def test_bad_jsonl_gets_a_clear_error(bridge, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        SubtaskData.from_pairs("bad", path, bridge.tokenizer)


def test_jsonl_in_another_encoding_is_refused(bridge, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\u00e9", "completion": "w7"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        SubtaskData.from_pairs("latin", path, bridge.tokenizer)


def test_a_model_without_tokenizer_and_a_dataset_without_columns_are_refused(bridge):
    with pytest.raises(ValueError, match="no tokenizer"):
        SubtaskData.from_pairs("x", PAIRS, None)
    with pytest.raises(ValueError, match="'completion'"):
        SubtaskData.from_pairs("x", Dataset.from_dict({"prompt": ["a", "b"]}), bridge.tokenizer)


def test_a_foil_that_starts_with_its_answers_first_token_is_refused():
    digits = character_level_tokenizer("0123456789+")
    data = SubtaskData.from_pairs("sums", [("1+11", "12"), ("2+2", "4")], digits)
    with pytest.raises(ValueError, match=r"examples \[0\] .*foil '13'.*compares first tokens only"):
        data.with_foils(["13", "5"], digits)  # "12" against "13" compares "1" with "1": a difference of 0 always
    with_foils = data.with_foils(["22", "5"], digits)
    assert with_foils.foils[with_foils.foils != IGNORE_INDEX].tolist() == digits.convert_tokens_to_ids(["2", "5"])


@pytest.mark.parametrize("foil", [99, -1])
def test_foils_outside_the_output_vocabulary_are_refused_before_training(foil):
    # 99 indexed past the 40 logits at the first step; -1 was clamped to token 0 and compared with it silently
    bridge = tiny_bridge()
    ids, labels = torch.tensor([[1, 2, 3], [5, 6, 7]]), torch.tensor([[-100, -100, 3], [-100, -100, 7]])
    SubtaskData("ok", ids, labels, foils=torch.tensor([[-100, -100, 39], [-100, -100, 0]])).check_fits(bridge)
    data = SubtaskData("bad", ids, labels, foils=torch.tensor([[-100, -100, foil], [-100, -100, 9]]))
    with pytest.raises(ValueError, match=r"'bad' has foils outside the model's output vocabulary \[0, 40\)"):
        MaskTrainer(bridge, [data], objective=LogitDifference())


def test_a_foil_away_from_its_answer_is_refused_not_compared_with_token_0():
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    labels = torch.tensor([[-100, -100, 3, -100], [-100, -100, 7, -100]])
    at_answers = torch.tensor([[-100, -100, 9, -100], [-100, -100, 11, -100]])
    assert SubtaskData("ok", ids, labels, foils=at_answers).foils.equal(at_answers)
    # one position late: batches end at the last answer, so example 0's foil was cut off and the example counted as a
    # win; one position early, the answer read there (-100, clamped) was token 0
    for late_or_early in (3, 1):
        foils = at_answers.clone()
        foils[0, 2], foils[0, late_or_early] = IGNORE_INDEX, 9
        with pytest.raises(ValueError, match=f"example 0 has a foil at position {late_or_early}, where its label"):
            SubtaskData("bad", ids, labels, foils=foils)


def test_words_a_bert_tokenizer_does_not_know_are_refused_not_read_as_unk():
    bert_tokenizer = placeholder_bert_tokenizer(40)
    with pytest.raises(ValueError, match=r"does not know: \['zebra', 'w99'\]"):
        SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8 zebra", "w99")], bert_tokenizer)
    with pytest.raises(ValueError, match=r"does not know: \['zebra'\]"):
        SubtaskData.from_masked_sentences("masked", [("w5 [MASK]", "zebra"), ("w8 [MASK]", "w9")], bert_tokenizer)
    known = SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8 w9", "w10")], bert_tokenizer)
    assert known.labels[known.labels != IGNORE_INDEX].tolist() == [7, 3, 10, 3]  # each answer, then [SEP]


@pytest.mark.parametrize("as_dataset", [True, False])
def test_a_part_is_refused_for_a_source_without_parts_not_ignored(as_dataset):
    rows = {"prompt": ["1+1", "2+2", "3+3"], "completion": ["2", "4", "6"], "part": ["train", "train", "test"]}
    source = Dataset.from_dict(rows) if as_dataset else list(zip(rows["prompt"], rows["completion"]))
    with pytest.raises(ValueError, match=r"part='train' picks rows of a JSONL file .* select the rows yourself"):
        load_pairs(source, part="train")  # would give all 3 rows, the test row among them
    assert load_pairs(source) == (rows["prompt"], rows["completion"])


@pytest.mark.parametrize(
    "make_tokenizer", [lambda: placeholder_bert_tokenizer(40), lambda: placeholder_word_tokenizer(40)]
)
def test_foils_the_tokenizer_does_not_know_are_refused_not_read_as_unk(make_tokenizer):
    tokenizer = make_tokenizer()
    data = SubtaskData.from_pairs("pairs", [("w5 w6", "w7"), ("w8 w9", "w10")], tokenizer)
    with pytest.raises(ValueError, match=r"does not know: \['zebra'\]"):
        data.with_foils(["zebra", "w11"], tokenizer)  # was compared with the unknown token's logit
    known = data.with_foils(["w12", "w11"], tokenizer)
    assert known.foils[known.foils != IGNORE_INDEX].tolist() == [12, 11]


@pytest.mark.parametrize(
    "make_tokenizer", [lambda: placeholder_bert_tokenizer(40), lambda: placeholder_word_tokenizer(40)]
)
def test_texts_with_words_the_tokenizer_does_not_know_are_refused_not_read_as_unk(make_tokenizer):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match=r"does not know: \['zebra'\]"):
        SubtaskData.from_texts("texts", ["w5 zebra", "w6 w7"], tokenizer)  # zebra was read as the unknown token
    known = SubtaskData.from_texts("texts", ["w5 w8", "w6 w7"], tokenizer)
    real = known.input_ids[known.attention_mask.bool()].tolist()
    assert [token for token in real if token not in tokenizer.all_special_ids] == [5, 8, 6, 7]


def test_pairs_given_as_an_iterator_are_all_kept():
    prompts, completions = ["1+1", "2+2", "3+3"], ["2", "4", "6"]
    assert load_pairs(zip(prompts, completions)) == (prompts, completions)


@pytest.mark.parametrize("count", [0, -3])
def test_a_count_below_one_is_refused_not_read_as_all_but_the_last(count):
    rows = torch.arange(10).view(10, 1).repeat(1, 2)
    data = SubtaskData("counting", rows, rows)
    for keep in (data.head, data.evenly_spaced):
        with pytest.raises(ValueError, match=f"keep at least 1 example, got a count of {count}"):
            keep(count)
    assert data.head(3).input_ids[:, 0].tolist() == [0, 1, 2] and len(data.head(20)) == 10


def roberta_like_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace words ``w5 .. w19`` in RoBERTa's template: ``<s> a </s>``, pairs ``<s> a </s> </s> b </s>``."""
    words = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + [f"w{index}" for index in range(5, 20)]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    special = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "pad_token": "<pad>"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", mask_token="<mask>", **special)


@pytest.mark.parametrize("make_tokenizer", [lambda: placeholder_bert_tokenizer(40), roberta_like_tokenizer])
def test_pair_templates_score_the_completion_and_closing_token_only(make_tokenizer):
    tokenizer = make_tokenizer()
    examples = encode_pairs(tokenizer, ["w5 w6", "w7"], ["w8", "w9 w10"])
    closing = tokenizer.sep_token_id
    scored = [row[row != IGNORE_INDEX].tolist() for row in examples.labels]
    assert scored == [[8, closing], [9, 10, closing]]
    starts = [row.tolist().index(first) for row, first in zip(examples.input_ids, (8, 9))]
    assert examples.prompt_lengths.tolist() == starts


@pytest.mark.parametrize("make_tokenizer", [lambda: placeholder_bert_tokenizer(40), roberta_like_tokenizer])
def test_a_completion_of_no_tokens_is_refused_in_a_pair_template_not_read_from_the_prompt(make_tokenizer):
    # [CLS] w7 [SEP] [SEP]: no completion to find, so the last run of words (the prompt w7) was scored as one
    with pytest.raises(ValueError, match="pair 2 .* has a completion of no tokens"):
        encode_pairs(make_tokenizer(), ["w5 w6", "w7"], ["w8", " "])


@pytest.mark.parametrize(
    "make_tokenizer", [lambda: placeholder_bert_tokenizer(40), lambda: placeholder_word_tokenizer(40)]
)
def test_a_text_that_writes_the_unknown_token_still_has_its_unknown_words_refused(make_tokenizer):
    """A text holding the literal unknown token (``[UNK]``, ``<unk>``) was passed over whole, so a word the tokenizer
    does not know beside it was read as the unknown token without a word; the literal itself is meant."""
    tokenizer = make_tokenizer()
    literal = tokenizer.unk_token
    with pytest.raises(ValueError, match=r"1 text\(s\) hold words the tokenizer does not know: \['zebra'\]"):
        SubtaskData.from_texts("texts", [f"w5 {literal} zebra", "w6 w7"], tokenizer)
    with pytest.raises(ValueError, match=r"does not know: \['zebra'\]"):
        SubtaskData.from_pairs("pairs", [(f"w5 {literal}", "zebra"), ("w8 w9", "w10")], tokenizer)
    known = SubtaskData.from_texts("texts", [f"w5 {literal} w8", "w6 w7"], tokenizer)
    assert known.input_ids[0, known.attention_mask[0].bool()].tolist().count(tokenizer.unk_token_id) == 1
