"""Finding what a user names on the command line: a model (zoo name, local folder or hub id) and a subtask (a task,
a task's subtask view, or a JSONL file of prompt/completion pairs).

Every command resolves names here, so a name means the same everywhere: zoo names and task names accept ``-`` and
``_`` alike (``double-add`` is ``double_add``). The checks that need no model (:func:`check_model_name`,
:func:`check_subtask_spec`) run before the slow loading starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from modmask_lens.core.data import SubtaskData

PART_SEPARATOR = ":"  # ``pairs.jsonl:test`` picks the rows of one part of an exported file


def zoo_name(name: str) -> str | None:
    """The shipped zoo model called ``name`` (``-`` and ``_`` alike), or ``None``."""
    from modmask_lens import zoo

    wanted = name.replace("_", "-")
    return next((model for model in zoo.available_models() if model.replace("_", "-") == wanted), None)


def check_model_name(name_or_path: str) -> None:
    """Raise ``ValueError`` unless ``name_or_path`` is a zoo model, a folder holding a model, or a hub id (online, or
    in the local Hugging Face cache when ``HF_HUB_OFFLINE`` is set).

    Runs before any model loads, so a typo costs nothing.
    """
    from modmask_lens import zoo

    if zoo_name(name_or_path) is not None:
        return
    folder = Path(name_or_path).expanduser()
    known = f"zoo models: {', '.join(zoo.available_models())}"
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} holds no model (no config.json); pass a folder written by save_pretrained or a zoo model "
                f"({', '.join(zoo.available_models())})"
            )
        return
    path_like = folder.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    offline = _offline_variable()
    if path_like or (offline and not _in_hub_cache(name_or_path)):
        reason = (
            f"not in the local Hugging Face cache, and {offline} is set"
            if offline and not path_like
            else "no such folder"
        )
        raise ValueError(
            f"{name_or_path!r} is neither a zoo model nor a model folder ({reason}); {known}; or pass a folder "
            "written by save_pretrained"
        )


def _offline_variable() -> str | None:
    """The environment variable that keeps the Hugging Face hub offline, read as ``huggingface_hub`` reads it
    (``HF_HUB_OFFLINE``, or ``TRANSFORMERS_OFFLINE`` where that is unset or empty; on for 1, ON, YES or TRUE in any
    case), or ``None`` while the hub is online."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    name = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    return name if os.environ.get(name, "").upper() in ENV_VARS_TRUE_VALUES else None


