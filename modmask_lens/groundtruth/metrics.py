"""Scoring masks against a ground-truth case, as tidy DataFrames.

- :func:`unit_scores`: precision and recall of the binary readout (the mask's own: logit > ``MaskSet.threshold``,
  the faithful readout's by default) and AUROC of the logits, against the answer key, over the scored units only.
- :func:`mask_faithfulness`: accuracy and KL(full || masked) on the answer tokens under the mask, its plain inverse,
  and its inverse beyond a control mask.
- :func:`density_curves` / :func:`curve_areas`: faithfulness as units are kept in order of their **signed** logits
  (top k % of the units, and logit thresholds), with CPR (area under the curve) and CMD (area between the curve and
  1) over the top-k points (MIB circuit track, Mueller et al. 2025).

A *unit* is one element of ``MaskSet.logits``: a weight, a neuron or a head. Densities count units, not weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.case import GroundTruthCase, UnitTruth
from modmask_lens.groundtruth.evaluation import exact_match, kl_divergence, masked_logits
from modmask_lens.masks.mask_set import MaskSet

DENSITIES = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Fractions of units kept on the top-k curve (MIB's 0.1 %, 1 %, 5 %, 10 %, 20 %, 50 %, 100 %)."""
THRESHOLDS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
"""Logit thresholds of the per-threshold curve (a unit is kept when its logit exceeds the threshold)."""
RANKING = "signed logits"
INVERSE_CONTROLS = ("other", "intersection")
"""What an inverse keeps although the subtask's mask keeps it too: ``other`` the union of the other subtasks' binary
masks, ``intersection`` the units every subtask's binary mask keeps (norm gains, embeddings...)."""

UnitSelection = dict[str, Tensor]
"""Unit name -> ``bool`` of the unit's logit shape: which units are kept."""


def flat_scores(logits: Mapping[str, Tensor], truth: UnitTruth) -> tuple[np.ndarray, np.ndarray]:
    """The scored units' logits and truth, flattened in the mask's unit order (the order of ``logits``), so that
    two subtasks' arrays over the same units line up whatever order their keys list the units in."""
    missing = sorted(set(truth) - set(logits))
    if missing:
        raise ValueError(
            f"the mask has no logits for scored units {missing[:3]}...; train it at the granularity "
            "and with the MaskConfig kinds the truth was built for"
        )
    names = [name for name in logits if name in truth]
    scores = torch.cat([logits[name].detach().flatten().double() for name in names]).numpy()
    labels = torch.cat([truth[name].flatten() for name in names]).numpy()
    return scores, labels


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (Mann-Whitney U), ties given their average rank; NaN when
    one class is empty."""
    positives, negatives = int(labels.sum()), int((~labels.astype(bool)).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels.astype(bool)].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def readout_scores(mask: MaskSet) -> dict[str, Tensor]:
    """Unit name -> the mask's logits minus its readout threshold: > 0 exactly where the binary mask keeps the unit,
    in the logits' order (the scores :func:`unit_scores` and :func:`measured_sharing` read). In float64, less the
    threshold rounded to the logits' dtype (as ``logit > threshold`` compares), so that the difference is exact and
    two distinct logits never round to one score: AUROC is the logits', whatever the threshold."""
    return {
        name: logit.detach().double() - torch.tensor(mask.threshold, dtype=logit.dtype).item()
        for name, logit in mask.logits.items()
    }


