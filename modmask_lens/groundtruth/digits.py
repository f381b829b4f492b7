"""The planted models' subtasks: one-digit functions told apart by a task token, e.g. ``add 3 7`` -> ``0``.

Every example is four tokens, ``task d1 d2 answer``, and only the answer is scored (the model predicts it at the
position of ``d2``). There is no separator or end-of-sequence token: a token that every subtask reads would couple
the residual halves of a disconnected plant. Each subtask has all 100 digit pairs; the task has no more examples, so
train and test are the same 100 (the point is which weights compute a known table, not generalisation).

A subtask's digits are ``0``..``9``, or the primed ``0'``..``9'`` when its plant keeps the subtasks' tokens apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.tasks.vocabulary import word_level_tokenizer

DIGITS = tuple(str(digit) for digit in range(10))
PRIMED_DIGITS = tuple(f"{digit}'" for digit in range(10))
TASK_TOKENS = ("add", "mul", "sub", "max")


@dataclass(frozen=True)
class DigitFunction:
    """A subtask: its task token and the answer digit of each digit pair."""

    name: str
    answer: Callable[[int, int], int]


FUNCTIONS = {
    "add": DigitFunction("add", lambda left, right: (left + right) % 10),
    "mul": DigitFunction("mul", lambda left, right: (left * right) % 10),
    "sub": DigitFunction("sub", lambda left, right: (left - right) % 10),
    "max": DigitFunction("max", max),
}
PAIRS = {"add-mul": ("add", "mul"), "sub-max": ("sub", "max")}
"""The shipped plants' subtask pairs (Csordás's +/* split, and a pair whose second member is not arithmetic); any
two functions make a pair (:func:`pair_subtasks`)."""


def pair_subtasks(pair: str) -> tuple[str, str]:
    """The two subtasks of a pair name: two different :data:`FUNCTIONS` joined by ``-``, e.g. ``"add-sub"``."""
    names = tuple(pair.split("-"))
    if len(names) != 2 or names[0] == names[1] or not set(names) <= set(FUNCTIONS):
        raise ValueError(
            f"pair {pair!r} is not two different functions of {sorted(FUNCTIONS)} joined by '-' (e.g. 'add-sub')"
        )
    return names


def digit_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer every plant uses: specials, the task tokens, plain and primed digits (28 ids)."""
    return word_level_tokenizer([*TASK_TOKENS, *DIGITS, *PRIMED_DIGITS])


def digit_symbols(primed: bool) -> tuple[str, ...]:
    """The ten digit tokens of a subtask: plain, or primed (a disconnected plant's second subtask)."""
    return PRIMED_DIGITS if primed else DIGITS


def subtask_data(function: str, tokenizer: PreTrainedTokenizerFast, primed: bool = False) -> SubtaskData:
    """All 100 examples of ``function`` as ``task d1 d2 answer`` rows, the answer the only scored token.

    >>> data = subtask_data("add", digit_tokenizer())
    >>> len(data), data.input_ids.shape[1]
    (100, 4)
    """
    symbols = digit_symbols(primed)
    rule = FUNCTIONS[function]
    rows = [
        f"{function} {symbols[left]} {symbols[right]} {symbols[rule.answer(left, right)]}"
        for left in range(10)
        for right in range(10)
    ]
    input_ids = torch.tensor(tokenizer(rows, add_special_tokens=False)["input_ids"], dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, -1] = input_ids[:, -1]
    return SubtaskData(function, input_ids, labels)


def answer_token_ids(tokenizer: PreTrainedTokenizerFast, primed: bool = False) -> list[int]:
    """Ids of the ten answer digits of a subtask."""
    return tokenizer.convert_tokens_to_ids(list(digit_symbols(primed)))
