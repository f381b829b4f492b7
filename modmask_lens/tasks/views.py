"""Subtask views: the examples of a task split that belong to one subtask (a primitive, a modifier, a module).

A subtask column holds one label per example (e.g. math's ``module``) or a list of labels (e.g. SCAN's
``primitives`` and ``modifiers``); a view keeps the examples whose label is, or whose list contains, the subtask.
"""

from __future__ import annotations

from datasets import Dataset, DatasetDict


def _has_label(labels: str | list[str], subtask: str) -> bool:
    return labels == subtask if isinstance(labels, str) else subtask in labels


def subtask_names(dataset: Dataset, column: str) -> list[str]:
    """Sorted distinct subtask labels in ``column`` of ``dataset``."""
    labels = set()
    for value in dataset[column]:
        labels.update([value] if isinstance(value, str) else value)
    return sorted(labels)


def subtask_view(data: Dataset | DatasetDict, column: str, subtask: str) -> Dataset | DatasetDict:
    """The examples of ``data`` (a split or every split of a ``DatasetDict``) that belong to ``subtask``.

    >>> from modmask_lens.tasks.scan import scan_task
    >>> subtask_view(scan_task("length"), "primitives", "jump")["test"].num_rows
    1578
    """
    columns = data.column_names if isinstance(data, Dataset) else data["train"].column_names
    if column not in columns:
        raise KeyError(f"no subtask column {column!r}; choose one of {columns}")
    return data.filter(lambda labels: _has_label(labels, subtask), input_columns=column)


def subtask_views(data: Dataset | DatasetDict, column: str) -> dict[str, Dataset | DatasetDict]:
    """One view per subtask label found in ``column``, keyed by label (e.g. ``{"jump": ..., "walk": ...}``)."""
    names = subtask_names(data if isinstance(data, Dataset) else data["train"], column)
    return {name: subtask_view(data, column, name) for name in names}