def gain_ranked_scores(mask: MaskSet, gains: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Unit name -> scores that rank the units the mask keeps first, by logit (as :func:`readout_scores`: logit
    minus threshold, > 0), then the units its readout leaves out by their marginal gain
    (:func:`~modmask_lens.masks.readout.marginal_gains`): ``-1`` for the largest gain, ``-2`` for the next distinct
    one, and so on (equal gains tie; a NaN gain ranks last). Ranks, not shifted gains, so that no float rounding
    merges two gains and an infinite gain stays below the kept units."""
    scores = readout_scores(mask)
    left_out = torch.cat([gains[name].flatten().to(score.device) for name, score in scores.items()])
    finite_order = left_out.nan_to_num(nan=-math.inf)  # NaN below every other gain (-inf too: it ties with it)
    distinct, dense_rank = torch.unique(finite_order, return_inverse=True)  # ascending: largest gain, largest rank
    ranked = (dense_rank - len(distinct)).to(torch.float32)  # largest gain -> -1
    ranked[left_out.isnan()] = -(len(distinct) + 1.0)
    result, start = {}, 0
    for name, score in scores.items():
        ranks = ranked[start : start + score.numel()].view(score.shape)
        result[name] = torch.where(score > 0, score, ranks)
        start += score.numel()
    return result


def unit_scores(
    case: GroundTruthCase,
    mask_logits: Mapping[str, Mapping[str, Tensor]],
    granularity: str,
    gain_ranked: Mapping[str, Mapping[str, Tensor] | None] | None = None,
) -> pd.DataFrame:
    """Precision, recall (binary readout: score > 0) and AUROC (scores) of each subtask's mask against the truth,
    and where the kept units lie.

    Args:
        case: the case whose truth scores the masks.
        mask_logits: subtask -> unit name -> scores, kept where > 0 (:func:`readout_scores` of a mask; any
            method's unit scores will do).
        granularity: which of the truth's answer keys to score against.
        gain_ranked: subtask -> :func:`gain_ranked_scores` of its mask, or None where they were not measured.

    Returns:
        Columns ``case``, ``subtask``, ``granularity``, ``precision``, ``recall``, ``auroc``, ``auroc_gain`` (AUROC
        of ``gain_ranked``; NaN where not given, i.e. not measured, beside a defined ``auroc``:
        :func:`~modmask_lens.groundtruth.targets.gain_not_measured`), ``kept_fraction``
        (kept share of the scored units), ``true_fraction``, ``scored_units``, and ``inside_others`` (share of the
        kept units that only the case's other subtasks keyed on the same units use: where a mask of a plant with
        many sufficient answers lands in another subtask's set, this says so; 0 in a case of one subtask, NaN where
        every other subtask is keyed on other units, as in :func:`measured_sharing`).
    """
    rows = []
    for subtask, logits in mask_logits.items():
        scores, labels = flat_scores(logits, case.truth[subtask][granularity])
        kept, labels = scores > 0, labels.astype(bool)
        others = [
            flat_scores(logits, case.truth[other][granularity])[1].astype(bool)
            for other in case.truth
            if other != subtask and set(case.truth[other][granularity]) == set(case.truth[subtask][granularity])
        ]
        others_only = np.any(others, axis=0) & ~labels if others else np.zeros_like(labels)
        # other subtasks keyed only on other units: which of the kept units they use is unknown (as in sharing)
        unknown_others = len(case.truth) > 1 and not others
        true_positives = int((kept & labels).sum())
        rows.append(
            {
                "case": case.name,
                "subtask": subtask,
                "granularity": granularity,
                "precision": true_positives / kept.sum() if kept.any() else math.nan,
                "recall": true_positives / labels.sum() if labels.any() else math.nan,
                "auroc": auroc(scores, labels),
                "auroc_gain": auroc(flat_scores(ranked, case.truth[subtask][granularity])[0], labels)
                if (ranked := (gain_ranked or {}).get(subtask)) is not None
                else math.nan,
                "kept_fraction": float(kept.mean()),
                "true_fraction": float(labels.mean()),
                "scored_units": len(labels),
                "inside_others": float((kept & others_only).sum() / kept.sum())
                if kept.any() and not unknown_others
                else math.nan,
            }
        )
    return pd.DataFrame(rows)


def seed_agreement(readouts: Mapping[int, Mapping[str, Tensor]]) -> float:
    """Mean pairwise IoU of the kept units of masks trained with different seeds (NaN with fewer than two seeds,
    1.0 when two masks keep nothing).

    Args:
        readouts: seed -> unit name -> scores, kept where > 0 (:func:`readout_scores`).
    """
    kept = [torch.cat([score.flatten() > 0 for score in scores.values()]) for scores in readouts.values()]
    pairs = [(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :]]
    if not pairs:
        return math.nan
    ious = [float((a & b).sum() / (a | b).sum()) if (a | b).any() else 1.0 for a, b in pairs]
    return float(np.mean(ious))


def measured_sharing(
    case: GroundTruthCase, mask_logits: Mapping[str, Mapping[str, Tensor]], granularity: str
) -> pd.DataFrame:
    """Shared fraction |m_s & m_others| / |m_s| over the scored units, measured (binary readouts) and known (truth),
    against the other subtasks whose keys score the same units; NaN for a subtask without such another (a case of
    one subtask, or keys of other units) or a mask that keeps nothing.

    Returns:
        Columns ``case``, ``subtask``, ``granularity``, ``known_shared``, ``measured_shared``.
    """
    kept, known = {}, {}
    for subtask, logits in mask_logits.items():
        scores, labels = flat_scores(logits, case.truth[subtask][granularity])
        kept[subtask], known[subtask] = scores > 0, labels.astype(bool)

    def units(subtask: str) -> set[str]:
        return set(case.truth[subtask][granularity])

    def shared(sets: dict[str, np.ndarray], subtask: str) -> float:
        comparable = [sets[other] for other in sets if other != subtask and units(other) == units(subtask)]
        if not comparable or not sets[subtask].any():
            return math.nan  # no other subtask scored on the same units to share with, or nothing kept
        return float((sets[subtask] & np.any(comparable, axis=0)).sum() / sets[subtask].sum())

    return pd.DataFrame(
        [
            {
                "case": case.name,
                "subtask": subtask,
                "granularity": granularity,
                "known_shared": shared(known, subtask),
                "measured_shared": shared(kept, subtask),
            }
            for subtask in mask_logits
        ]
    )


def unit_weight_masks(mask: MaskSet, kept: UnitSelection) -> dict[str, Float[Tensor, ...]]:
    """Bridge path -> float mask broadcastable to the tensor, keeping the units of ``kept``."""
    return {member.path: unit.expand(kept[unit.name].float(), member) for unit in mask.units for member in unit.members}


def top_fraction(logits: Mapping[str, Tensor], fraction: float) -> UnitSelection:
    """The ``round(fraction * units)`` units (halves rounded up) with the largest signed logits; ties go to the
    earlier unit in model order (a stable sort)."""
    flat = torch.cat([logit.detach().flatten() for logit in logits.values()])
    count = math.floor(fraction * len(flat) + 0.5)
    kept_flat = torch.zeros(len(flat), dtype=torch.bool)
    kept_flat[torch.sort(flat, descending=True, stable=True).indices[:count]] = True
    return _unflatten(logits, kept_flat)


def _unflatten(logits: Mapping[str, Tensor], flat: Bool[Tensor, " units"]) -> UnitSelection:
    selection, start = {}, 0
    for name, logit in logits.items():
        selection[name] = flat[start : start + logit.numel()].view(logit.shape)
        start += logit.numel()
    return selection


def _combine(selections: list[UnitSelection], reduction: str) -> UnitSelection:
    """Unit-wise ``all`` (intersection) or ``any`` (union) of selections."""
    return {
        name: getattr(torch.stack([selection[name] for selection in selections]), reduction)(dim=0)
        for name in selections[0]
    }


def inverse_beyond(kept: UnitSelection, control: UnitSelection | None) -> UnitSelection:
    """Everything except what ``kept`` keeps beyond ``control`` (units ``control`` keeps are never removed)."""
    return {name: ~(selected & ~control[name]) if control is not None else ~selected for name, selected in kept.items()}


def control_selections(masks: Mapping[str, MaskSet]) -> dict[str, dict[str, UnitSelection]]:
    """Control kind -> subtask -> the control mask its inverse leaves alone (see :data:`INVERSE_CONTROLS`). With one
    subtask there is nothing else to keep: both controls are empty, and each inverse removes the whole mask."""
    readouts = {subtask: mask.kept_above(mask.threshold) for subtask, mask in masks.items()}
    if len(readouts) == 1:
        empty = {name: torch.zeros_like(selected) for name, selected in next(iter(readouts.values())).items()}
        return {kind: dict.fromkeys(readouts, empty) for kind in INVERSE_CONTROLS}
    intersection = _combine(list(readouts.values()), "all")
    controls: dict[str, dict[str, UnitSelection]] = {"other": {}, "intersection": {}}
    for subtask in masks:
        others = [readout for other, readout in readouts.items() if other != subtask]
        controls["other"][subtask] = _combine(others, "any")
        controls["intersection"][subtask] = intersection
    return controls


def _evaluate(
    case_name: str,
    bridge: nn.Module,
    subtask: str,
    data: Mapping[str, SubtaskData],
    full: Mapping[str, Tensor],
    mask: MaskSet,
    kept: UnitSelection,
    evaluated_on: list[str],
    labels: dict,
) -> list[dict]:
    """One row per evaluated subtask: accuracy, faithfulness (masked / full accuracy) and KL under ``kept``."""
    weight_masks = unit_weight_masks(mask, kept)
    density = float(sum(int(selected.sum()) for selected in kept.values()) / sum(s.numel() for s in kept.values()))
    rows = []
    for target in evaluated_on:
        logits = masked_logits(bridge, data[target], weight_masks)
        full_accuracy = exact_match(full[target], data[target])
        accuracy = exact_match(logits, data[target])
        rows.append(
            {
                "case": case_name,
                "subtask": subtask,
                "granularity": mask.config.granularity,
                **labels,
                "evaluated_on": target,
                "density": density,
                "accuracy_full": full_accuracy,
                "accuracy": accuracy,
                "faithfulness": accuracy / full_accuracy if full_accuracy > 0 else math.nan,
                "kl": kl_divergence(full[target], logits, data[target]),
            }
        )
    return rows


def full_logits(bridge: nn.Module, data: Mapping[str, SubtaskData]) -> dict[str, Tensor]:
    """The unmasked model's logits on every subtask's data."""
    return {name: masked_logits(bridge, examples) for name, examples in data.items()}


def mask_faithfulness(
    case_name: str,
    bridge: nn.Module,
    masks: Mapping[str, MaskSet],
    data: Mapping[str, SubtaskData],
    full: Mapping[str, Tensor],
) -> pd.DataFrame:
    """Each subtask's binary readout, its plain inverse and its inverses beyond each control, evaluated on every
    subtask.

    Returns:
        Columns ``case``, ``subtask``, ``granularity``, ``condition`` (``mask``, ``inverse``, ``inverse-other``,
        ``inverse-intersection``), ``evaluated_on``, ``density``, ``accuracy_full``, ``accuracy``,
        ``faithfulness`` and ``kl`` (nats per answer token).
    """
    controls = control_selections(masks)
    rows = []
    for subtask, mask in masks.items():
        kept = mask.kept_above(mask.threshold)
        conditions = {"mask": (kept, [subtask]), "inverse": (inverse_beyond(kept, None), list(data))}
        conditions |= {
            f"inverse-{kind}": (inverse_beyond(kept, controls[kind][subtask]), list(data)) for kind in INVERSE_CONTROLS
        }
        for condition, (selection, targets) in conditions.items():
            rows += _evaluate(
                case_name, bridge, subtask, data, full, mask, selection, targets, {"condition": condition}
            )
    return pd.DataFrame(rows)


def density_curves(
    case_name: str,
    bridge: nn.Module,
    masks: Mapping[str, MaskSet],
    data: Mapping[str, SubtaskData],
    full: Mapping[str, Tensor],
    densities=DENSITIES,
    thresholds=THRESHOLDS,
) -> pd.DataFrame:
    """Faithfulness as units are kept by signed logit: ``keep`` (top k % kept, on the subtask) and ``inverse``
    (the top k % removed beyond each control mask, on every subtask), swept by ``top-k`` and by ``threshold``.

    Returns:
        Columns ``case``, ``subtask``, ``granularity``, ``curve``, ``control_mask`` (empty for ``keep``),
        ``sweep``, ``k`` (NaN for thresholds), ``threshold`` (NaN for top-k), ``ranking``, ``evaluated_on``,
        ``density`` (kept share of the units), ``accuracy_full``, ``accuracy``, ``faithfulness``, ``kl``.
    """
    controls = control_selections(masks)
    rows = []
    for subtask, mask in masks.items():
        points = [("top-k", k, math.nan, top_fraction(mask.logits, k)) for k in densities]
        points += [
            (
                "threshold",
                math.nan,
                threshold,
                {name: logit.detach() > threshold for name, logit in mask.logits.items()},
            )
            for threshold in thresholds
        ]
        for sweep, k, threshold, kept in points:
            labels = {"sweep": sweep, "k": k, "threshold": threshold, "ranking": RANKING}
            conditions = [(kept, [subtask], {"curve": "keep", "control_mask": ""})]
            conditions += [
                (
                    inverse_beyond(kept, controls[kind][subtask]),
                    list(data),
                    {"curve": "inverse", "control_mask": kind},
                )
                for kind in INVERSE_CONTROLS
            ]
            for selection, targets, curve in conditions:
                rows += _evaluate(case_name, bridge, subtask, data, full, mask, selection, targets, curve | labels)
    return pd.DataFrame(rows)


def curve_areas(curves: pd.DataFrame) -> pd.DataFrame:
    """CPR (area under faithfulness against k) and CMD (area of |1 - faithfulness|) of every top-k curve, by the
    trapezoid rule over its k points. For ``keep`` curves higher CPR and lower CMD are better; for ``inverse`` curves
    on the subtask itself a low CPR means removing its units breaks it.

    Returns:
        The curve's identifying columns plus ``cpr`` and ``cmd``.
    """
    keys = [
        column
        for column in curves.columns
        if column not in ("sweep", "k", "threshold", "density", "accuracy_full", "accuracy", "faithfulness", "kl")
    ]
    top_k = curves[curves["sweep"] == "top-k"]
    rows = []
    for key, curve in top_k.groupby(keys, sort=False, dropna=False):
        curve = curve.sort_values("k")
        k, faithfulness = curve["k"].to_numpy(), curve["faithfulness"].to_numpy()
        rows.append(
            {
                **dict(zip(keys, key)),
                "cpr": _trapezoid(faithfulness, k),
                "cmd": _trapezoid(np.abs(1 - faithfulness), k),
            }
        )
    return pd.DataFrame(rows)


def _trapezoid(values: np.ndarray, positions: np.ndarray) -> float:
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(positions)))
