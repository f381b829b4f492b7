"""Reading a binary mask out of trained logits so that it stays faithful: the fewest top-scoring units that keep the
subtask's exact match.

``logit > 0`` (:meth:`MaskSet.binary`) is Csordás's readout. Measured on planted models and compiled tracr programs
(docs/finder-study.md), it can drop units a subtask needs together: trained logits rank the units well (AUROC 1.0 on
a disconnected plant's heads) while the threshold at 0 keeps half of the needed heads and the masked model scores
0.11. Ranking by logit and keeping the smallest top-k that stays faithful recovered all of them. This is the readout
of Edge Pruning and of the MIB circuit benchmark (a circuit at a size, chosen by score), with the size chosen by
faithfulness instead of fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modmask_lens.masks.apply import masked
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.data import SubtaskData, score_answers
from modmask_lens.masks.mask_set import MaskSet

EVALUATION_BATCH = 256  # examples per forward pass while searching


def _exact_match(bridge: nn.Module, data: SubtaskData, mask: BinaryMask | None) -> float:
    """Exact-match accuracy of ``data`` under ``mask`` (or the full model)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), EVALUATION_BATCH):
            input_ids, labels = data.batch(torch.arange(start, min(start + EVALUATION_BATCH, len(data))))
            if mask is None:
                correct += score_answers(bridge(input_ids), labels).n_correct
            else:
                with masked(bridge, mask, check_weights=False):
                    correct += score_answers(bridge(input_ids), labels).n_correct
    return correct / len(data)


def _top_units(masks: MaskSet, count: int) -> dict[str, Tensor]:
    """Unit name -> kept flags of the ``count`` highest logits over all units (ties broken by position)."""
    flat = torch.cat([masks.logits[unit.name].detach().flatten() for unit in masks.units])
    kept_flat = torch.zeros(flat.numel(), dtype=torch.bool)
    kept_flat[flat.argsort(descending=True, stable=True)[:count]] = True
    kept, start = {}, 0
    for unit in masks.units:
        kept[unit.name] = kept_flat[start : start + unit.numel].view(unit.shape)
        start += unit.numel
    return kept


def faithful_binary(bridge: nn.Module, masks: MaskSet, data: SubtaskData, tolerance: float = 0.01) -> BinaryMask:
    """The binary mask keeping the fewest highest-logit units whose exact match on ``data`` is at least
    ``(1 - tolerance)`` times the full model's.

    The count is found by bisection over ``0 .. number of logits`` (about ``log2(n)`` evaluations of ``data``).
    Bisection assumes that keeping more top units does not lower accuracy, so where that fails it may return more
    units than the fewest faithful count; it only settles on a count that passed, or on every unit, so the result
    is always faithful on ``data``. Pass held-out data to choose the size on examples the mask did not train on.

    Args:
        bridge: the model the mask is for.
        masks: trained logits; only their order matters.
        data: the subtask's examples.
        tolerance: accuracy that may be lost, as a fraction of the full model's (0.01: keep 99% of it).

    Example:
        >>> kept = faithful_binary(bridge, masks["jump"], jump_test)              # doctest: +SKIP
        >>> kept.kept_fraction(by="all")                                            # doctest: +SKIP
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance {tolerance} must lie in [0, 1): the fraction of full accuracy that may be lost")
    masks.check_model(bridge, check_weights=False)
    required = (1 - tolerance) * _exact_match(bridge, data, None)
    low, high = 0, sum(unit.numel for unit in masks.units)
    while low < high:
        middle = (low + high) // 2
        if _exact_match(bridge, data, masks.binary_from(_top_units(masks, middle))) >= required:
            high = middle
        else:
            low = middle + 1
    return masks.binary_from(_top_units(masks, low))
