"""The arithmetic tasks: every answer checked by Python arithmetic, splits disjoint, generation deterministic."""

from __future__ import annotations

from modmask_lens.core.encoding import IGNORE_INDEX, encode_pairs, restrict_labels
from modmask_lens.tasks.arithmetic import (
    DOUBLE_ADD_PAIR_OFFSETS,
    add_mul_task,
    double_addition_task,
    modular_addition_task,
)
from modmask_lens.tasks.vocabulary import character_level_tokenizer


def test_add_mul_answers_are_the_result_mod_100_in_two_digits():
    data = add_mul_task(seed=0)
    for split in ("train", "test"):
        for row in data[split]:
            left, right = (int(part) for part in row["question"].replace("*", "+").split("+"))
            expected = left + right if row["operation"] == "add" else left * right
            assert row["answer"] == f"{expected % 100:02d}"
            assert ("+" in row["question"]) == (row["operation"] == "add")


def test_add_mul_split_partitions_the_whole_table():
    data = add_mul_task(seed=0)
    train, test = set(data["train"]["question"]), set(data["test"]["question"])
    assert not train & test
    assert len(train | test) == 2 * 100 * 100
    assert data["test"].num_rows == 4_000


def test_modular_addition_answers_and_split():
    data = modular_addition_task(seed=0)
    questions = list(data["train"]["question"]) + list(data["test"]["question"])
    assert len(set(questions)) == 59 * 59
    for row in data["test"]:
        left, right = (int(part) for part in row["question"].split("+"))
        assert int(row["answer"]) == (left + right) % 59 and len(row["answer"]) == 2


def test_double_addition_sums_each_pair_and_keeps_test_unseen():
    data = double_addition_task(seed=0, train_size=2_000, test_size=500)
    for row in data["test"]:
        first, second = row["question"].split(",")
        sums = [sum(int(number) for number in pair.split("+")) % 100 for pair in (first, second)]
        assert row["answer"] == f"{sums[0]:02d},{sums[1]:02d}"
    assert not set(data["train"]["question"]) & set(data["test"]["question"])


def test_generation_is_deterministic_per_seed():
    assert add_mul_task(seed=5)["test"]["question"] == add_mul_task(seed=5)["test"]["question"]
    assert add_mul_task(seed=5)["test"]["question"] != add_mul_task(seed=6)["test"]["question"]
    first, again = double_addition_task(3, 100, 10), double_addition_task(3, 100, 10)
    assert first["train"]["question"] == again["train"]["question"]


def test_pair_offsets_select_each_pairs_digits():
    tokenizer = character_level_tokenizer()
    examples = encode_pairs(tokenizer, ["12+34,56+78"], ["46,34"])
    for pair, digits in (("pair1", "46"), ("pair2", "34")):
        labels = restrict_labels(examples, DOUBLE_ADD_PAIR_OFFSETS[pair]).labels[0]
        assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == digits


def test_double_addition_zeroes_train_operands_only_at_the_given_rate():
    data = double_addition_task(seed=0, train_size=20_000, test_size=2_000, zero_operand_probability=0.1)

    def zero_rate(split: str) -> float:
        operands = [part for question in data[split]["question"] for part in question.replace(",", "+").split("+")]
        return sum(operand == "00" for operand in operands) / len(operands)

    assert abs(zero_rate("train") - (0.1 + 0.9 / 100)) < 0.01  # zeroed, or 00 by chance (repeats dropped)
    assert zero_rate("test") < 0.02
    assert len(set(data["train"]["question"])) == 20_000