def _in_hub_cache(repo_id: str) -> bool:
    """Is the hub model ``repo_id`` in the local Hugging Face cache (loadable offline)?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def load_bridge(name_or_path: str, device: str = "cpu"):
    """A ``TransformerBridge`` and its tokenizer for a zoo model name, a local Hugging Face folder, or a hub id.

    A hub id only works online (tests and CI run with ``HF_HUB_OFFLINE=1``). A folder without tokenizer files gives
    ``None`` as the tokenizer (whatever needs one then says so).

    Raises:
        ValueError: ``name_or_path`` is neither a zoo model nor a folder holding a model (nor, online, a hub id).
    """
    check_model_name(name_or_path)
    from transformers import AutoTokenizer

    from modmask_lens import zoo
    from modmask_lens.core.booting import boot_transformers

    shipped = zoo_name(name_or_path)
    if shipped is not None:
        model = zoo.load(shipped, device=device)
        return model.bridge, model.tokenizer
    folder = Path(name_or_path).expanduser()
    location = str(folder) if folder.exists() else name_or_path  # transformers reads "~/model" as a hub id
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.vocab_size == 0:  # transformers falls back to an empty tokenizer when the folder has none
        tokenizer = None
    return boot_transformers(location, device=device, tokenizer=tokenizer), tokenizer


def check_subtask_spec(spec: str) -> None:
    """Raise ``ValueError`` / ``KeyError`` / ``FileNotFoundError`` unless ``spec`` names a subtask
    :func:`load_subtask` can load: an existing ``.jsonl`` file (any case, optionally ``:PART``) or a known task.

    Runs before any model loads.
    """
    from modmask_lens.tasks.catalog import task_spec

    file, _ = _file_and_part(spec)
    if file is not None:
        if not file.is_file():
            raise FileNotFoundError(f"no task file {file} ({'a folder' if file.is_dir() else 'not found'})")
        return
    if Path(spec).is_file() or Path(spec).suffix.lower() in (".json", ".txt", ".csv", ".tsv"):
        raise ValueError(
            f"{spec!r} looks like a file but not a .jsonl one; task files are JSON Lines (one "
            '{"prompt": ..., "completion": ...} object per line) named *.jsonl: rename it'
        )
    task_spec(spec.partition("/")[0])


def subtask_name(spec: str) -> str:
    """The name :func:`load_subtask` gives the subtask of ``spec``: a file's stem (``add.jsonl:test`` -> ``add``),
    else the spec with ``/`` as ``-`` (``scan/jump`` -> ``scan-jump``)."""
    file, _ = _file_and_part(spec)
    return file.stem if file is not None else spec.replace("/", "-")


def check_distinct_names(specs: list[str]) -> None:
    """Refuse subtask specs that would give two subtasks one name (masks are saved and reported by name).

    Raises:
        ValueError: naming the specs that clash and the fix.
    """
    by_name: dict[str, list[str]] = {}
    for spec in specs:
        by_name.setdefault(subtask_name(spec), []).append(spec)
    clashes = {name: given for name, given in by_name.items() if len(given) > 1}
    if clashes:
        name, given = next(iter(clashes.items()))
        raise ValueError(
            f"the tasks {given} all name their subtask {name!r} (a file's subtask is named after the file); "
            "give each its own file name, e.g. copy one part to its own .jsonl"
        )


def task_file(spec: str) -> Path | None:
    """The JSONL file a subtask ``spec`` reads (``add.jsonl:test`` -> ``add.jsonl``), or ``None`` for a task of the
    catalogue (``scan/jump``)."""
    return _file_and_part(spec)[0]


def _file_and_part(spec: str) -> tuple[Path | None, str | None]:
    """(JSONL file, part or None) if ``spec`` names a JSONL file (``pairs.jsonl`` or ``pairs.jsonl:test``), else
    (None, None)."""
    file, separator, part = spec.rpartition(PART_SEPARATOR)
    if separator and file.lower().endswith(".jsonl") and part and "/" not in part:
        return Path(file), part
    if spec.lower().endswith(".jsonl"):
        return Path(spec), None
    return None, None


def load_subtask(
    spec: str, tokenizer, split: str | None = None, seed: int = 0, prepend_bos: bool = False
) -> SubtaskData:
    """The subtask named by ``spec``.

    Args:
        spec: ``path/to/file.jsonl`` (prompt/completion pairs; the subtask is named after the file; if its rows
            carry a ``part`` field, as ``modmask-lens data --export`` writes, only the ``train`` rows, or the rows of
            ``path/to/file.jsonl:PART``; rows with a ``foil`` field give the logit-difference objective its
            foils), ``TASK`` (a built-in task's training split, e.g. ``scan``) or
            ``TASK/SUBTASK`` (one subtask view of it, e.g. ``scan/jump`` or ``addmul/add``). Task names take ``-``
            or ``_`` alike, and subtask names either for a space (``scan/turn_left``).
        tokenizer: the model's tokenizer.
        split: which split of a built-in task (default: the task's training split; ``math`` has no ``test``, its
            test splits are ``interpolate`` and ``extrapolate``), or which part of a JSONL file (as ``FILE:PART``).
        seed: seed of the task's random parts.
        prepend_bos: start every pair with the tokenizer's BOS token (:meth:`SubtaskData.from_pairs`), for models
            pretrained with one; the built-in tasks' zoo models were trained without.
    """
    from modmask_lens.core.pairs import load_foils
    from modmask_lens.tasks.catalog import task_spec
    from modmask_lens.tasks.views import subtask_names, subtask_view

    check_subtask_spec(spec)
    file, part = _file_and_part(spec)
    if file is not None:
        if split is not None and part not in (None, split):
            raise ValueError(f"{spec!r} names the part {part!r} but split is {split!r}; give one of them")
        part = part or split
        data = SubtaskData.from_pairs(subtask_name(spec), file, tokenizer, part=part, prepend_bos=prepend_bos)
        foils = load_foils(file, part)
        return data if foils is None else data.with_foils(foils, tokenizer)
    task_name, _, subtask = spec.partition("/")
    task = task_spec(task_name)
    splits = task.build(seed)
    if (split or task.train_split) not in splits:
        raise ValueError(f"task {task_name!r} has no split {split!r}; its splits: {', '.join(splits)}")
    rows = splits[split or task.train_split]
    if subtask:
        if task.subtask_column is None:
            raise ValueError(f"task {task_name!r} has no subtasks; use --task {task_name}")
        names = subtask_names(rows, task.subtask_column)
        spelled = {name.replace(" ", "_"): name for name in names} | {name.replace(" ", "-"): name for name in names}
        subtask = spelled.get(subtask, subtask)  # scan/turn_left for the subtask "turn left", without shell quotes
        if subtask not in names:
            raise ValueError(
                f"task {task_name!r} has no subtask {subtask!r}; its subtasks: {', '.join(names)} "
                f"(e.g. {task_name}/{names[0]}; a space may be written _ or -)"
            )
        rows = subtask_view(rows, task.subtask_column, subtask)
    return SubtaskData.from_pairs(
        subtask_name(spec), rows, tokenizer, fields=("question", "answer"), prepend_bos=prepend_bos
    )
