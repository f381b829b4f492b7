"""Why the neuron plants are not solved (docs/finder-study.md): sufficiency of random subsets of each subtask's
planted neurons, and the AUROC of two single-neuron necessity scores in the full model.

For each subtask of a plant, on its training questions, one torch thread:

- exact match with a random 75% / 50% of its planted neurons kept and every other neuron removed (4 draws each);
- AUROC against the planted neurons of (a) the loss increase when one neuron alone is zeroed in the full model and
  (b) minus the gradient of the loss with respect to that neuron's mask at the full model (attribution patching);
- the smallest subset of its planted neurons that greedy pruning finds sufficient alone: from the planted set (every
  other neuron removed), repeatedly remove the neuron whose removal leaves the highest exact match (then the lowest
  loss), while exact match stays >= 0.99 (the readout's bar).

Run: ``python benchmarks/neuron_plant_diagnostics.py entangled-neuron-add-mul partly-shared-add-mul`` (a plant's
folder, the ``--out`` of ``python -m experiments.groundtruth.plant_training``, also works)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

import modmask_lens as mm
from modmask_lens.core.scoring import AnswerScore, score_answers
from modmask_lens.groundtruth import load_plant, unit_scores

SUBSET_FRACTIONS = (0.75, 0.5)
DRAWS = 4
SUFFICIENT = 0.99  # exact match a pruned subset must keep (the faithful readout's bar)


def neuron_score(case, masks: mm.MaskSet, kept: dict[str, Tensor], data: mm.SubtaskData) -> AnswerScore:
    """Answer score of ``data`` with each neuron unit scaled by ``kept`` (unit name -> values; absent: 1)."""
    weight_masks = {
        member.path: unit.expand(kept.get(unit.name, torch.ones(unit.shape)), member)
        for unit in masks.units
        for member in unit.members
    }
    return score_answers(mm.masked_call(case.bridge, weight_masks, case.bridge, data.input_ids), data.labels)


def subset_accuracies(case, masks, subtask: str, fraction: float, generator) -> list[float]:
    """Exact match with a random ``fraction`` of the subtask's planted neurons kept and all others removed."""
    truth = case.truth[subtask]["neuron"]
    accuracies = []
    for _ in range(DRAWS):
        kept = {name: ((torch.rand(t.shape, generator=generator) < fraction) & t).float() for name, t in truth.items()}
        with torch.no_grad():
            score = neuron_score(case, masks, kept, case.train[subtask])
        accuracies.append(score.n_correct / score.n_examples)
    return accuracies


def greedy_sufficient_subset(case, masks, subtask: str) -> tuple[int, int]:
    """(neurons left, planted neurons) after greedy pruning of the subtask's planted set, everything else removed."""
    kept = {name: t.float().clone() for name, t in case.truth[subtask]["neuron"].items()}
    planted = sum(int(t.sum()) for t in kept.values())
    data = case.train[subtask]
    while True:
        best = None  # ((exact match, -loss), unit name, index)
        for name, values in kept.items():
            for index in values.nonzero().flatten().tolist():
                values[index] = 0
                with torch.no_grad():
                    score = neuron_score(case, masks, kept, data)
                values[index] = 1
                rank = (score.n_correct / score.n_examples, -float(score.loss_sum) / score.n_tokens)
                if best is None or rank > best[0]:
                    best = (rank, name, index)
        if best is None or best[0][0] < SUFFICIENT:
            return sum(int(values.sum()) for values in kept.values()), planted
        kept[best[1]][best[2]] = 0


def necessity_scores(case, masks, subtask: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per neuron: the loss increase when it alone is zeroed, and minus the loss gradient at the full mask."""
    data, names = case.train[subtask], list(case.truth[subtask]["neuron"])
    shapes = {unit.name: unit.shape for unit in masks.units if unit.name in names}
    full_mask = {name: torch.ones(shape, requires_grad=True) for name, shape in shapes.items()}
    score = neuron_score(case, masks, full_mask, data)
    (score.loss_sum / score.n_tokens).backward()
    base = float(score.loss_sum.detach()) / score.n_tokens
    ablation = {}
    with torch.no_grad():
        for name, shape in shapes.items():
            increases = torch.zeros(shape)
            for index in range(shape[0]):
                alone = torch.ones(shape)
                alone[index] = 0
                removed = neuron_score(case, masks, {name: alone}, data)
                increases[index] = float(removed.loss_sum) / removed.n_tokens - base
            ablation[name] = increases
    return ablation, {name: -value.grad for name, value in full_mask.items()}


def main(plants: list[str]) -> None:
    torch.set_num_threads(1)
    print("threads: 1")
    for plant in plants:
        case = load_plant(Path(plant).name, Path(plant)) if Path(plant).is_dir() else load_plant(plant)
        masks = mm.MaskSet.for_bridge(case.bridge, mm.MaskConfig(granularity="neuron"))
        generator = torch.Generator().manual_seed(0)
        scores = {subtask: necessity_scores(case, masks, subtask) for subtask in case.truth}
        for subtask in case.truth:
            for fraction in SUBSET_FRACTIONS:
                accuracies = subset_accuracies(case, masks, subtask, fraction, generator)
                print(f"{plant} {subtask}: {fraction:.0%} of its planted neurons alone: {accuracies}")
            left, planted = greedy_sufficient_subset(case, masks, subtask)
            print(f"{plant} {subtask}: greedy pruning leaves {left} of its {planted} planted neurons sufficient")
        for kind, index in (("single-neuron ablation", 0), ("attribution gradient", 1)):
            # unit_scores keeps a unit where its score > 0; only the AUROC (a ranking) is read here.
            table = unit_scores(case, {subtask: pair[index] for subtask, pair in scores.items()}, "neuron")
            for row in table.itertuples():
                print(f"{plant} {row.subtask}: AUROC of the {kind}: {row.auroc:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["entangled-neuron-add-mul", "partly-shared-add-mul"])
