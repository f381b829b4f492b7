"""The zoo: small transformers trained here on the offline tasks, shipped in the package, loaded offline.

>>> from modmask_lens import zoo                                                   # doctest: +SKIP
>>> bridge, tokenizer, task, card = zoo.load("scan")                               # doctest: +SKIP
>>> card.accuracies["test/all"]                                                    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modmask_lens.core.atomic_files import is_write_leftover
from modmask_lens.core.bridge import Bridge
from modmask_lens.tasks.catalog import TaskSpec, task_spec
from modmask_lens.zoo.cards import CARD_JSON, ModelCard, read_card

MODELS_DIR = Path(__file__).parent / "models"


class ZooModel(NamedTuple):
    """A loaded zoo model: a TransformerLens ``TransformerBridge``, its tokenizer, its task and its card."""

    bridge: Bridge
    tokenizer: PreTrainedTokenizerBase
    task: TaskSpec
    card: ModelCard


def available_models() -> list[str]:
    """Names of the shipped zoo models (folders with a card, less what a killed write left), sorted."""
    return sorted(path.parent.name for path in MODELS_DIR.glob(f"*/{CARD_JSON}") if not is_write_leftover(path.parent))


def model_dir(name: str) -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer, card) of zoo model ``name`` (``-`` and ``_`` alike:
    ``double_add`` is ``double-add``, as the task is called)."""
    path = MODELS_DIR / name.replace("_", "-")
    if not (path / CARD_JSON).exists():
        raise KeyError(
            f"no zoo model {name!r}; shipped: {', '.join(available_models()) or 'none'}. "
            f"Train it with `modmask-lens zoo train {name}`"
        )
    return path


def list_models() -> pd.DataFrame:
    """One row per shipped model and card accuracy: ``model``, ``task``, ``family``, ``parameters``,
    ``training_s``, ``split``, ``subtask``, ``accuracy`` (greedy exact match, 0..1)."""
    rows = []
    for name in available_models():
        card = read_card(MODELS_DIR / name)
        for key, accuracy in card.accuracies.items():
            split, subtask = key.split("/", 1)
            rows.append(
                {
                    "model": name,
                    "task": card.task,
                    "family": card.architecture["family"],
                    "parameters": card.parameter_count,
                    "training_s": card.wall_time_s,
                    "split": split,
                    "subtask": subtask,
                    "accuracy": accuracy,
                }
            )
    return pd.DataFrame(
        rows, columns=["model", "task", "family", "parameters", "training_s", "split", "subtask", "accuracy"]
    )


def describe_models() -> str:
    """One line per shipped model with its architecture and overall card accuracies, for ``modmask-lens zoo list``.

    Example line: ``scan  gpt2 3L d128  614,400 params  train 100.00%  test 99.90%``.
    """
    lines = []
    for name in available_models():
        card = read_card(MODELS_DIR / name)
        shape = f"{card.architecture['family']} {card.architecture['n_layers']}L d{card.architecture['d_model']}"
        overall = "  ".join(
            f"{key.split('/')[0]} {100 * value:.2f}%" for key, value in card.accuracies.items() if key.endswith("/all")
        )
        lines.append(f"{name}  {shape}  {card.parameter_count:,} params  {overall}")
    return "\n".join(lines)


def load(name: str, device: str = "cpu") -> ZooModel:
    """Boot zoo model ``name`` as a ``TransformerBridge`` offline, with its tokenizer, task and card."""
    from modmask_lens.core.booting import boot_transformers

    path = model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bridge = boot_transformers(str(path), device=device, tokenizer=tokenizer)
    card = read_card(path)
    return ZooModel(bridge=bridge, tokenizer=tokenizer, task=task_spec(card.task), card=card)
