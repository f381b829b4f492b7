"""Model cards of the zoo: what a model was trained on, how, and how accurate it is (JSON plus Markdown)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from modmask_lens.core.atomic_files import write_text_atomically

CARD_JSON, CARD_MARKDOWN = "card.json", "card.md"


@dataclass(frozen=True)
class ModelCard:
    """A zoo model's card.

    ``accuracies`` maps ``"<split>/<subtask>"`` (``subtask`` is ``all`` for the whole split) to greedy exact-match
    accuracy in 0..1, measured on the full split after training. ``wall_time_s`` is training time in seconds.
    """

    name: str
    task: str
    task_description: str
    architecture: dict
    parameter_count: int
    training_command: str
    recipe: dict
    seed: int
    torch_threads: int
    wall_time_s: float
    accuracies: dict[str, float]

    def to_markdown(self) -> str:
        """The card as a Markdown page."""
        architecture = ", ".join(f"{key}={value}" for key, value in self.architecture.items())
        rows = "\n".join(f"| {key} | {100 * value:.2f}% |" for key, value in self.accuracies.items())
        return (
            f"# Zoo model `{self.name}`\n\n"
            f"- Task: `{self.task}` ({self.task_description})\n"
            f"- Architecture: {architecture}\n"
            f"- Parameters: {self.parameter_count:,}\n"
            f"- Training command: `{self.training_command}`\n"
            f"- Objective: {self.objective()}\n"
            f"- Seed: {self.seed}; torch threads: {self.torch_threads}; "
            f"wall time: {self.wall_time_s:.0f} s ({self.wall_time_s / 60:.1f} min)\n\n"
            "## Greedy exact-match accuracy\n\n| split/subtask | accuracy |\n| --- | --- |\n"
            f"{rows}\n"
        )

    def objective(self) -> str:
        """What the training minimised: the task loss alone, or with a modular-training term."""
        if self.recipe.get("bimt"):
            return (
                "task loss + BIMT connection cost, with neuron/head/residual swaps (settings: card.json `recipe.bimt`)"
            )
        if self.recipe.get("clusterability"):
            return "task loss - clusterability reward (settings: card.json `recipe.clusterability`)"
        return "task loss (cross-entropy on answer tokens and EOS)"


def write_card(card: ModelCard, folder: Path) -> None:
    """Write ``card.json`` and ``card.md`` into ``folder``."""
    write_text_atomically(folder / CARD_JSON, json.dumps(asdict(card), indent=2) + "\n")
    write_text_atomically(folder / CARD_MARKDOWN, card.to_markdown())


def read_card(folder: Path) -> ModelCard:
    """The :class:`ModelCard` stored in ``folder/card.json``."""
    path = folder / CARD_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train the model with `modmask-lens zoo train NAME`")
    return ModelCard(**json.loads(path.read_text()))
