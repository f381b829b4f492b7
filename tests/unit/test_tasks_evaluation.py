"""Tokenized pairs follow the contract of the mask core, and both exact-match methods score them correctly."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from modmask_lens.core.encoding import IGNORE_INDEX, encode_pairs
from modmask_lens.tasks import evaluation
from modmask_lens.tasks.evaluation import (
    accuracy_by_subtask,
    exact_match_correct,
    greedy_complete,
    greedy_correct,
    teacher_forced_correct,
)
from modmask_lens.tasks.vocabulary import character_level_tokenizer, word_level_tokenizer

torch.set_num_threads(1)
DIGITS = character_level_tokenizer("0123456789+")


class BigramOracle(torch.nn.Module):
    """Predicts the next token from the current one with a fixed table; answers like a TransformerBridge."""

    def __init__(self, next_token: dict[int, int], vocab_size: int):
        super().__init__()
        table = torch.full((vocab_size, vocab_size), -10.0)
        for current, following in next_token.items():
            table[current, following] = 10.0
        self.table = table

    def forward(self, input_ids, return_type="logits", past_key_values=None, use_cache=False):
        logits = self.table[input_ids]
        return (logits, None) if return_type == "logits_and_cache" else logits


def test_pairs_are_prompt_sep_completion_eos_right_padded():
    examples = encode_pairs(DIGITS, ["1+2", "10+20"], ["3", "30"])
    one, two, three, zero, plus = (DIGITS.convert_tokens_to_ids(c) for c in "1230+")
    sep, eos, pad = DIGITS.sep_token_id, DIGITS.eos_token_id, DIGITS.pad_token_id
    assert examples.input_ids.tolist() == [
        [one, plus, two, sep, three, eos, pad, pad, pad],
        [one, zero, plus, two, zero, sep, three, zero, eos],
    ]
    ignore = IGNORE_INDEX
    assert examples.labels.tolist() == [
        [ignore] * 4 + [three, eos] + [ignore] * 3,
        [ignore] * 6 + [three, zero, eos],
    ]
    assert examples.prompt_lengths.tolist() == [4, 6]


def test_max_len_pads_to_width_and_rejects_longer_pairs():
    assert encode_pairs(DIGITS, ["1+2"], ["3"], max_len=10).input_ids.shape == (1, 10)
    with pytest.raises(ValueError, match="raise max_len"):
        encode_pairs(DIGITS, ["11+22"], ["33"], max_len=5)


def test_an_empty_prompt_without_a_separator_is_refused_not_left_unscored():
    tokenizer = character_level_tokenizer("0123456789+")
    tokenizer.sep_token = None  # as GPT-2's: the completion would start at position 0, which nothing predicts
    with pytest.raises(ValueError, match="pair 2 .*give every pair a prompt"):
        encode_pairs(tokenizer, ["1+2", "", ""], ["3", "45", "6"])


def test_an_empty_prompt_after_which_a_separator_comes_scores_every_answer_token():
    examples = encode_pairs(DIGITS, ["", "1+2"], ["45", "3"])
    four, five, eos = (DIGITS.convert_tokens_to_ids(c) for c in ("4", "5", DIGITS.eos_token))
    assert examples.input_ids[0, :4].tolist() == [DIGITS.sep_token_id, four, five, eos]
    assert examples.labels[0, 1:4].tolist() == [four, five, eos]


def test_prepend_bos_starts_every_pair_with_bos_as_to_tokens_does():
    """Models pretrained with a BOS read one at position 0 (TransformerLens's to_tokens prepends it)."""
    tokenizer = character_level_tokenizer("0123456789+")
    tokenizer.sep_token = None  # as GPT-2's
    with pytest.raises(ValueError, match="prepend_bos: the tokenizer has no BOS token"):
        encode_pairs(tokenizer, ["1+2"], ["3"], prepend_bos=True)
    tokenizer.bos_token = tokenizer.eos_token  # GPT-2's BOS is its EOS token
    examples = encode_pairs(tokenizer, ["1+2", ""], ["3", "45"], prepend_bos=True)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    whole = [
        tokenizer("1+23", add_special_tokens=False)["input_ids"],
        tokenizer("45", add_special_tokens=False)["input_ids"],
    ]
    assert examples.input_ids.tolist() == [[bos, *whole[0], eos], [bos, *whole[1], eos, pad, pad]]
    assert examples.prompt_lengths.tolist() == [4, 1]  # BOS and prompt: greedy decoding starts after them
    ignore = IGNORE_INDEX
    assert examples.labels.tolist() == [[ignore] * 4 + whole[0][3:] + [eos], [ignore, *whole[1], eos, ignore, ignore]]


def test_word_level_tokenizer_maps_each_word_to_one_id():
    tokenizer = word_level_tokenizer(["jump", "twice", "I_JUMP"])
    examples = encode_pairs(tokenizer, ["jump twice"], ["I_JUMP I_JUMP"])
    assert examples.input_ids.shape == (1, 6)
    assert tokenizer.decode(examples.input_ids[0, 3:5]) == "I_JUMP I_JUMP"


def test_both_methods_score_an_oracle_exactly():
    sep, eos = DIGITS.sep_token_id, DIGITS.eos_token_id
    one, two = DIGITS.convert_tokens_to_ids("1"), DIGITS.convert_tokens_to_ids("2")
    oracle = BigramOracle({sep: one, one: two, two: eos}, len(DIGITS))  # always answers "12"
    examples = encode_pairs(DIGITS, ["3", "44", "5", "6"], ["12", "12", "21", "1"])
    expected = [True, True, False, False]
    assert greedy_correct(oracle, examples, batch_size=3).tolist() == expected
    assert teacher_forced_correct(oracle, examples, batch_size=3).tolist() == expected
    assert exact_match_correct(oracle, examples, "teacher_forcing").tolist() == expected


def test_batched_greedy_matches_hugging_face_generate_row_by_row():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(DIGITS), n_positions=32, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    examples = encode_pairs(DIGITS, ["1+2", "10+20", "3+4", "99+1"], ["3", "30", "7", "100"])
    generated = greedy_complete(model, examples, max_new_tokens=6)
    for row in range(len(examples)):
        prompt = examples.input_ids[row : row + 1, : examples.prompt_lengths[row]]
        reference = model.generate(
            prompt,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=DIGITS.eos_token_id,
            pad_token_id=DIGITS.pad_token_id,
        )[0]
        assert generated[row, : len(reference)].tolist() == reference.tolist()


def test_greedy_and_teacher_forcing_agree_on_a_random_model():
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(DIGITS), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    prompts = [f"{a}+{b}" for a in range(10) for b in range(10)]
    examples = encode_pairs(DIGITS, prompts, [str(a + b) for a in range(10) for b in range(10)])
    assert torch.equal(greedy_correct(model, examples), teacher_forced_correct(model, examples))


def test_accuracy_by_subtask_counts_an_example_in_each_of_its_labels():
    frame = accuracy_by_subtask(torch.tensor([True, False, True]), [["jump", "walk"], ["jump"], []])
    rows = frame.set_index("subtask")
    assert rows.loc["all", "accuracy"] == pytest.approx(2 / 3)
    assert rows.loc["jump", "examples"] == 2 and rows.loc["jump", "correct"] == 1
    assert rows.loc["walk", "accuracy"] == 1.0


def test_accuracy_by_subtask_counts_an_example_once_in_a_label_it_lists_twice():
    """An expression's operations, say, list a label once per use; it counted the example once per listing (add: 3
    examples, 2 correct)."""
    frame = accuracy_by_subtask(torch.tensor([True, False, False]), [["add", "add", "mul"], ["add"], ["mul"]])
    rows = frame.set_index("subtask")
    assert rows.loc["add", ["examples", "correct"]].tolist() == [2, 1]
    assert rows.loc["mul", ["examples", "correct"]].tolist() == [2, 1]


@pytest.mark.parametrize("method", ["greedy", "teacher_forcing"])
@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_1_is_refused_not_read_as_no_example(method, batch_size):
    """At -1 no batch ran: both methods returned no verdict for the 2 examples (accuracy 'all': 0 examples, NaN);
    at 0 range() raised 'arg 3 must not be zero'."""
    examples = encode_pairs(DIGITS, ["1+2", "3+4"], ["3", "7"])
    assert len(exact_match_correct(_tiny_gpt2(0), examples, method, batch_size=1)) == 2
    with pytest.raises(ValueError, match=f"batch_size {batch_size} must be >= 1"):
        exact_match_correct(_tiny_gpt2(0), examples, method, batch_size=batch_size)


def _tiny_gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(DIGITS), n_positions=32, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config).eval()


