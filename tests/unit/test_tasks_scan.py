"""SCAN regenerated from its grammar reproduces the published files (../shared/scan/) and is deterministic."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest

from modmask_lens.tasks import scan
from modmask_lens.tasks.views import subtask_view, subtask_views

PUBLISHED_DIR = Path(__file__).resolve().parents[3] / "shared" / "scan"  # ../shared/scan from the repository
DETERMINISTIC_SPLITS = [split for split in scan.SPLITS if split != "simple"]
needs_published_files = pytest.mark.skipif(
    not PUBLISHED_DIR.is_dir(), reason=f"published SCAN files not found at {PUBLISHED_DIR} (../shared/scan/)"
)


def read_published(name: str) -> Counter[tuple[str, str]]:
    """(command, actions) pairs of a published file such as ``tasks_train_length``, with multiplicity."""
    pairs = Counter()
    with gzip.open(PUBLISHED_DIR / f"{name}.txt.gz", "rt") as lines:
        for line in lines:
            command, actions = line.strip().removeprefix("IN: ").split(" OUT: ")
            pairs[(command, actions)] += 1
    return pairs


def as_pairs(examples: list[scan.ScanExample]) -> Counter[tuple[str, str]]:
    return Counter((example.command, example.actions) for example in examples)


@needs_published_files
def test_generator_reproduces_every_pair_of_tasks_txt():
    generated = as_pairs(scan.all_examples())
    assert generated == read_published("tasks")
    assert sum(generated.values()) == 20_910


def test_longest_action_sequence_has_48_actions():
    assert max(len(example.actions.split()) for example in scan.all_examples()) == 48


@needs_published_files
@pytest.mark.parametrize("split", DETERMINISTIC_SPLITS)
def test_deterministic_split_matches_published_membership_with_duplicates(split):
    train, test = scan.split_examples(split)
    assert as_pairs(train) == read_published(f"tasks_train_{split}")
    assert as_pairs(test) == read_published(f"tasks_test_{split}")


@needs_published_files
def test_simple_split_has_published_counts_and_partitions_all_commands():
    train, test = scan.split_examples("simple", seed=0)
    assert len(train) == sum(read_published("tasks_train_simple").values()) == 16_728
    assert len(test) == sum(read_published("tasks_test_simple").values()) == 4_182
    assert as_pairs(train) + as_pairs(test) == as_pairs(scan.all_examples())


def test_simple_split_is_deterministic_per_seed():
    assert scan.split_examples("simple", seed=3) == scan.split_examples("simple", seed=3)
    assert scan.split_examples("simple", seed=3) != scan.split_examples("simple", seed=4)


@pytest.mark.parametrize(
    ("split", "train_size", "test_size"),
    [
        ("simple", 16_728, 4_182),
        ("addprim_jump", 14_670, 7_706),
        ("addprim_turn_left", 21_890, 1_208),
        ("length", 16_990, 3_920),
        ("template_around_right", 15_225, 4_476),
    ],
)
def test_split_sizes_are_the_published_ones(split, train_size, test_size):
    assert scan.split_sizes(split) == {"train": train_size, "test": test_size}


def test_unknown_split_names_the_choices():
    with pytest.raises(ValueError, match="addprim_jump"):
        scan.scan_task("jump")


def test_dataset_columns_label_primitives_and_modifiers():
    test = scan.scan_task("addprim_jump")["test"]
    assert test.column_names == ["question", "answer", "primitives", "modifiers"]
    row = test[next(i for i, q in enumerate(test["question"]) if q == "jump twice after turn left")]
    assert row["answer"] == "I_TURN_LEFT I_JUMP I_JUMP"
    assert row["primitives"] == ["jump", "turn left"]
    assert row["modifiers"] == ["twice", "after"]


def test_primitive_view_holds_exactly_the_commands_with_that_primitive():
    data = scan.scan_task("length")
    jump = subtask_view(data, "primitives", "jump")
    assert all(" jump " in f" {command} " for command in jump["test"]["question"])
    assert jump["test"].num_rows == sum(" jump " in f" {c} " for c in data["test"]["question"])


def test_modifier_views_cover_every_modifier():
    views = subtask_views(scan.scan_task("simple")["test"], "modifiers")
    assert sorted(views) == sorted(scan.MODIFIERS)
    assert all(" around " in f" {command} " for command in views["around"]["question"])
