"""How the faithful readout sizes a SCAN split mask: the mask as trained (logit > 0) against the top-logit masks the
readout searches, on the 256 training commands the readout judges (spread through the split's) and on its held-out
test commands; the readout and the mask as trained also on every training command.

Trains the addprim_jump mask of ``modmask-lens reproduce scan`` (the default finder, 800 steps, batch 64) on the zoo
``scan`` model, one torch thread, and prints exact match per kept fraction (docs/results.md, SCAN section).

Run: ``python benchmarks/scan_split_readout.py [--split addprim_jump] [--test-limit 500]``; ``--steps``,
``--max-loss-increase`` and ``--loss-increase-per`` change the default finder's settings for a sweep.
"""

from __future__ import annotations

import argparse

import torch

import modmask_lens as mm
from experiments.csordas import METHODS, limited_subtask
from modmask_lens import zoo
from modmask_lens.masks.config import LOSS_UNITS
from modmask_lens.masks.training import READOUT_EXAMPLES
from modmask_lens.tasks import scan

KEPT_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MASK_NAMES = {"simple": "simple", "addprim_jump": "jump", "length": "length", "addprim_turn_left": "turn_left"}
"""The reproduction's name for each split's mask: mask noise is drawn from a stream seeded by the mask's name, so
the same name gives the same mask as ``modmask-lens reproduce scan`` (another name, another draw: the readout of
the addprim_jump mask kept 77% of the weights under "jump" and 54% under "addprim_jump")."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="addprim_jump", choices=sorted(MASK_NAMES))
    parser.add_argument("--test-limit", type=int, default=500)
    method = METHODS["faithful"]
    parser.add_argument("--steps", type=int, default=method.train_config.steps)
    parser.add_argument("--max-loss-increase", type=float, default=method.train_config.max_loss_increase)
    parser.add_argument("--loss-increase-per", default=method.train_config.loss_increase_per, choices=LOSS_UNITS)
    arguments = parser.parse_args()
    method = method.with_steps(arguments.steps)
    method = method.with_constraint(arguments.max_loss_increase, arguments.loss_increase_per)
    torch.set_num_threads(1)
    model = zoo.load("scan")
    data = scan.scan_task(arguments.split)
    train = limited_subtask(MASK_NAMES[arguments.split], data["train"], model.tokenizer)
    test = limited_subtask(f"{arguments.split}-test", data["test"], model.tokenizer, arguments.test_limit)
    masks = mm.train_masks(model.bridge, train, method.mask_config, method.train_config, progress=False)[train.name]
    judged = train.evenly_spaced(READOUT_EXAMPLES)  # the examples the readout chose the mask's size on

    def accuracies(mask: mm.BinaryMask | None) -> str:
        return f"train {mm.objective_metric(model.bridge, judged, mm.AnswerCrossEntropy(), mask):.3f} " + (
            f"test {mm.objective_metric(model.bridge, test, mm.AnswerCrossEntropy(), mask):.3f}"
        )

    print(f"threads: 1; {method.train_config}; full model: {accuracies(None)}")
    readout = masks.binary()
    trained = masks.binary_from(masks.kept_above(0.0))
    for label, mask in ((f"readout (threshold {masks.threshold:.2f})", readout), ("as trained (logit > 0)", trained)):
        every = mm.objective_metric(model.bridge, train, mm.AnswerCrossEntropy(), mask)
        print(f"{label}: kept {mask.count / mask.total:.3f}, {accuracies(mask)}, all {len(train)} train {every:.3f}")
    descending = torch.cat([logit.detach().flatten() for logit in masks.logits.values()]).sort(descending=True).values
    for fraction in KEPT_FRACTIONS:
        count = int(fraction * descending.numel())
        threshold = float(descending[count - 1] + descending[count]) / 2
        top = masks.binary_from(masks.kept_above(threshold))
        print(f"top {fraction:.0%} (threshold {threshold:.2f}): kept {top.count / top.total:.3f}, {accuracies(top)}")


if __name__ == "__main__":
    main()
