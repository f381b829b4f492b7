"""Reproduce BIMT's MLP results (Liu, Gan & Tegmark 2023): independence splits into two modules, modular addition
keeps a few embedding dimensions in groups.

Run from the shell (one thread, as long runs should)::

    modmask-lens reproduce independence --out runs/independence
    modmask-lens reproduce modular_addition --out runs/modadd

Each writes ``result.json`` (the numbers), ``history.csv`` (the training curve) and ``connectome.svg``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from modmask_lens.core.atomic_files import write_text_atomically
from modmask_lens.modularity.bimt import MODULAR_ADDITION, SYMBOLIC, BimtConfig, train_bimt
from modmask_lens.modularity.connectome import mlp_connectome
from modmask_lens.modularity.mlp import BimtMLP
from modmask_lens.modularity.modules import connected_modules
from modmask_lens.tasks.bimt_tasks import independence_data, modular_addition_data
from modmask_lens.viz.connectome import ConnectomeFrames, connectome_svg

INDEPENDENCE_OUTPUTS = ("(x1+x3)^3", "x2^2+sin(pi*x4)")


def reproduce_independence(
    config: BimtConfig = SYMBOLIC, seed: int = 0, relative_threshold: float = 0.05, frames: str | Path | None = None
) -> tuple[BimtMLP, dict, pd.DataFrame]:
    """Train BIMT's [4, 20, 20, 2] SiLU MLP on the independence task with the paper's symbolic settings.

    Returns:
        The model; a result with ``test_mse``, ``train_mse`` and ``modules`` (per connected component of weights
        ``>= relative_threshold`` of their matrix's largest: its input features, output formulas, number of hidden
        units, and the slots it occupies on each axis, which show whether BIMT placed it in one region); the training
        history.
    """
    data = independence_data(seed=seed)
    mlp = BimtMLP((4, 20, 20, 2), seed=seed)
    history = train_bimt(
        mlp,
        lambda: nn.functional.mse_loss(mlp(data.train_inputs), data.train_targets),
        config,
        callback=ConnectomeFrames(mlp.unit_graph(), frames) if frames else None,
    )
    with torch.no_grad():
        test_mse = float(nn.functional.mse_loss(mlp(data.test_inputs), data.test_targets))
        train_mse = float(nn.functional.mse_loss(mlp(data.train_inputs), data.train_targets))
    units = connected_modules(mlp.unit_graph(), relative_threshold)
    modules = []
    for _, members in units.groupby("module"):
        slots = members.groupby("axis")["unit"].apply(list).to_dict()
        modules.append(
            {
                "inputs": sorted(f"x{int(mlp.input_order[slot]) + 1}" for slot in slots.get("input", [])),
                "outputs": sorted(
                    INDEPENDENCE_OUTPUTS[int(mlp.output_order[slot])] for slot in slots.get("output", [])
                ),
                "hidden_units": sum(len(value) for axis, value in slots.items() if axis.startswith("hidden")),
                "slots": {axis: sorted(value) for axis, value in slots.items()},
            }
        )
    result = {
        "task": "independence",
        "seed": seed,
        "steps": config.steps,
        "test_mse": test_mse,
        "train_mse": train_mse,
        "relative_threshold": relative_threshold,
        "modules": modules,
        "modules_with_an_output": sum(bool(module["outputs"]) for module in modules),
    }
    return mlp, result, history


def reproduce_modular_addition(
    config: BimtConfig = MODULAR_ADDITION,
    modulus: int = 59,
    seed: int = 0,
    relative_norm: float = 0.1,
    frames: str | Path | None = None,
) -> tuple[BimtMLP, dict, pd.DataFrame]:
    """Train BIMT's modular-addition network (59 x 32 embedding, two tokens, [64, 50, 50, 59] SiLU MLP) on 80% of
    the pairs.

    Returns:
        The model; a result with train and test accuracy, the embedding dimensions in use (column norm ``>=
        relative_norm`` of the largest), their slots grouped into runs of adjacent slots, and the accuracy on all pairs
        with every other embedding dimension zeroed (BIMT's knockout); the training history.
    """
    data = modular_addition_data(modulus, seed=seed)
    mlp = BimtMLP((32, 50, 50, modulus), vocab_size=modulus, n_tokens=2, seed=seed)
    history = train_bimt(
        mlp,
        lambda: nn.functional.cross_entropy(mlp(data.train_tokens), data.train_labels),
        config,
        callback=ConnectomeFrames(mlp.unit_graph(), frames) if frames else None,
    )
    all_tokens = torch.cat([data.train_tokens, data.test_tokens])
    all_labels = torch.cat([data.train_labels, data.test_labels])
    with torch.no_grad():

        def accuracy(tokens: torch.Tensor, labels: torch.Tensor) -> float:
            return float((mlp(tokens).argmax(1) == labels).float().mean())

        train_accuracy, test_accuracy = (
            accuracy(data.train_tokens, data.train_labels),
            accuracy(data.test_tokens, data.test_labels),
        )
        column_norms = mlp.embedding.weight.norm(dim=0)
        used = torch.nonzero(column_norms >= relative_norm * column_norms.max()).flatten().tolist()
        original = mlp.embedding.weight.clone()
        unused = [slot for slot in range(column_norms.shape[0]) if slot not in used]
        mlp.embedding.weight[:, unused] = 0.0
        knockout_accuracy = accuracy(all_tokens, all_labels)
        mlp.embedding.weight.copy_(original)
    result = {
        "task": "modular_addition",
        "modulus": modulus,
        "seed": seed,
        "steps": config.steps,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "used_embedding_slots": used,
        "used_embedding_groups": _adjacent_runs(used),
        "relative_norm": relative_norm,
        "accuracy_with_only_used_dims": knockout_accuracy,
        "embedding_column_norms": [round(float(norm), 4) for norm in column_norms],
    }
    return mlp, result, history


def _adjacent_runs(slots: list[int]) -> list[list[int]]:
    """``[3, 4, 9, 10, 11]`` -> ``[[3, 4], [9, 10, 11]]``."""
    runs: list[list[int]] = []
    for slot in slots:
        if runs and slot == runs[-1][-1] + 1:
            runs[-1].append(slot)
        else:
            runs.append([slot])
    return runs


TASKS = {
    "independence": (reproduce_independence, SYMBOLIC),
    "modular_addition": (reproduce_modular_addition, MODULAR_ADDITION),
}


def run_task(task: str, out: Path, steps: int = 20_000, seed: int = 0, frames: bool = False) -> dict:
    """Run one of :data:`TASKS` and write ``result.json`` (the numbers), ``history.csv`` (the training curve) and
    ``connectome.svg`` (plus a connectome per logged step in ``frames/`` if ``frames``) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    run, base = TASKS[task]
    mlp, result, history = run(replace(base, steps=steps), seed=seed, frames=out / "frames" if frames else None)
    write_text_atomically(out / "result.json", json.dumps(result, indent=2))
    write_text_atomically(out / "history.csv", history.to_csv(index=False))
    write_text_atomically(out / "connectome.svg", connectome_svg(mlp_connectome(mlp.unit_graph()), title=task))
    return result
