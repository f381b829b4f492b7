"""Reading a binary mask out of trained logits so that it stays faithful: the fewest top-scoring units that keep the
subtask's exact match.

``logit > 0`` is Csordás's readout. Measured on planted models and compiled tracr programs
(docs/finder-study.md), it can drop units a subtask needs together: trained logits rank the units well (AUROC 1.0 on
a disconnected plant's heads) while the threshold at 0 keeps half of the needed heads and the masked model scores
0.11. Ranking by logit and keeping the smallest top-k that stays faithful recovered all of them. This is the readout
of Edge Pruning and of the MIB circuit benchmark (a circuit at a size, chosen by score), with the size chosen by
faithfulness instead of fixed. Top-k by logit cannot leave a set of units that each matter given the others but
not together; :func:`faithful_units` then searches removals of several units at once.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.config import REMOVAL_EVALUATIONS
from modmask_lens.masks.evaluation import objective_loss, objective_metric, reaches_metric
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective

SCANNED_COUNTS = 256
"""The faithful readout tries every smaller count when its search settles on at most this many units (up to one
pass over the data per count; head masks and sparse neuron masks settle under it, most weight masks above)."""

ROUND_EVALUATIONS = 1024
"""One round of the removal search tries every removal of up to ``r`` units together, ``r`` the largest whose
candidates fit in this many judgements: 3 at a time from 16 units, 2 from 44, 1 from 45 to 1,024."""

SEARCHED_UNITS = SCANNED_COUNTS
"""The removal search runs from a start of at most this many units; from more than 44 it first removes one unit at a
time. A threshold readout tries only the lowest-logit unit's removal, so a trained set can hold units whose removal
alone keeps the subtask: measured on the entangled-neuron sub-max plant (docs/finder-study.md), single removals took
``max``'s 47-neuron mask to 16."""


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
    masks.check_model(bridge, check_weights=False)
    return _threshold_reaching(bridge, masks, data, _required_metric(bridge, data, tolerance, objective), objective)


def _required_metric(bridge: nn.Module, data: SubtaskData, tolerance: float, objective: Objective) -> float:
    """``(1 - tolerance)`` times the full model's metric on ``data``, refusing a model that solves none of it."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance {tolerance} must lie in [0, 1): the fraction of full accuracy that may be lost")
    full = objective_metric(bridge, data, objective)
    if full <= 0:
        raise ValueError(
            f"the full model's {objective.metric} on the {len(data)} examples of {data.name!r} is {full}, so no mask "
            "size keeps it: check the data (answers, tokenizer), or read the mask out at logit > 0"
        )
    return (1 - tolerance) * full


def _threshold_reaching(
    bridge: nn.Module, masks: MaskSet, data: SubtaskData, required: float, objective: Objective
) -> float:
    """:func:`faithful_threshold` with the metric to reach given."""
    descending = torch.cat([logit.detach().flatten() for logit in masks.logits.values()]).sort(descending=True).values

    def threshold_keeping(count: int) -> float:
        if count == 0:
            return float(descending[0]) + 1.0
        if count == descending.numel():
            return float(descending[-1]) - 1.0
        return float(descending[count - 1] + descending[count]) / 2

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


def faithful_units(
    bridge: nn.Module,
    masks: MaskSet,
    data: SubtaskData,
    tolerance: float = 0.01,
    objective: Objective = AnswerCrossEntropy(),
    evaluations: int = REMOVAL_EVALUATIONS,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Unit name -> kept flags (bool, the unit's logit shape) of the fewest units found that keep at least
    ``(1 - tolerance)`` of the full model's metric on ``data``: :func:`faithful_threshold`'s units, then a search
    that removes several units at once.

    Training's gradient sees what removing one unit costs, so it can settle on a set from which removing any one
    unit breaks the subtask while removing a few together gives a smaller, better one. Measured on an entangled-head
    plant the suite does not ship (docs/finder-study.md, "Removing several units at once"): the trained mask kept its
    8 planted heads and 3 of the other subtask's, each of the 11 needed by the others (removing any one: 0.28-0.83
    exact match), the 3 together not (1.00); the threshold readout then padded it to all 16 heads.

    The search starts from the threshold's units and, where they differ, from the units training kept
    (logit > 0). Each round tries every removal of ``r`` units together from the current set, for ``r`` from the
    largest whose candidates fit in :data:`ROUND_EVALUATIONS` judgements down to 1, and moves to the passing
    candidate of the largest ``r`` with the lowest loss; it stops when no removal passes or the budget is spent.
    From each start the search runs twice and keeps the smaller end (ties: the lower loss): first with single
    removals first (one unit per round, the lowest-loss passing removal, until none passes; then as above), then as
    above with the budget left. Neither order wins everywhere (docs/finder-study.md, "Both removal orders"). A start
    of more than 44 units, too many for a round of pairs (990 judgements at 44), runs with single removals first
    only.
    A start of more than :data:`SEARCHED_UNITS` units (most weight masks) is not searched; where neither start is,
    the threshold's units are kept. The result is the smallest passing set the search reached (ties: the lower
    loss), so it is faithful on ``data``.

    Args:
        bridge: the model the mask is for.
        masks: trained logits.
        data: the subtask's examples.
        tolerance: accuracy that may be lost, as a fraction of the full model's (0.01: keep 99% of it).
        objective: whose metric is kept and whose loss breaks ties (default: exact match, answer cross-entropy).
        evaluations: the search's budget, candidate sets judged (one pass over ``data`` each, plus a loss pass
            per passing candidate); at 0 the threshold's units are kept.
        progress: show a progress bar of the judgements while the search runs.
    """
    if evaluations < 0:
        raise ValueError(f"evaluations {evaluations} must be >= 0 (0: no removal search)")
    masks.check_model(bridge, check_weights=False)
    required = _required_metric(bridge, data, tolerance, objective)
    logits = torch.cat([logit.detach().flatten() for logit in masks.logits.values()])
    sizes = [logit.numel() for logit in masks.logits.values()]

    def flags_of(units: frozenset[int]) -> dict[str, Tensor]:
        flat = torch.zeros(logits.numel(), dtype=torch.bool, device=logits.device)
        flat[sorted(units)] = True
        return {name: part.view(logit.shape) for (name, logit), part in zip(masks.logits.items(), flat.split(sizes))}

    threshold_kept = logits > _threshold_reaching(bridge, masks, data, required, objective)
    trained = logits > 0
    starts = [threshold_kept] + ([trained] if not torch.equal(trained, threshold_kept) else [])
    searched = [kept for kept in starts if 0 < int(kept.sum()) <= SEARCHED_UNITS]
    bar = tqdm(total=evaluations, desc=f"readout search, {data.name}", unit="set", disable=not (progress and searched))

    def passes(units: frozenset[int]) -> bool:
        bar.update()
        return reaches_metric(bridge, data, objective, masks.binary_from(flags_of(units)), required)

    search = _RemovalSearch(
        passes=passes,
        loss=lambda units: objective_loss(bridge, data, objective, masks.binary_from(flags_of(units))),
        budget=evaluations,
    )
    with bar:
        shrunk = [search.shrunk(frozenset(kept.nonzero().flatten().tolist())) for kept in searched]
        passing = [units for units in shrunk if search.passes(units)]
    smallest = min(passing, key=lambda units: (len(units), search.loss(units)), default=None)
    if smallest is None or len(smallest) > int(threshold_kept.sum()):
        return {
            name: part.view(logit.shape)
            for (name, logit), part in zip(masks.logits.items(), threshold_kept.split(sizes))
        }
    return flags_of(smallest)


