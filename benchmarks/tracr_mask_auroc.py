"""How well the default mask finder recovers the shipped tracr circuits: AUROC of trained mask logits against the
ground truth, at head and neuron granularity, on one thread, printed as one line per (program, granularity).

AUROC is the Mann-Whitney rank statistic: the chance that a used unit's logit exceeds an unused one's (ties count
half); it is undefined when every unit is used. At neuron granularity it is also printed for whole MLP layers (a
layer scored by its largest neuron logit, used when any of its neurons is), the level at which tracr's truth is exact.
Also printed: how many units the mask as read out keeps (``MaskSet.threshold``: the faithful readout by default) and
its exact match.

Run: ``OMP_NUM_THREADS=1 python benchmarks/tracr_mask_auroc.py --steps 2000``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

from modmask_lens import MaskConfig, TrainConfig, train_masks
from modmask_lens.analysis.accuracy import exact_match
from modmask_lens.groundtruth.tracr_cases import load_tracr_case, tracr_program_names


def auroc(scores: Tensor, used: Tensor) -> float:
    """P(score of a used unit > score of an unused one) + 0.5 P(tie); NaN without both kinds."""
    positive, negative = scores[used], scores[~used]
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    difference = positive[:, None] - negative[None, :]
    return float(((difference > 0).float() + 0.5 * (difference == 0).float()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--programs", nargs="*", default=tracr_program_names())
    parser.add_argument("--granularities", nargs="*", default=["head", "neuron"], choices=["head", "neuron"])
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for name in arguments.programs:
        case = load_tracr_case(name)
        data = case.train[name]
        for granularity in arguments.granularities:
            started = time.perf_counter()
            masks = train_masks(
                case.bridge,
                data,
                mask_config=MaskConfig(granularity=granularity),
                train_config=TrainConfig(steps=arguments.steps),
                progress=False,
            )[name]
            seconds = time.perf_counter() - started
            truth = case.truth[name][granularity]
            scores = torch.cat([masks.logits[unit].detach().flatten() for unit in truth])
            used = torch.cat([truth[unit].flatten() for unit in truth])
            binary = masks.binary()
            kept = int(sum((masks.logits[unit].detach() > masks.threshold).sum() for unit in truth))
            layers = ""
            if granularity == "neuron":
                layer_scores = torch.stack([masks.logits[unit].detach().max() for unit in truth])
                layer_used = torch.stack([truth[unit].any() for unit in truth])
                layers = f"mlp-layer auroc {auroc(layer_scores, layer_used):.3f} ({int(layer_used.sum())} used), "
            print(
                f"{name} {granularity}: auroc {auroc(scores, used):.3f}, {layers}"
                f"used {int(used.sum())}/{used.numel()}, "
                f"kept {kept}, exact_match {exact_match(case.bridge, case.test[name], binary):.3f}, "
                f"steps {arguments.steps}, wall {seconds:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
