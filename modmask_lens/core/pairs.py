"""A user's own subtask: (prompt, completion) pairs from a list, a JSONL file, or a ``datasets.Dataset``.

This is how a user asks "which weights of my model do X": bring the examples of X in any of these forms; they are
checked here (fields present, strings, non-empty, no key given twice, one part of an exported task) and encoded with
the model's tokenizer by :meth:`modmask_lens.SubtaskData.from_pairs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from datasets import Dataset

from modmask_lens.core.checkpoint import refuse_duplicate_keys

PairSource = Iterable[Sequence[str]] | str | Path | Dataset
FIELDS = ("prompt", "completion")
PART_FIELD = "part"  # which part (train, test, ...) a row of an exported task belongs to
DEFAULT_PART = "train"
FOIL_FIELD = "foil"  # the wrong answer a logit difference compares the completion with (optional)


def load_pairs(
    source: PairSource, fields: tuple[str, str] = FIELDS, part: str | None = None
) -> tuple[list[str], list[str]]:
    """Prompts and completions of ``source``.

    Args:
        source: a list (or iterable, e.g. ``zip(prompts, completions)``) of ``(prompt, completion)`` pairs (tuples or
            lists); a path to a JSONL file with one object
            per line holding ``prompt`` and ``completion`` strings (UTF-8); or a ``datasets.Dataset`` with those two
            columns.
        fields: the names of the prompt and completion fields in JSONL and Dataset sources (the built-in tasks'
            datasets use ``("question", "answer")``).
        part: of a JSONL file whose rows carry a ``part`` field (``modmask-lens data --export`` writes one), keep
            the rows of this part. By default a file of one part is used whole and a file of several parts gives
            its ``train`` rows: test rows never train a mask unless asked for.

    Raises:
        ValueError: naming the line or row with a missing field, a non-string value, a key given twice, bad JSON or
            bad encoding, a part the file lacks, a ``part`` for a source that is no JSONL file, or when there are
            fewer than two examples (a mask needs a subtask, not an example).
    """
    if part is not None and not isinstance(source, (str, Path)):
        raise ValueError(
            f"part={part!r} picks rows of a JSONL file by its {PART_FIELD!r} field; this source is a "
            f"{type(source).__name__}, whose rows would all be used: select the rows yourself "
            f"(dataset.filter(lambda row: row[{PART_FIELD!r}] == {part!r})) and leave part out"
        )
    if isinstance(source, (str, Path)):
        numbered = _rows_of_part(Path(source), list(_jsonl_rows(Path(source))), part)
        for line, row in numbered:
            absent = [field for field in fields if field not in row]
            if absent:
                raise ValueError(f"{source}, line {line}: no {absent[0]!r} key (the row has {sorted(row)})")
        rows = ({"prompt": row.get(fields[0]), "completion": row.get(fields[1])} for _, row in numbered)
        numbers = [line for line, _ in numbered]
        where = f"{source}, line"
    elif isinstance(source, Dataset):
        missing = [name for name in fields if name not in source.column_names]
        if missing:
            raise ValueError(f"the dataset lacks the column(s) {missing}; it needs {fields[0]!r} and {fields[1]!r}")
        rows = ({"prompt": row[fields[0]], "completion": row[fields[1]]} for row in source.select_columns(list(fields)))
        numbers, where = None, "dataset row"
    else:
        source = list(source)  # an iterator such as zip(prompts, completions) is read once: checked and kept here
        for number, pair in enumerate(source, start=1):
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"pair {number}: give a (prompt, completion) pair of two strings, got {pair!r}")
        rows = ({"prompt": prompt, "completion": completion} for prompt, completion in source)
        numbers, where = None, "pair"
    prompts, completions = [], []
    for index, row in enumerate(rows):
        number = numbers[index] if numbers is not None else index + 1
        for name, field in zip(FIELDS, fields):
            if not isinstance(row.get(name), str) or (name == "completion" and not row[name]):
                raise ValueError(f"{where} {number}: '{field}' must be a non-empty string, got {row.get(name)!r}")
        if not row["completion"].strip():
            raise ValueError(
                f"{where} {number}: '{fields[1]}' is only spaces ({row['completion']!r}); only the EOS would be "
                "scored: give the answer"
            )
        prompts.append(row["prompt"])
        completions.append(row["completion"])
    if len(prompts) < 2:
        raise ValueError(
            f"a subtask needs at least 2 examples, got {len(prompts)}; add more (prompt, completion) pairs"
        )
    return prompts, completions


def load_foils(path: Path, part: str | None = None) -> list[str] | None:
    """The ``foil`` field of every row of a JSONL file's ``part`` (as :func:`load_pairs` picks the rows), for a
    logit-difference objective; ``None`` when no row has one.

    Raises:
        ValueError: naming the first line whose foil is missing or not a non-empty string, when some rows have one.
    """
    numbered = _rows_of_part(path, list(_jsonl_rows(path)), part)
    if not any(FOIL_FIELD in row for _, row in numbered):
        return None
    for number, row in numbered:
        if not isinstance(row.get(FOIL_FIELD), str) or not row[FOIL_FIELD].strip():
            raise ValueError(
                f"{path}, line {number}: '{FOIL_FIELD}' must be a non-empty string in every row once one row has "
                f"it, got {row.get(FOIL_FIELD)!r}"
            )
    return [row[FOIL_FIELD] for _, row in numbered]


def _rows_of_part(path: Path, numbered: list[tuple[int, dict]], part: str | None) -> list[tuple[int, dict]]:
    """The (line, row) pairs of ``part`` (see :func:`load_pairs`)."""
    parts = sorted({str(row[PART_FIELD]) for _, row in numbered if PART_FIELD in row})
    if part is None and len(parts) <= 1:
        return numbered
    wanted = part if part is not None else DEFAULT_PART
    if wanted not in parts:
        raise ValueError(f"{path} has no rows of part {wanted!r} (its parts: {parts or 'none'}); name one: {path}:PART")
    return [(line, row) for line, row in numbered if str(row.get(PART_FIELD)) == wanted]


def _jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, object) of each non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); save it as UTF-8 JSONL") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=refuse_duplicate_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}); one object per line") from error
        except ValueError as error:  # a key given twice: plain JSON would keep the last value silently
            raise ValueError(f"{path}, line {number}: {error}") from error
        if not isinstance(row, dict):
            raise ValueError(  # noqa: TRY004 (bad input is a ValueError everywhere, see cli_common.KNOWN_ERRORS)
                f"{path}, line {number}: expected an object with 'prompt' and 'completion'"
            )
        yield number, row
