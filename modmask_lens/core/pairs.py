"""A user's own subtask: (prompt, completion) pairs from a list, a JSONL file, or a ``datasets.Dataset``.

This is how a user asks "which weights of my model do X": bring the examples of X in any of these forms; they are
checked here (fields present, strings, non-empty) and encoded with the model's tokenizer by
:meth:`modmask_lens.SubtaskData.from_pairs`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from datasets import Dataset

PairSource = Sequence[tuple[str, str]] | str | Path | Dataset
FIELDS = ("prompt", "completion")


def load_pairs(source: PairSource, fields: tuple[str, str] = FIELDS) -> tuple[list[str], list[str]]:
    """Prompts and completions of ``source``.

    Args:
        source: a list of ``(prompt, completion)`` tuples; a path to a JSONL file with one object per line holding
            ``prompt`` and ``completion`` strings (UTF-8); or a ``datasets.Dataset`` with those two columns.
        fields: the names of the prompt and completion fields in JSONL and Dataset sources (the built-in tasks'
            datasets use ``("question", "answer")``).

    Raises:
        ValueError: naming the line or row with a missing field, a non-string value, bad JSON or bad encoding, or
            when there are fewer than two examples (a mask needs a subtask, not an example).
    """
    if isinstance(source, (str, Path)):
        rows = ({"prompt": row.get(fields[0]), "completion": row.get(fields[1])} for row in _jsonl_rows(Path(source)))
        where = f"{source}, line"
    elif isinstance(source, Dataset):
        missing = [name for name in fields if name not in source.column_names]
        if missing:
            raise ValueError(f"the dataset lacks the column(s) {missing}; it needs {fields[0]!r} and {fields[1]!r}")
        rows = ({"prompt": row[fields[0]], "completion": row[fields[1]]} for row in source.select_columns(list(fields)))
        where = "dataset row"
    else:
        rows = ({"prompt": pair[0], "completion": pair[1]} if len(pair) == 2 else {} for pair in source)
        where = "pair"
    prompts, completions = [], []
    for number, row in enumerate(rows, start=1):
        for name, field in zip(FIELDS, fields):
            if not isinstance(row.get(name), str) or (name == "completion" and not row[name]):
                raise ValueError(f"{where} {number}: '{field}' must be a non-empty string, got {row.get(name)!r}")
        prompts.append(row["prompt"])
        completions.append(row["completion"])
    if len(prompts) < 2:
        raise ValueError(
            f"a subtask needs at least 2 examples, got {len(prompts)}; add more (prompt, completion) pairs"
        )
    return prompts, completions


def _jsonl_rows(path: Path) -> Iterable[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); save it as UTF-8 JSONL") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not valid JSON ({error.msg}); one object per line") from error
        if not isinstance(row, dict):
            raise ValueError(  # noqa: TRY004 (bad input is a ValueError everywhere, see cli.KNOWN_ERRORS)
                f"{path}, line {number}: expected an object with 'prompt' and 'completion'"
            )
        yield row
