"""SCAN (Lake & Baroni 2018) regenerated from its grammar, with the standard splits and their published sizes.

Grammar: ``C -> S and S | S after S | S``; ``S -> V twice | V thrice | V``;
``V -> D opposite dir | D around dir | D | U``; ``D -> U left | U right | turn left | turn right``;
``U -> walk | look | run | jump``. It yields 20,910 distinct commands whose longest action sequence has 48 actions.

Every split except ``simple`` is a deterministic rule that reproduces the published files exactly (duplicates
included); ``simple`` is a random 80/20 split whose seed was never published, so only its sizes are reproduced.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

PRIMITIVE_VERBS = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
# Subtask view names: the primitives used by the add-primitive splits and the modifiers of the grammar.
PRIMITIVES = ("jump", "walk", "run", "look", "turn left", "turn right")
MODIFIERS = ("twice", "thrice", "around", "opposite", "and", "after")
COMMAND_WORDS = (*PRIMITIVE_VERBS, "turn", *DIRECTIONS, *MODIFIERS)
ACTION_WORDS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")

SIMPLE_TRAIN_SIZE = 16_728  # published tasks_train_simple.txt; the test file holds the other 4,182
MAX_TRAIN_ACTION_LENGTH = 22  # length split: train keeps action sequences of length <= 22 (Lake & Baroni 2018, exp. 2)
ADDED_PRIMITIVE_SHARE = 0.1  # addprim train files repeat the bare primitive until it is 10% of the train set


@dataclass(frozen=True)
class ScanExample:
    """One SCAN command (space-separated words) and its action sequence (space-separated ``I_*`` tokens)."""

    command: str
    actions: str


def _verb_phrases() -> list[tuple[str, list[str]]]:
    """The 34 ``V`` phrases of the grammar with their action sequences."""
    phrases = []
    for verb in (*PRIMITIVE_VERBS, "turn"):
        verb_actions = [] if verb == "turn" else [f"I_{verb.upper()}"]
        for direction in DIRECTIONS:
            turn = [f"I_TURN_{direction.upper()}"]
            phrases.append((f"{verb} opposite {direction}", turn + turn + verb_actions))
            phrases.append((f"{verb} around {direction}", (turn + verb_actions) * 4))
            phrases.append((f"{verb} {direction}", turn + verb_actions))
        if verb != "turn":
            phrases.append((verb, verb_actions))
    return phrases


def all_examples() -> list[ScanExample]:
    """All 20,910 SCAN commands with their actions, in a fixed generation order."""
    repeats = (("", 1), (" twice", 2), (" thrice", 3))
    sentences = [(phrase + suffix, actions * count) for phrase, actions in _verb_phrases() for suffix, count in repeats]
    examples = [ScanExample(command, " ".join(actions)) for command, actions in sentences]
    for first_command, first_actions in sentences:
        for second_command, second_actions in sentences:
            examples.append(
                ScanExample(f"{first_command} and {second_command}", " ".join(first_actions + second_actions))
            )
            examples.append(
                ScanExample(f"{first_command} after {second_command}", " ".join(second_actions + first_actions))
            )
    return examples


def _contains(command: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``command`` as whole words."""
    return f" {phrase} " in f" {command} "


def _simple_split(examples: list[ScanExample], seed: int) -> tuple[list[ScanExample], list[ScanExample]]:
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:SIMPLE_TRAIN_SIZE], shuffled[SIMPLE_TRAIN_SIZE:]


def _add_primitive_split(examples: list[ScanExample], primitive: str) -> tuple[list[ScanExample], list[ScanExample]]:
    """Test: every composed command using ``primitive``; train: the rest plus the bare primitive, repeated."""
    bare = next(example for example in examples if example.command == primitive)
    test = [ex for ex in examples if _contains(ex.command, primitive) and ex.command != primitive]
    others = [ex for ex in examples if not _contains(ex.command, primitive)]
    repeat_count = round(len(others) * ADDED_PRIMITIVE_SHARE / (1 - ADDED_PRIMITIVE_SHARE))
    return others + [bare] * repeat_count, test