class _RemovalSearch:
    """Local search for a smaller passing set by removing units together (:func:`faithful_units`).

    Args:
        passes: whether a set of flat unit indices keeps the required metric (one pass over the data).
        loss: the set's loss, to choose among passing candidates (one pass over the data).
        budget: candidate sets it may judge; a set it could not judge counts as failing.
    """

    def __init__(
        self, passes: Callable[[frozenset[int]], bool], loss: Callable[[frozenset[int]], float], budget: int
    ) -> None:
        self._passes, self._loss, self.budget = passes, loss, budget
        self._judged: dict[frozenset[int], bool] = {}
        self._losses: dict[frozenset[int], float] = {}

    def passes(self, units: frozenset[int]) -> bool:
        if units not in self._judged:
            if self.budget == 0:
                return False
            self.budget -= 1
            self._judged[units] = self._passes(units)
        return self._judged[units]

    def loss(self, units: frozenset[int]) -> float:
        if units not in self._losses:
            self._losses[units] = self._loss(units)
        return self._losses[units]

    def shrunk(self, units: frozenset[int]) -> frozenset[int]:
        """The smaller (ties: the lower loss) of the sets two runs of removal rounds from ``units`` end on, or
        ``units`` itself where no removal passes: one run removes single units until none passes, then the largest
        removals first, the other the largest removals first in every round. The single removals go first, since
        they are cheap (a round of pairs at 43 units spends 946 judgements), and the other run spends what budget
        they leave; a start too large for a round of pairs takes the first run only."""
        orders = (True, False) if self._largest_removal(len(units)) > 1 else (True,)
        ends = {self._descent(units, single_removals_first) for single_removals_first in orders}
        return ends.pop() if len(ends) == 1 else min(ends, key=lambda end: (len(end), self.loss(end)))

    def _descent(self, units: frozenset[int], single_removals_first: bool) -> frozenset[int]:
        """The set a run of removal rounds from ``units`` ends on: each round moves to the lowest-loss passing
        removal of the most units together that fit (:meth:`_largest_removal`), or of one unit while
        ``single_removals_first`` holds, until no single removal passes."""
        while True:
            largest = 1 if single_removals_first else self._largest_removal(len(units))
            passing: list[frozenset[int]] = []
            for size in range(largest, 0, -1):
                candidates = (units.difference(removed) for removed in itertools.combinations(sorted(units), size))
                passing = [candidate for candidate in candidates if self.passes(candidate)]
                if passing:
                    break
            if passing:
                units = min(passing, key=self.loss)
            elif single_removals_first:
                single_removals_first = False
            else:
                return units

    def _largest_removal(self, n_units: int) -> int:
        """The most units one round removes together (:func:`_removals_per_round` within the budget left)."""
        return _removals_per_round(n_units, min(ROUND_EVALUATIONS, self.budget))


def _removals_per_round(n_units: int, judgements: int) -> int:
    """The largest ``r`` such that every removal of 1 to ``r`` of ``n_units`` units fits in ``judgements``."""
    total, size = 0, 0
    while size < n_units and total + math.comb(n_units, size + 1) <= judgements:
        size += 1
        total += math.comb(n_units, size)
    return size


def faithful_binary(
    bridge: nn.Module,
    masks: MaskSet,
    data: SubtaskData,
    tolerance: float = 0.01,
    objective: Objective = AnswerCrossEntropy(),
) -> BinaryMask:
    """The binary mask of :func:`faithful_units`: the fewest units found that keep at least ``(1 - tolerance)`` of
    the full model's exact match on ``data``.

    Example:
        >>> kept = faithful_binary(bridge, masks["jump"], jump_test)              # doctest: +SKIP
        >>> kept.kept_fraction(by="all")                                            # doctest: +SKIP
    """
    masks.check_model(bridge)
    _warn_if_not_trained_with(masks, objective)
    return masks.binary_from(faithful_units(bridge, masks, data, tolerance, objective))


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
