"""DeepMind-Mathematics-style modules: original formats, answers checked by an independent computation."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from modmask_lens.tasks import deepmind_math
from modmask_lens.tasks.deepmind_math import MathConfig, math_task

NUMBER = r"-?\d+(?:\.\d+)?"
SMALL = MathConfig(
    train_entropy=(2.0, 4.0),
    interpolate_entropy=(3.5, 3.5),
    extrapolate_entropy=(4.5, 5.5),
    train_size_per_difficulty=200,
    test_size=100,
)


@pytest.fixture(scope="module")
def data():
    return math_task(SMALL, seed=0)


def rows_of(data, module):
    return [row for split in ("train", "interpolate", "extrapolate") for row in data[split] if row["module"] == module]


def template_pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{p\}", f"(?P<p>{NUMBER})").replace(r"\{q\}", f"(?P<q>{NUMBER})")
    return re.compile(f"^{escaped}$")


def parse_pair(question: str, templates: tuple[str, ...]) -> tuple[str, Fraction, Fraction]:
    for template in templates:
        match = template_pattern(template).match(question)
        if match:
            return template, Fraction(match["p"]), Fraction(match["q"])
    raise AssertionError(f"question {question!r} follows no original template")


def test_add_or_sub_answers_equal_exact_rational_arithmetic(data):
    for row in rows_of(data, "arithmetic__add_or_sub"):
        try:
            _, p, q = parse_pair(row["question"], deepmind_math.ADD_TEMPLATES)
            expected = p + q
        except AssertionError:
            _, p, q = parse_pair(row["question"], deepmind_math.SUB_TEMPLATES)
            expected = p - q
        assert Fraction(row["answer"]) == expected


def test_mul_answers_equal_exact_products(data):
    for row in rows_of(data, "arithmetic__mul"):
        _, p, q = parse_pair(row["question"], deepmind_math.MUL_TEMPLATES)
        assert Fraction(row["answer"]) == p * q


def test_div_answers_are_reduced_quotients(data):
    for row in rows_of(data, "arithmetic__div"):
        _, p, q = parse_pair(row["question"], deepmind_math.DIV_TEMPLATES)
        assert Fraction(row["answer"]) == p / q
        assert row["answer"] == str(p / q)  # Python prints fractions reduced, as sympy does


def test_place_value_answer_is_the_named_digit(data):
    pattern = re.compile(r"^What is the (?P<place>[a-z ]+) digit of (?P<n>\d+)\?$")
    for row in rows_of(data, "numbers__place_value"):
        match = pattern.match(row["question"])
        place = deepmind_math.PLACE_NAMES.index(match["place"])
        assert int(row["answer"]) == int(match["n"]) // 10**place % 10


def round_half_away(value: Fraction, unit: Fraction) -> Fraction:
    steps = abs(value) / unit
    whole = int(steps) + (1 if steps - int(steps) >= Fraction(1, 2) else 0)
    return (whole if value >= 0 else -whole) * unit


def test_round_number_answers_round_half_away_from_zero(data):
    to_power = re.compile(
        rf"^(?:Round (?P<a>{NUMBER}) to the nearest (?P<an>[a-z ]+)\.|What is (?P<b>{NUMBER}) "
        rf"rounded to the nearest (?P<bn>[a-z ]+)\?)$"
    )
    to_places = re.compile(
        rf"^(?:Round|What is) (?P<x>{NUMBER})(?: rounded)? to (?P<dp>\d) (?:decimal places|dps)"
        r"[.?]$"
    )
    for row in rows_of(data, "numbers__round_number"):
        if match := to_power.match(row["question"]):
            name = match["an"] or match["bn"]
            unit = (
                Fraction(1) if name == "integer" else Fraction(10) ** (deepmind_math.POWER_OF_TEN_NAMES.index(name) + 1)
            )
            value = Fraction(match["a"] or match["b"])
        else:
            match = to_places.match(row["question"])
            assert match, f"question {row['question']!r} follows no original template"
            unit, value = Fraction(1, 10 ** int(match["dp"])), Fraction(match["x"])
        assert Fraction(row["answer"]) == round_half_away(value, unit)


def test_sort_answers_are_the_sorted_values(data):
    pattern = re.compile(r"^(?:Sort|Put) (?P<values>[-\d, ]+?)(?: in (?P<direction>[a-z]+) order)?\.$")
    for row in rows_of(data, "comparison__sort"):
        match = pattern.match(row["question"])
        values = [int(value) for value in match["values"].split(", ")]
        descending = match["direction"] in deepmind_math.SORT_DESCENDING_WORDS
        assert row["answer"] == ", ".join(map(str, sorted(values, reverse=descending)))


def test_extrapolate_sorts_more_items_than_train(data):
    rows = [row for row in data["extrapolate"] if row["module"] == "comparison__sort"]
    assert min(len(row["answer"].split(", ")) for row in rows) > deepmind_math.SORT_COUNTS[1]


def test_splits_difficulties_and_test_questions_never_in_train(data):
    assert set(data) == {"train_easy", "train_medium", "train_hard", "train", "interpolate", "extrapolate"}
    assert data["train"].num_rows == 3 * 200 * len(deepmind_math.MODULES)
    train_questions = set(data["train"]["question"])
    for split in ("interpolate", "extrapolate"):
        assert not train_questions & set(data[split]["question"])
        assert len(set(data[split]["question"])) == data[split].num_rows


def test_generation_is_deterministic_per_seed(data):
    assert math_task(SMALL, seed=0)["interpolate"]["question"] == data["interpolate"]["question"]
    assert math_task(SMALL, seed=1)["interpolate"]["question"] != data["interpolate"]["question"]


def test_unknown_module_names_the_available_ones():
    with pytest.raises(ValueError, match="arithmetic__mul"):
        math_task(MathConfig(modules=("algebra__linear_1d",)))
