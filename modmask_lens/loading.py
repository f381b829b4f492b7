"""Finding what a user names on the command line: a model (zoo name, local folder or hub id) and a subtask (a task,
a task's subtask view, or a JSONL file of prompt/completion pairs)."""

from __future__ import annotations

from pathlib import Path

from modmask_lens.core.data import SubtaskData


def load_bridge(name_or_path: str, device: str = "cpu"):
    """A ``TransformerBridge`` and its tokenizer for a zoo model name, a local Hugging Face folder, or a hub id.

    A hub id only works online (tests and CI run with ``HF_HUB_OFFLINE=1``). A folder without tokenizer files gives
    ``None`` as the tokenizer (whatever needs one then says so).

    Raises:
        ValueError: ``name_or_path`` is neither a zoo model nor a folder holding a model.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from modmask_lens import zoo

    if name_or_path in zoo.available_models():
        model = zoo.load(name_or_path, device=device)
        return model.bridge, model.tokenizer
    folder = Path(name_or_path)
    if folder.exists() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} holds no model (no config.json); pass a folder written by save_pretrained "
            f"or a zoo model ({', '.join(zoo.available_models())})"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.vocab_size == 0:  # transformers falls back to an empty tokenizer when the folder has none
        tokenizer = None
    return TransformerBridge.boot_transformers(name_or_path, device=device, tokenizer=tokenizer), tokenizer


def load_subtask(spec: str, tokenizer, split: str | None = None, seed: int = 0) -> SubtaskData:
    """The subtask named by ``spec``.

    Args:
        spec: ``path/to/file.jsonl`` (prompt/completion pairs; the subtask is named after the file), ``TASK`` (a
            built-in task's training split, e.g. ``scan``) or ``TASK/SUBTASK`` (one subtask view of it, e.g.
            ``scan/jump`` or ``addmul/add``).
        tokenizer: the model's tokenizer.
        split: which split of a built-in task (default: the task's training split).
        seed: seed of the task's random parts.
    """
    from modmask_lens.tasks.catalog import task_spec
    from modmask_lens.tasks.views import subtask_view

    if spec.endswith(".jsonl"):
        return SubtaskData.from_pairs(Path(spec).stem, Path(spec), tokenizer)
    task_name, _, subtask = spec.partition("/")
    task = task_spec(task_name)
    rows = task.build(seed)[split or task.train_split]
    if subtask:
        if task.subtask_column is None:
            raise ValueError(f"task {task_name!r} has no subtasks; use --task {task_name}")
        rows = subtask_view(rows, task.subtask_column, subtask)
        if len(rows) == 0:
            raise ValueError(f"task {task_name!r} has no subtask {subtask!r}")
    return SubtaskData.from_pairs(spec.replace("/", "-"), rows, tokenizer, fields=("question", "answer"))