def _length_split(examples: list[ScanExample]) -> tuple[list[ScanExample], list[ScanExample]]:
    is_short = [len(ex.actions.split()) <= MAX_TRAIN_ACTION_LENGTH for ex in examples]
    return (
        [ex for ex, short in zip(examples, is_short) if short],
        [ex for ex, short in zip(examples, is_short) if not short],
    )


def _template_split(
    examples: list[ScanExample], template: str, held_out_verbs: tuple[str, ...]
) -> tuple[list[ScanExample], list[ScanExample]]:
    """Loula et al. (2018) template split: test holds ``verb template`` for the held-out verbs.

    Commands with the ``turn`` form of the template are dropped from both sides, as in the published files.
    """
    kept = [ex for ex in examples if not _contains(ex.command, f"turn {template}")]
    is_test = [any(_contains(ex.command, f"{verb} {template}") for verb in held_out_verbs) for ex in kept]
    return (
        [ex for ex, test in zip(kept, is_test) if not test],
        [ex for ex, test in zip(kept, is_test) if test],
    )


SplitRule = Callable[[list[ScanExample], int], tuple[list[ScanExample], list[ScanExample]]]
SPLIT_RULES: dict[str, SplitRule] = {
    "simple": lambda examples, seed: _simple_split(examples, seed),
    "addprim_jump": lambda examples, seed: _add_primitive_split(examples, "jump"),
    "addprim_turn_left": lambda examples, seed: _add_primitive_split(examples, "turn left"),
    "length": lambda examples, seed: _length_split(examples),
    "template_around_right": lambda examples, seed: _template_split(examples, "around right", PRIMITIVE_VERBS),
    "template_jump_around_right": lambda examples, seed: _template_split(examples, "around right", ("jump",)),
    "template_opposite_right": lambda examples, seed: _template_split(examples, "opposite right", PRIMITIVE_VERBS),
    "template_right": lambda examples, seed: _template_split(examples, "right", PRIMITIVE_VERBS),
}
SPLITS = tuple(SPLIT_RULES)
SEEDED_SPLITS = ("simple",)
"""The splits a seed draws; every other split is a fixed rule, the same under every seed."""


def split_examples(split: str, seed: int = 0) -> tuple[list[ScanExample], list[ScanExample]]:
    """(train, test) examples of a SCAN split; ``seed`` only matters for ``simple``."""
    if split not in SPLIT_RULES:
        raise ValueError(f"unknown SCAN split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLIT_RULES[split](all_examples(), seed)


def _to_dataset(examples: list[ScanExample]) -> Dataset:
    commands = [ex.command for ex in examples]
    return Dataset.from_dict(
        {
            "question": commands,
            "answer": [ex.actions for ex in examples],
            "primitives": [[name for name in PRIMITIVES if _contains(cmd, name)] for cmd in commands],
            "modifiers": [[name for name in MODIFIERS if _contains(cmd, name)] for cmd in commands],
        }
    )


def scan_task(split: str = "simple", seed: int = 0) -> DatasetDict:
    """A SCAN split as a ``DatasetDict`` with ``train`` and ``test``.

    Columns: ``question`` (the command), ``answer`` (the actions), ``primitives`` and ``modifiers`` (lists of the
    names from :data:`PRIMITIVES` / :data:`MODIFIERS` that the command uses, for subtask views). ``seed`` picks the
    random 80/20 ``simple`` split and is ignored by the deterministic splits.

    >>> scan_task("length")["train"].num_rows
    16990
    """
    train, test = split_examples(split, seed)
    return DatasetDict({"train": _to_dataset(train), "test": _to_dataset(test)})


def split_sizes(split: str, seed: int = 0) -> dict[str, int]:
    """Number of train and test examples of a SCAN split, e.g. ``{"train": 16728, "test": 4182}``."""
    train, test = split_examples(split, seed)
    return {"train": len(train), "test": len(test)}
