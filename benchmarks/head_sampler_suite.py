"""Head-granularity sampler on the ground-truth suite: the library's finder (``TrainConfig()``, the faithful readout)
with ``sampler="hard-concrete"`` and with ``sampler="bernoulli"`` (the local expectation, estimating the default
``TrainConfig.heads_estimated_per_step`` heads per step; ``--heads-per-step N`` adds ``bernoulli-heads-N``, 0 for
every head every step), side by side in one process on one torch thread, per case, control and seed (``--method``
picks some). Writes ``OUT/<case>-<control>/{summary,runs}.csv`` (a case already written is skipped, so a stopped run
keeps what it finished) and prints the summary rows and wall times.

Run: ``HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/head_sampler_suite.py OUT --case entangled-head --control
none --seed 0 --seed 1 --seed 2`` (tables of docs/concepts.md#head-masks).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from modmask_lens.groundtruth import all_cases, run_suite
from modmask_lens.groundtruth.methods import FinderMethod
from modmask_lens.masks.config import TrainConfig

METHODS = ("hard-concrete", "bernoulli")
COLUMNS = ["case", "subtask", "method", "control", "seed", "precision", "recall", "auroc", "faithfulness"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--case", action="append", required=True, help="case, family or pair (repeats)")
    parser.add_argument("--control", action="append", default=None, help="none, random-init (repeats)")
    parser.add_argument("--seed", action="append", type=int, default=None, help="method seeds (repeats)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument(
        "--method", action="append", choices=METHODS, help="methods (repeats; default both, none with --heads-per-step)"
    )
    parser.add_argument(
        "--heads-per-step",
        action="append",
        type=int,
        default=[],
        help="also bernoulli-heads-N: bernoulli estimating N heads per step (0: every head; repeats)",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    training = dataclasses.replace(TrainConfig(), steps=arguments.steps)
    named = arguments.method if arguments.method is not None else [] if arguments.heads_per_step else METHODS
    methods = {name: FinderMethod(training, {"sampler": name}) for name in named} | {
        f"bernoulli-heads-{count}": FinderMethod(
            dataclasses.replace(training, heads_estimated_per_step=count or None), {"sampler": "bernoulli"}
        )
        for count in arguments.heads_per_step
    }
    for case in all_cases(arguments.case):
        for control in arguments.control or ["none"]:
            folder = arguments.out / f"{case.name.replace('/', '-')}-{control}"
            if (folder / "summary.csv").exists():
                continue
            tables = run_suite(
                methods, [case], ["head"], [control], method_seeds=tuple(arguments.seed or [0]), log=print
            )
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("summary", "runs"):
                tables[name].to_csv(folder / f"{name}.csv", index=False)
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(tables["summary"][[*COLUMNS, "kept_fraction", "true_fraction"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
