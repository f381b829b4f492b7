"""The main job of ``make demo``: the SCAN subnetworks of the shipped zoo model, with an offline report.

Boots the zoo's ``scan`` model (a GPT-2 trained on SCAN's simple split), trains one per-weight mask for the commands
that use ``jump`` and one for those that use ``walk`` (training views) with the library's default finder (the fewest
weights that keep the subtask), saves them, evaluates every mask and its inverse on the test commands, and writes a
summary (kept fractions, overlap, accuracy) and an offline HTML report (circuits, their overlap, attention through
the masks) to the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from modmask_lens import zoo
from modmask_lens.analysis import mask_accuracy, pairwise_overlap, paper_table
from modmask_lens.core.atomic_files import write_text_atomically
from modmask_lens.core.data import SubtaskData
from modmask_lens.loading import load_subtask
from modmask_lens.masks.config import TrainConfig
from modmask_lens.masks.io import save_masks
from modmask_lens.masks.training import MaskTrainer
from modmask_lens.viz import write_report

SUBTASKS = ("jump", "walk")
PROMPT = "jump twice and walk"
EVALUATION_EXAMPLES = 300
DEMO_TRAINING = TrainConfig(steps=200, batch_size=32)
"""Sized for about 2 minutes on 2 CPU cores; docs/results.md has longer runs."""


def run_demo(
    output: Path, train_config: TrainConfig = DEMO_TRAINING, progress: bool = True, restart: bool = False
) -> Path:
    """Run the whole demo and return the path of its summary (``summary.md`` in ``output``)."""
    output.mkdir(parents=True, exist_ok=True)
    bridge, tokenizer, _, card = zoo.load("scan")
    training = [load_subtask(f"scan/{name}", tokenizer, seed=card.seed) for name in SUBTASKS]
    evaluation, test_sizes = {}, {}
    for name in SUBTASKS:
        test = load_subtask(f"scan/{name}", tokenizer, split="test", seed=card.seed)
        evaluation[test.name] = SubtaskData(
            test.name, test.input_ids[:EVALUATION_EXAMPLES], test.labels[:EVALUATION_EXAMPLES]
        )
        test_sizes[test.name] = len(test)
    trainer = MaskTrainer(
        bridge,
        training,
        train_config=train_config,
        checkpoint_dir=output / "checkpoints",
        progress=progress,
        restart=restart,
    )
    mask_sets = trainer.train()
    binaries = {name: mask_set.binary() for name, mask_set in mask_sets.items()}
    for name, mask_set in mask_sets.items():
        save_masks(mask_set, output / f"masks-{name}.safetensors")

    kept = pd.concat([binary.kept_fraction(by="layer_role") for binary in binaries.values()], ignore_index=True)
    overlap = pairwise_overlap(binaries, by="layer_role")
    accuracy = mask_accuracy(bridge, binaries, evaluation)
    table = paper_table(accuracy)
    prompt = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    write_report(
        output / "report.html",
        bridge,
        mask_sets,
        prompt,
        data=evaluation,
        token_labels=tokenizer.convert_ids_to_tokens(prompt.tolist()),
        title="modmask-lens demo: SCAN subnetworks of the zoo model",
        settings=train_config.to_dict(),
    )
    for name, frame in (("kept_fraction", kept), ("overlap", overlap), ("accuracy", accuracy)):
        write_text_atomically(output / f"{name}.csv", frame.to_csv(index=False))
    summary = {
        "model": "zoo/scan",
        "model_test_exact_match": card.accuracies.get("test/all"),
        "subtasks": [data.name for data in training],
        "test_commands_scored": {name: [len(data), test_sizes[name]] for name, data in evaluation.items()},
        "train_config": train_config.to_dict(),
        "kept_fraction": {name: binary.count / binary.total for name, binary in binaries.items()},
        "accuracy": accuracy.astype(object).where(accuracy.notna(), None).to_dict(orient="records"),  # NaN: null
    }
    write_text_atomically(output / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return write_text_atomically(
        output / "summary.md",
        "# modmask-lens demo\n\n"
        f"Per-weight masks of the zoo's SCAN model for the commands with {' and '.join(SUBTASKS)}, found by the "
        f"library's default finder (the fewest weights that keep each subtask); {train_config.steps} steps. "
        "Report: report.html.\n\n"
        "## Exact-match accuracy on test commands: full model, mask, inverse mask\n\n"
        f"On the first {EVALUATION_EXAMPLES} test commands of each subtask ("
        + ", ".join(f"{name}: {len(data)} of {test_sizes[name]}" for name, data in evaluation.items())
        + f").\n\n```\n{table.to_string()}\n```\n\n"
        f"## Kept fraction per layer and role\n\n```\n{kept.to_string(index=False)}\n```\n\n"
        f"## Overlap of the two masks\n\n```\n{overlap.to_string(index=False)}\n```\n",
    )