def _uncached_reference(model, examples, max_new_tokens):
    """Greedy decoding written out independently: one full forward per new token, one row at a time."""
    rows = []
    for row in range(len(examples)):
        generated = examples.input_ids[row, : examples.prompt_lengths[row]].tolist()
        for _ in range(max_new_tokens):
            with torch.no_grad():
                generated.append(int(model(torch.tensor([generated])).logits[0, -1].argmax()))
            if generated[-1] == DIGITS.eos_token_id:
                break
        rows.append(generated)
    return rows


def test_greedy_decoding_stays_right_when_the_kv_cache_is_ignored(monkeypatch):
    # What TransformerLens 4.3's bridge does under transformers 5.24: the cache is dropped, so each step sees only
    # the newest token. The cached result must be caught and decoded again without the cache.
    model = _tiny_gpt2(seed=3)
    examples = encode_pairs(DIGITS, ["1+2", "10+20", "3+4", "99+1"], ["3", "30", "7", "100"])
    expected = _uncached_reference(model, examples, max_new_tokens=6)

    def cache_dropped(model, input_ids, cache):
        return model(input_ids=input_ids).logits, None

    monkeypatch.setattr(evaluation, "step_with_cache", cache_dropped)
    with pytest.warns(evaluation.KvCacheMismatch, match="transformers .* transformer-lens"):
        generated = greedy_complete(model, examples, max_new_tokens=6)
    assert [generated[row, : len(reference)].tolist() for row, reference in enumerate(expected)] == expected


