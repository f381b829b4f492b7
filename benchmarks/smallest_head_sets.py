"""The smallest sufficient head sets of a plant, by exhaustive search, beside the default finder's head mask
(docs/finder-study.md, "The readout's search skipped the smallest faithful mask").

For each subtask of a plant, on its training questions, one torch thread: every set of k heads (every other head
removed, as a head mask removes it) for k = 1, 2, ... until some set keeps at least 99% of the full model's exact
match, as the faithful readout asks. Prints those sets, how many of their heads the plant planted for the subtask,
and the heads the default finder keeps (600 steps, seed 0). A plant of 16 heads takes a few minutes; the count of
sets grows as ``C(heads, k)``, so this is for small plants only.

Run: ``python benchmarks/smallest_head_sets.py entangled-head-add-mul`` (a plant trained elsewhere:
``--directory DIR``, the folder ``python -m experiments.groundtruth.plant_training NAME --seed N --out DIR`` wrote).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from torch import Tensor

import modmask_lens as mm
from modmask_lens.groundtruth import baseline_methods, load_plant
from modmask_lens.groundtruth.evaluation import exact_match, masked_logits
from modmask_lens.groundtruth.metrics import unit_weight_masks

READOUT_SHARE = 0.99
"""A set suffices when it keeps this share of the full model's exact match (the faithful readout's default)."""


def selection(masks: mm.MaskSet, heads: tuple[int, ...]) -> dict[str, Tensor]:
    """Unit name -> kept heads, keeping the heads at flat indices ``heads`` (model order) and no other."""
    flat = torch.zeros(sum(logit.numel() for logit in masks.logits.values()), dtype=torch.bool)
    flat[list(heads)] = True
    return dict(zip(masks.logits, flat.split([logit.numel() for logit in masks.logits.values()])))


def smallest_sufficient(case, masks: mm.MaskSet, data: mm.SubtaskData) -> list[tuple[int, ...]]:
    """Every set of the fewest heads (flat indices) that keeps ``READOUT_SHARE`` of the full model's exact match."""
    required = READOUT_SHARE * exact_match(masked_logits(case.bridge, data), data)
    n_heads = sum(logit.numel() for logit in masks.logits.values())
    for size in range(n_heads):
        sufficient = [
            heads
            for heads in itertools.combinations(range(n_heads), size)
            if exact_match(masked_logits(case.bridge, data, unit_weight_masks(masks, selection(masks, heads))), data)
            >= required
        ]
        if sufficient:
            return sufficient
    return [tuple(range(n_heads))]  # every head: the full model


def named(masks: mm.MaskSet, heads: tuple[int, ...]) -> str:
    """``unit[head]`` names of flat head indices."""
    names = [f"{unit}[{head}]" for unit, logit in masks.logits.items() for head in range(logit.numel())]
    return ", ".join(names[index] for index in heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plant")
    parser.add_argument("--directory", type=Path, help="the plant's folder, for a plant trained elsewhere")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    case = load_plant(arguments.plant, arguments.directory)
    finder = baseline_methods(steps=600)["faithful"]
    for subtask, data in case.train.items():
        masks = finder(case.bridge, data, mm.MaskConfig(granularity="head"), 0)
        planted = torch.cat([case.truth[subtask]["head"][unit].flatten() for unit in masks.logits]).bool()
        found = torch.cat([kept.flatten() for kept in masks.kept_above(masks.threshold).values()])
        found_heads = tuple(int(index) for index in found.nonzero().flatten())
        print(f"{case.name} {subtask}: {int(planted.sum())} planted heads of {planted.numel()}")
        print(f"  finder keeps {len(found_heads)} ({int(planted[found].sum())} planted): {named(masks, found_heads)}")
        smallest = smallest_sufficient(case, masks, data)
        print(f"  smallest sufficient: {len(smallest)} set(s) of {len(smallest[0])} heads")
        for heads in smallest:
            inside = sum(bool(planted[index]) for index in heads)
            mark = "  (the finder's)" if heads == found_heads else ""
            print(f"    {inside} of {len(heads)} planted: {named(masks, heads)}{mark}")


if __name__ == "__main__":
    main()
