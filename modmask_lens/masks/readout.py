"""Reading a binary mask out of trained logits so that it stays faithful: the fewest top-scoring units that keep the
subtask's exact match.

``logit > 0`` is Csordás's readout. Measured on planted models and compiled tracr programs
(docs/finder-study.md), it can drop units a subtask needs together: trained logits rank the units well (AUROC 1.0 on
a disconnected plant's heads) while the threshold at 0 keeps half of the needed heads and the masked model scores
0.11. Ranking by logit and keeping the smallest top-k that stays faithful recovered all of them. This is the readout
of Edge Pruning and of the MIB circuit benchmark (a circuit at a size, chosen by score), with the size chosen by
faithfulness instead of fixed.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.evaluation import objective_loss, objective_metric, reaches_metric
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective

SCANNED_COUNTS = 256
"""The faithful readout tries every smaller count when its search settles on at most this many units (up to one
pass over the data per count; head masks and sparse neuron masks settle under it, most weight masks above)."""


def faithful_threshold(
    bridge: nn.Module,
    masks: MaskSet,
    data: SubtaskData,
    tolerance: float = 0.01,
    objective: Objective = AnswerCrossEntropy(),
) -> float:
    """The logit threshold keeping the fewest highest-logit units whose exact match on ``data`` is at least
    ``(1 - tolerance)`` times the full model's: midway between the last kept and the first removed logit.

    The search starts from the mask's own readout, the units with logit > 0. Accuracy is not monotone in the count
    beyond it: training removed the low-logit units, and the kept ones came to work without them, so adding some of
    them back can break the subtask (measured: the double-addition control mask scored 1.00 with its 5.1% of
    weights above 0 and 0.86 with 6.6%). So the search never assumes monotonicity across that point:

    - if the units above 0 pass, it bisects between no unit and them (about ``log2(n)`` evaluations);
    - otherwise it adds units in steps of 1/64 of them all, doubling each time, until a count passes (every unit
      always does), then bisects between the last count that failed and that one.

    Accuracy need not be monotone below that point either, so where the search settles on at most
    :data:`SCANNED_COUNTS` units, every smaller count is then tried in increasing order and the first that passes is
    kept: the fewest faithful count, exactly. Measured on an entangled-head plant the suite does not ship
    (docs/finder-study.md, "The readout's search skipped the smallest faithful mask"): the 4 highest-logit heads
    passed, 5 to 9 failed (the fifth, another subtask's head, interferes) and 10 passed, so the bisection kept 10.
    Past that many units (most weight masks) a scan would cost one pass over ``data`` per count, and the result may
    keep more units than the fewest faithful count.

    It only settles on a count that passed, so the result is faithful on ``data`` (logits tied across a count's
    threshold are removed together, and each count is judged by the mask it actually keeps). Pass held-out data to
    choose the size on examples the mask did not train on.

    Args:
        bridge: the model the mask is for.
        masks: trained logits; only their order matters.
        data: the subtask's examples.
        tolerance: accuracy that may be lost, as a fraction of the full model's (0.01: keep 99% of it).
        objective: whose metric is kept (:func:`~modmask_lens.objective_metric`; default: exact match).
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance {tolerance} must lie in [0, 1): the fraction of full accuracy that may be lost")
    masks.check_model(bridge, check_weights=False)
    descending = torch.cat([logit.detach().flatten() for logit in masks.logits.values()]).sort(descending=True).values

    def threshold_keeping(count: int) -> float:
        if count == 0:
            return float(descending[0]) + 1.0
        if count == descending.numel():
            return float(descending[-1]) - 1.0
        return float(descending[count - 1] + descending[count]) / 2

    full = objective_metric(bridge, data, objective)
    if full <= 0:
        raise ValueError(
            f"the full model's {objective.metric} on the {len(data)} examples of {data.name!r} is {full}, so no mask "
            "size keeps it: check the data (answers, tokenizer), or read the mask out at logit > 0"
        )
    required = (1 - tolerance) * full

    judged: dict[int, bool] = {}

    def passes(count: int) -> bool:
        if count not in judged:
            kept = masks.binary_from(masks.kept_above(threshold_keeping(count)))
            judged[count] = reaches_metric(bridge, data, objective, kept, required)
        return judged[count]

    total = descending.numel()
    above_zero = int((descending > 0).sum())
    if passes(above_zero):
        low, high = 0, above_zero
    else:
        failed, step = above_zero, -(-total // 64)
        high = min(total, above_zero + step)
        while high < total and not passes(high):
            failed, step = high, 2 * step
            high = min(total, high + step)
        low = failed + 1
    while low < high:  # ``high`` passes (or keeps every unit)
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle + 1
    if high <= SCANNED_COUNTS:  # ``high`` passed, or is every unit (kept unjudged where no smaller count passes)
        high = next((count for count in range(high) if passes(count)), high)
    return threshold_keeping(high)


def faithful_binary(
    bridge: nn.Module,
    masks: MaskSet,
    data: SubtaskData,
    tolerance: float = 0.01,
    objective: Objective = AnswerCrossEntropy(),
) -> BinaryMask:
    """The binary mask of :func:`faithful_threshold`: the fewest highest-logit units that keep at least
    ``(1 - tolerance)`` of the full model's exact match on ``data``.

    Example:
        >>> kept = faithful_binary(bridge, masks["jump"], jump_test)              # doctest: +SKIP
        >>> kept.kept_fraction(by="all")                                            # doctest: +SKIP
    """
    masks.check_model(bridge)
    _warn_if_not_trained_with(masks, objective)
    return masks.binary_from(masks.kept_above(faithful_threshold(bridge, masks, data, tolerance, objective)))


def _warn_if_not_trained_with(masks: MaskSet, objective: Objective) -> None:
    """Warn where ``objective`` is not the one ``masks`` was trained with (``MaskSet.objective``)."""
    if objective.to_dict() != masks.objective:
        warnings.warn(
            f"mask {masks.name!r} was trained with the objective {masks.objective}, and is read here with "
            f"{objective.to_dict()}; pass objective= the mask's own objective to measure what it was trained to keep",
            stacklevel=3,
        )


def marginal_gains(
    bridge: nn.Module,
    masks: MaskSet,
    data: SubtaskData,
    objective: Objective = AnswerCrossEntropy(),
    max_units: int = SCANNED_COUNTS,
) -> dict[str, Tensor]:
    """For each unit the mask's readout leaves out, how much adding it back alone lowers ``objective``'s loss on
    ``data``: the loss with the units above :attr:`MaskSet.threshold` minus the loss with those and this unit, in
    the objective's unit (nats per answer token for answer cross-entropy; > 0: the unit helps the circuit).

    This orders the units below the readout, where the trained logits say little: training pushed them all down,
    in an order set by the path it took. Measured on entangled-head plants the suite does not ship
    (docs/finder-study.md, "Ordering the units a mask leaves out"), a subtask's heads that its circuit does not need
    lower the loss when added back, while another subtask's heads interfere. Where the other subtask's units
    change nothing (a disconnected plant) and the subtask's own left-out units interfere, and for single neurons,
    the logits rank better.

    Args:
        bridge: the model the mask is for.
        masks: trained logits and their readout threshold.
        data: the subtask's examples.
        objective: whose loss is measured (default: the answers' cross-entropy; warns where the mask was trained
            with another, ``MaskSet.objective``).
        max_units: a cost guard: refuse a mask that leaves out more units than this (one pass over ``data`` each).

    Returns:
        Unit name -> float32 gains of the unit's logit shape, NaN where the readout keeps the unit.

    Raises:
        TypeError: when ``masks`` is not one :class:`MaskSet` (e.g. the dict :func:`train_masks` returns).
        ModelMismatch: when the mask was not made for ``bridge`` (its weights included).
        ValueError: when the readout leaves out more than ``max_units`` units.

    Example:
        >>> gains = marginal_gains(bridge, masks["add"], add_train)                      # doctest: +SKIP
        >>> gains["blocks.1.attn"]                                                        # doctest: +SKIP
        tensor([   nan, 0.0411,    nan, -0.0071, ...])
    """
    if not isinstance(masks, MaskSet):
        raise TypeError(
            f"marginal_gains takes one subtask's MaskSet, not a {type(masks).__name__}: pass masks[name] of the "
            "dict train_masks returns"
        )
    masks.check_model(bridge)
    _warn_if_not_trained_with(masks, objective)
    kept = masks.kept_above(masks.threshold)
    left_out = sum(int((~flags).sum()) for flags in kept.values())
    if left_out > max_units:
        raise ValueError(
            f"the readout leaves out {left_out:,} units, more than max_units={max_units} (one pass over the data "
            "each): pass a larger max_units, or rank a coarser granularity (heads, neurons)"
        )
    base_loss = objective_loss(bridge, data, objective, masks.binary_from(kept))
    gains = {name: torch.full(flags.shape, math.nan, device=flags.device) for name, flags in kept.items()}
    for name, flags in kept.items():
        for index in torch.nonzero(~flags.flatten()).flatten().tolist():
            with_unit = {other: other_flags.clone() for other, other_flags in kept.items()}
            with_unit[name].view(-1)[index] = True
            gains[name].view(-1)[index] = base_loss - objective_loss(
                bridge, data, objective, masks.binary_from(with_unit)
            )
    return gains