def test_a_working_cache_passes_its_check_without_a_warning(recwarn):
    model = _tiny_gpt2(seed=4)
    examples = encode_pairs(DIGITS, ["1+2", "10+20", "3+4"], ["3", "30", "7"])
    generated = greedy_complete(model, examples, max_new_tokens=6)
    assert evaluation.is_greedy_continuation(model, examples, generated)
    assert not [warning for warning in recwarn if issubclass(warning.category, evaluation.KvCacheMismatch)]


def test_the_check_rejects_a_continuation_with_one_wrong_token():
    model = _tiny_gpt2(seed=5)
    examples = encode_pairs(DIGITS, ["1+2", "10+20"], ["3", "30"])
    generated = greedy_complete(model, examples, max_new_tokens=4)
    position = int(examples.prompt_lengths[1])  # the first generated token of row 1
    wrong = generated.clone()
    wrong[1, position] = (wrong[1, position] + 1) % len(DIGITS)
    assert not evaluation.is_greedy_continuation(model, examples, wrong)


class DroppingOracle(BigramOracle):
    """The bigram oracle with dropout on its logits: right in eval mode, about half its verdicts wrong in training."""

    def __init__(self, next_token: dict[int, int], vocab_size: int):
        super().__init__(next_token, vocab_size)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, input_ids, return_type="logits", past_key_values=None, use_cache=False):
        logits = self.dropout(self.table[input_ids])
        return (logits, None) if return_type == "logits_and_cache" else logits


def test_a_model_left_in_training_mode_is_evaluated_without_dropout(recwarn):
    """With dropout on, 37 of 100 greedy continuations of a tiny GPT-2 differed from its own and the KV-cache check
    warned KvCacheMismatch, blaming the installed versions; teacher forcing judged 45 of an oracle's 50 own answers
    wrong."""
    torch.manual_seed(0)
    dropout = {"resid_pdrop": 0.3, "embd_pdrop": 0.3, "attn_pdrop": 0.3}
    config = GPT2Config(vocab_size=len(DIGITS), n_positions=32, n_embd=32, n_layer=1, n_head=2, **dropout)
    model = GPT2LMHeadModel(config).eval()
    examples = encode_pairs(DIGITS, [f"{a}+{b}" for a in range(10) for b in range(10)], ["0"] * 100)
    own = greedy_complete(model, examples, max_new_tokens=3)
    model.train()
    assert torch.equal(greedy_complete(model, examples, max_new_tokens=3), own)
    assert not [warning for warning in recwarn if issubclass(warning.category, evaluation.KvCacheMismatch)]
    assert model.training  # and left as it was

    sep, eos = DIGITS.sep_token_id, DIGITS.eos_token_id
    one, two = DIGITS.convert_tokens_to_ids("1"), DIGITS.convert_tokens_to_ids("2")
    oracle = DroppingOracle({sep: one, one: two, two: eos}, len(DIGITS))  # always answers "12"
    answered = encode_pairs(DIGITS, [str(digit) for digit in range(10)] * 5, ["12"] * 50)
    assert bool(teacher_forced_correct(oracle, answered).all()) and oracle.training
