"""Running mask methods over the ground-truth cases, with null controls, into tidy tables."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch

from modmask_lens.core.data import SubtaskData
from modmask_lens.groundtruth.case import GroundTruthCase, check_truth
from modmask_lens.groundtruth.controls import CONTROLS, control_case
from modmask_lens.groundtruth.evaluation import exact_match, masked_logits
from modmask_lens.groundtruth.methods import Method
from modmask_lens.groundtruth.metrics import (
    RANKING,
    curve_areas,
    density_curves,
    full_logits,
    gain_ranked_scores,
    mask_faithfulness,
    measured_sharing,
    readout_scores,
    seed_agreement,
    unit_scores,
    unit_weight_masks,
)
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.readout import SCANNED_COUNTS, marginal_gains

SUITE_GRANULARITIES = ("weight", "neuron", "head")
"""The granularities a case can answer (masks at ``matrix`` granularity are not scored)."""
TABLES = ("scores", "faithfulness", "curves", "areas", "sharing", "stability", "summary", "runs", "skipped")


def case_granularities(case: GroundTruthCase) -> list[str]:
    """Granularities at which every subtask of ``case`` has an answer key."""
    per_subtask = [set(truth) for truth in case.truth.values()]
    return [granularity for granularity in SUITE_GRANULARITIES if all(granularity in g for g in per_subtask)]


def _check_plan(
    methods: Mapping[str, Method],
    cases: Sequence[GroundTruthCase],
    granularities: Sequence[str] | None,
    controls: Sequence[str],
    method_seeds: Sequence[int],
) -> None:
    """Refuse, before any training, what would make the tables wrong: unknown or repeated controls, granularities
    or seeds (repeats multiply the summary's rows), a granularity no case answers, answer keys the suite cannot
    score (:func:`_check_keys`), and keys that do not line up with the masks
    (:func:`~modmask_lens.groundtruth.case.check_truth`)."""
    unknown = sorted(set(controls) - set(CONTROLS))
    if unknown:
        raise ValueError(f"unknown controls {unknown}; choose from {CONTROLS}")
    bad = sorted(set(granularities or ()) - set(SUITE_GRANULARITIES))
    if bad:
        raise ValueError(f"unknown granularities {bad}; choose from {SUITE_GRANULARITIES}")
    for what, values in (("controls", controls), ("granularities", granularities or ()), ("seeds", method_seeds)):
        if len(set(values)) != len(values):
            raise ValueError(f"{what} {list(values)} repeat; give each once")
    names = [case.name for case in cases]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"cases {repeated} repeat (the tables key rows by case name); give each case once")
    for case in cases:
        _check_keys(case)
    answered = {case.name: case_granularities(case) for case in cases}
    if granularities is not None and not any(set(granularities) & set(found) for found in answered.values()):
        raise ValueError(
            f"no case answers granularities {list(granularities)}; the cases answer "
            + "; ".join(f"{name}: {', '.join(found) or 'none'}" for name, found in answered.items())
        )
    for case in cases:
        for granularity in answered[case.name]:
            if granularities is None or granularity in granularities:
                configs = [  # a FinderMethod sets its mask settings on top of the suite's config
                    dataclasses.replace(MaskConfig(granularity=granularity), **getattr(finder, "mask_settings", {}))
                    for finder in methods.values()
                ]
                check_truth(case, granularity, configs)
                _warn_if_insufficient(case, granularity)


def _check_keys(case: GroundTruthCase) -> None:
    """Refuse a case whose answer keys the suite cannot score: a subtask with data but no key (it would fail after
    training), a granularity the suite does not know (its key would be silently unscored), an empty key, or keys
    that leave no granularity answered for every subtask (the suite would train nothing)."""
    keys = "; ".join(f"{subtask}: {sorted(by_granularity)}" for subtask, by_granularity in case.truth.items())
    unkeyed = sorted(set(case.train) - set(case.truth))
    if unkeyed:
        raise ValueError(
            f"case {case.name!r}: subtasks {unkeyed} have data but no answer key (keys: {keys or 'none'}); give each "
            "subtask a truth, or drop its data from train and test"
        )
    for subtask, by_granularity in case.truth.items():
        unknown = sorted(set(by_granularity) - set(SUITE_GRANULARITIES))
        if unknown:
            raise ValueError(
                f"case {case.name!r}: the truth of {subtask!r} has granularities {unknown}; the suite scores "
                f"{list(SUITE_GRANULARITIES)}"
            )
        empty = sorted(granularity for granularity, truth in by_granularity.items() if not truth)
        if empty:
            raise ValueError(
                f"case {case.name!r}: the {', '.join(empty)} truth of {subtask!r} names no unit; give unit name -> "
                "bool tensor (True where the subtask uses the element), or leave the granularity out"
            )
    if not case_granularities(case):
        raise ValueError(
            f"case {case.name!r}: no granularity has an answer key for every subtask ({keys}), so the suite would "
            "train nothing; key each subtask at a shared granularity"
        )


KEY_SUFFICIENCY = 0.95
"""An answer key whose units alone keep less than this share of the full model's exact match is warned about."""


def _warn_if_insufficient(case: GroundTruthCase, granularity: str) -> None:
    """Warn where keeping only a subtask's answer key at ``granularity`` (units the key leaves out kept whole) does
    not do the subtask on its test data: a key that is not what the subtask uses, most often a weight key written
    ``[out, in]`` for a tensor stored ``[in, out]``, which :func:`~modmask_lens.groundtruth.case.check_truth` cannot
    see on a square matrix. Scores against such a key mean little. Two forwards per subtask."""
    masks = MaskSet.for_bridge(case.bridge, MaskConfig(granularity=granularity))
    for subtask, by_granularity in case.truth.items():
        key = by_granularity[granularity]
        kept = {unit.name: key.get(unit.name, torch.ones(unit.shape, dtype=torch.bool)) for unit in masks.units}
        data = case.test[subtask]
        full = exact_match(masked_logits(case.bridge, data), data)
        alone = exact_match(masked_logits(case.bridge, data, unit_weight_masks(masks, kept)), data)
        if alone < KEY_SUFFICIENCY * full:
            warnings.warn(
                f"case {case.name!r}: keeping only the {granularity} answer key of {subtask!r} scores {alone:.2f} "
                f"exact match, the full model {full:.2f}, so the key may not be what the subtask uses and scores "
                "against it mean little. Check each key tensor against its unit's layout: a weight key has the "
                "bridge parameter's own shape and orientation (bridge.state_dict(); MaskSet.units)",
                stacklevel=4,  # run_suite's caller
            )


def run_suite(
    method: Method | Mapping[str, Method],
    cases: Sequence[GroundTruthCase],
    granularities: Sequence[str] | None = None,
    controls: Sequence[str] = CONTROLS,
    seed: int = 0,
    method_seeds: Sequence[int] = (0,),
    log: Callable[[str], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Train each method's masks on every case, granularity and control, and score them.

    Args:
        method: a method, or name -> method (a bare callable is named ``method``).
        cases: the ground-truth cases (e.g. :func:`~modmask_lens.groundtruth.all_cases`).
        granularities: restrict to these (default: every granularity each case answers).
        controls: subset of :data:`~modmask_lens.groundtruth.controls.CONTROLS`.
        seed: seed of the controls (random weights, answer permutation).
        method_seeds: each method trains once per seed (data order, mask noise); with two or more, ``stability``
            says how much the seeds' masks agree.
        log: called with a line before each run and one after it, with its time (e.g. ``print``): the warnings a
            run raises (e.g. :class:`~modmask_lens.masks.training.PaddedReadout`, which names only the subtask)
            come between its two lines.

    Returns:
        Table name -> DataFrame, each with columns ``method`` and ``control`` beside the metric's own:
        ``scores`` (:func:`~modmask_lens.groundtruth.metrics.unit_scores`), ``faithfulness``
        (:func:`~modmask_lens.groundtruth.metrics.mask_faithfulness`), ``curves`` and ``areas`` (density curves and
        CPR / CMD), ``sharing`` (measured against known shared fractions), ``summary`` (one row per mask: precision,
        recall, AUROC, faithfulness of the mask and of its inverse beyond the other subtask's mask on itself, CPR,
        CMD of its keep curve), ``stability`` (mean pairwise IoU of the seeds' binary masks over the scored units,
        ``seed_iou``), ``runs`` (wall time of each) and ``skipped`` (one row per case, granularity and control not
        run, with the reason: a control that could not be built for the case, or a requested granularity the case
        has no answer key at; each also warned about when it is skipped). Every
        table but ``stability`` and ``skipped`` has a ``seed`` column.

    Example:
        >>> from modmask_lens.groundtruth import all_cases, baseline_methods            # doctest: +SKIP
        >>> tables = run_suite(baseline_methods(steps=300), all_cases())              # doctest: +SKIP
        >>> tables["summary"].groupby(["method", "control"])["auroc"].mean()          # doctest: +SKIP
    """
    methods = dict(method) if isinstance(method, Mapping) else {getattr(method, "name", "method"): method}
    _check_plan(methods, cases, granularities, controls, method_seeds)
    frames: dict[str, list[pd.DataFrame]] = {table: [] for table in TABLES if table != "summary"}
    for case in cases:
        answered = case_granularities(case)
        wanted = [g for g in answered if granularities is None or g in granularities]
        unanswered = [g for g in granularities or () if g not in answered]
        if unanswered:
            reason = f"no answer key at this granularity (the case answers {', '.join(answered)})"
            frames["skipped"].append(_skipped_rows(case.name, unanswered, controls, reason))
            warnings.warn(f"case {case.name!r}: {', '.join(unanswered)} skipped: {reason}", stacklevel=2)
        if not wanted:
            continue
        for control in controls:
            try:
                variant = control_case(case, control, seed)
            except ValueError as reason:  # e.g. no Hugging Face model to re-initialise
                frames["skipped"].append(_skipped_rows(case.name, wanted, [control], str(reason)))
                warnings.warn(f"case {case.name!r}: the {control} control is skipped: {reason}", stacklevel=2)
                continue
            full = full_logits(variant.bridge, variant.test)
            for granularity in wanted:
                for method_name, finder in methods.items():
                    readouts: dict[str, dict[int, dict]] = {name: {} for name in variant.train}
                    for method_seed in method_seeds:
                        labels = {"method": method_name, "control": control, "seed": method_seed}
                        run = f"{case.name} {granularity} {method_name} control={control} seed={method_seed}"
                        if log is not None:  # first, so that the run's own warnings (e.g. PaddedReadout) follow it
                            log(f"{run}: training")
                        masks = _score_run(frames, variant, case.name, granularity, finder, method_seed, full, labels)
                        for name, mask in masks.items():  # the scored units only, as every other measure
                            scored = variant.truth[name][granularity]
                            readouts[name][method_seed] = {
                                unit: score for unit, score in readout_scores(mask).items() if unit in scored
                            }
                        if log is not None:
                            log(f"{run}: {frames['runs'][-1]['total_s'].iloc[0]} s")
                    frames["stability"].append(
                        pd.DataFrame(
                            [
                                {
                                    "case": case.name,
                                    "subtask": name,
                                    "granularity": granularity,
                                    "method": method_name,
                                    "control": control,
                                    "seeds": len(method_seeds),
                                    "seed_iou": seed_agreement(by_seed),
                                }
                                for name, by_seed in readouts.items()
                            ]
                        )
                    )
    result = {
        table: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame() for table, parts in frames.items()
    }
    result["summary"] = summary_table(result)
    return result


def _skipped_rows(case_name: str, granularities: Sequence[str], controls: Sequence[str], reason: str) -> pd.DataFrame:
    """Rows of the ``skipped`` table: one per granularity and control of ``case_name`` that was not run."""
    return pd.DataFrame(
        [
            {"case": case_name, "granularity": granularity, "control": control, "reason": reason}
            for granularity in granularities
            for control in controls
        ]
    )


def _score_run(
    frames: dict[str, list[pd.DataFrame]],
    variant: GroundTruthCase,
    case_name: str,
    granularity: str,
    finder: Method,
    method_seed: int,
    full: Mapping[str, torch.Tensor],
    labels: dict,
) -> dict:
    """Train one method's masks on every subtask of ``variant`` with one seed, score them into ``frames`` (each row
    labelled with ``labels``) and return them by subtask."""
    started = time.perf_counter()
    masks = {
        name: finder(variant.bridge, data, MaskConfig(granularity=granularity), method_seed)
        for name, data in variant.train.items()
    }
    train_s = time.perf_counter() - started
    scores = {name: readout_scores(mask) for name, mask in masks.items()}
    gain_ranked = {name: _gain_ranked(variant.bridge, mask, variant.train[name]) for name, mask in masks.items()}
    tables = {
        "scores": unit_scores(variant, scores, granularity, gain_ranked),
        "faithfulness": mask_faithfulness(case_name, variant.bridge, masks, variant.test, full),
        "curves": density_curves(case_name, variant.bridge, masks, variant.test, full),
        "sharing": measured_sharing(variant, scores, granularity),
    }
    tables["areas"] = curve_areas(tables["curves"])
    tables["runs"] = pd.DataFrame(
        [
            {
                "case": case_name,
                "granularity": granularity,
                "train_s": round(train_s, 1),
                "total_s": round(time.perf_counter() - started, 1),
                "torch_threads": torch.get_num_threads(),
            }
        ]
    )
    for table, frame in tables.items():
        frames[table].append(frame.assign(**labels))
    return masks


def _gain_ranked(bridge: torch.nn.Module, mask: MaskSet, train: SubtaskData) -> dict[str, torch.Tensor] | None:
    """:func:`~modmask_lens.groundtruth.metrics.gain_ranked_scores` of ``mask`` on its training data, or None where
    its readout leaves out more than :data:`~modmask_lens.masks.readout.SCANNED_COUNTS` units (weight masks: one
    pass over the data per unit)."""
    left_out = sum(int((~kept).sum()) for kept in mask.kept_above(mask.threshold).values())
    if left_out > SCANNED_COUNTS:
        return None
    return gain_ranked_scores(mask, marginal_gains(bridge, mask, train))


def summary_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (case, subtask, granularity, method, control): precision, recall, AUROC, the mask's faithfulness
    and KL, the faithfulness of its inverse beyond the other subtask's mask (on itself, and on the other subtasks),
    and CPR / CMD of its keep curve (ranking: signed logits)."""
    keys = ["case", "subtask", "granularity", "method", "control", "seed"]
    if tables["scores"].empty:
        return pd.DataFrame(columns=keys)
    faithfulness = tables["faithfulness"]
    own = faithfulness["evaluated_on"] == faithfulness["subtask"]
    mask = faithfulness[own & (faithfulness["condition"] == "mask")].set_index(keys)[["faithfulness", "kl"]]
    inverse = faithfulness[faithfulness["condition"] == "inverse-other"]
    on_itself = inverse["evaluated_on"] == inverse["subtask"]
    inverse_own = inverse[on_itself].set_index(keys)["faithfulness"].rename("inverse_faithfulness")
    inverse_others = inverse[~on_itself].groupby(keys)["faithfulness"].mean().rename("inverse_faithfulness_others")
    areas = tables["areas"]
    keep = areas[areas["curve"] == "keep"].set_index(keys)[["cpr", "cmd"]]
    scores = tables["scores"].set_index(keys)[
        ["precision", "recall", "auroc", "auroc_gain", "kept_fraction", "true_fraction", "inside_others"]
    ]
    summary = scores.join(mask).join(inverse_own).join(inverse_others).join(keep).reset_index()
    stability = tables["stability"][[*keys[:-1], "seed_iou"]]
    summary = summary.merge(stability, on=keys[:-1], how="left")
    summary["ranking"] = RANKING
    return summary
