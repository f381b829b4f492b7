"""Why the necessity constraint does not single out an entangled plant's planted set (docs/finder-study.md, "A
necessity constraint").

For one subtask of a plant at one granularity, on all of its training questions, one torch thread: what removing a
set of units does to the subtask and to the other subtask (exact match, and the subtask's complement loss capped as
:mod:`modmask_lens.masks.necessity` caps it, over the sum of its caps), for

- the planted set;
- the mask trained with ``TrainConfig(steps=STEPS, complement_loss_fraction=q)``, as trained (logit > 0) and as read
  out (its threshold);
- two random sets as large as the trained mask's logit > 0.

Run: ``python benchmarks/necessity_diagnostics.py entangled-neuron/add-mul neuron mul 0.95``
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

import modmask_lens as mm
from modmask_lens.core.scoring import answer_losses, score_answers
from modmask_lens.groundtruth import all_cases
from modmask_lens.groundtruth.metrics import auroc, flat_scores
from modmask_lens.masks.necessity import complement_caps, complement_losses, empty_losses

STEPS = 600
RANDOM_DRAWS = 2


def removal_effect(case, masks: mm.MaskSet, removed: dict[str, Tensor], subtask: str) -> str:
    """Exact match and capped complement loss (over its cap) of ``subtask`` with the ``removed`` units taken out."""
    data = case.train[subtask]
    batch = data.examples(torch.arange(len(data)))
    sample = {
        member.path: unit.expand(removed[unit.name].float(), member) for unit in masks.units for member in unit.members
    }
    with torch.no_grad():
        full = answer_losses(mm.masked_call(case.bridge, {}, case.bridge, batch.input_ids), batch.labels)
        caps = complement_caps(full, empty_losses(case.bridge, masks, batch))
        losses = complement_losses(case.bridge, masks, sample, batch)
        kept = {path: 1 - mask for path, mask in sample.items()}
        score = score_answers(mm.masked_call(case.bridge, kept, case.bridge, batch.input_ids), batch.labels)
    capped = float(torch.minimum(losses, caps).sum() / caps.sum())
    return f"{subtask} {score.n_correct / score.n_examples:.2f} (capped {capped:.2f})"


def main(case_name: str, granularity: str, subtask: str, fraction: float) -> None:
    torch.set_num_threads(1)
    case = all_cases([case_name])[0]
    other = next(name for name in case.train if name != subtask)
    masks = mm.MaskSet.for_bridge(case.bridge, mm.MaskConfig(granularity=granularity), name=subtask)
    truth = case.truth[subtask][granularity]

    def report(label: str, removed: dict[str, Tensor]) -> None:
        share = sum(int(flags.sum()) for flags in removed.values()) / sum(flags.numel() for flags in removed.values())
        effects = [removal_effect(case, masks, removed, name) for name in (subtask, other)]
        print(f"{label:24s} {share:.2f} of the units removed -> {effects[0]}, {effects[1]}", flush=True)

    report("planted", {unit.name: truth[unit.name].bool() for unit in masks.units})
    config = mm.TrainConfig(steps=STEPS, complement_loss_fraction=fraction)
    trained = mm.train_masks(case.bridge, case.train[subtask], masks.config, config, progress=False)[subtask]
    logits = {name: logit.detach() for name, logit in trained.logits.items()}
    print(f"trained (q {fraction}, {STEPS} steps): AUROC {auroc(*flat_scores(logits, truth)):.2f}")
    report("trained, logit > 0", {name: logit > 0 for name, logit in logits.items()})
    report("trained, read out", {name: logit > trained.threshold for name, logit in logits.items()})
    n_removed = sum(int((logit > 0).sum()) for logit in logits.values())
    sizes = [logit.numel() for logit in logits.values()]
    generator = torch.Generator().manual_seed(0)
    for draw in range(RANDOM_DRAWS):
        flags = torch.zeros(sum(sizes), dtype=torch.bool)
        flags[torch.randperm(sum(sizes), generator=generator)[:n_removed]] = True
        parts = dict(zip(logits, flags.split(sizes)))
        report(f"random, same size ({draw})", {name: parts[name].reshape(logits[name].shape) for name in logits})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
