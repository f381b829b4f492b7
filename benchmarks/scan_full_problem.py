"""The zoo SCAN target of the finder: a mask trained on the full problem (the simple split's train set) keeps the
full model's exact match on the simple test set (target: >= 98% of it), next to the same method on a randomly
initialised copy of the model (the null control).

Usage: python benchmarks/scan_full_problem.py [--steps 800] [--method faithful|csordas] [--eval-limit 2000]
[--max-loss-increase 0.02 --loss-increase-per example|token] (the default finder's constraint, for a sweep)
One torch thread; prints one row per model.
"""

from __future__ import annotations

import argparse
import time

import torch

from experiments.csordas import METHODS, limited_subtask, random_init_control
from modmask_lens import zoo
from modmask_lens.masks.config import LOSS_UNITS
from modmask_lens.tasks import scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--method", choices=sorted(METHODS), default="faithful")
    parser.add_argument("--eval-limit", type=int, default=2000)
    default = METHODS["faithful"].train_config
    parser.add_argument("--max-loss-increase", type=float, default=default.max_loss_increase)
    parser.add_argument("--loss-increase-per", default=default.loss_increase_per, choices=LOSS_UNITS)
    arguments = parser.parse_args()
    method = METHODS[arguments.method].with_steps(arguments.steps)
    constraint = (arguments.max_loss_increase, arguments.loss_increase_per)
    if arguments.method == "faithful":
        method = method.with_constraint(*constraint)
    elif constraint != (default.max_loss_increase, default.loss_increase_per):
        parser.error("--max-loss-increase and --loss-increase-per apply to --method faithful only")
    torch.set_num_threads(1)
    model = zoo.load("scan")
    data = scan.scan_task("simple")
    train = limited_subtask("simple", data["train"], model.tokenizer)
    test = limited_subtask("simple", data["test"], model.tokenizer, arguments.eval_limit)
    started = time.perf_counter()
    rows = random_init_control(model.bridge, train, test, method)
    rows["share of full"] = rows["mask accuracy"] / rows["full accuracy"]
    print(rows.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"method {arguments.method}, {method.train_config}, 1 thread, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
