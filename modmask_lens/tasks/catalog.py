"""The named offline tasks: how to build each one's data, its tokenizer, and its subtask column.

A task is what a zoo model is trained and evaluated on; ``task_spec(name)`` is the one place that maps a name such
as ``"scan"`` or ``"addmul"`` to a data builder and a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict
from transformers import PreTrainedTokenizerFast

from modmask_lens.tasks import scan
from modmask_lens.tasks.vocabulary import character_level_tokenizer, word_level_tokenizer


@dataclass(frozen=True)
class TaskSpec:
    """A named task: ``build(seed)`` gives its ``DatasetDict``; ``make_tokenizer()`` its tokenizer.

    ``subtask_column`` names the column of per-example subtask labels used for per-subtask accuracy;
    ``evaluation_splits`` names the splits a model card reports.
    """

    name: str
    description: str
    build: Callable[[int], DatasetDict]
    make_tokenizer: Callable[[], PreTrainedTokenizerFast]
    subtask_column: str
    evaluation_splits: tuple[str, ...]


def _scan_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer([*scan.COMMAND_WORDS, *scan.ACTION_WORDS])


TASKS: dict[str, TaskSpec] = {
    "scan": TaskSpec(
        name="scan",
        description="SCAN simple split (random 80/20 of all 20,910 commands), word-level",
        build=lambda seed: scan.scan_task("simple", seed),
        make_tokenizer=_scan_tokenizer,
        subtask_column="primitives",
        evaluation_splits=("train", "test"),
    ),
}


def task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; raises with the known names if there is none."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
