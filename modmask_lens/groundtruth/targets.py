"""The mask finder's targets on known answers (issue #18), checked against the suite's tables.

:func:`target_checks` reads the tables :func:`~modmask_lens.groundtruth.run_suite` returns (or the CSV files
``modmask-lens groundtruth run --out`` writes, concatenated) and gives one row per target, mask and measure: the
measured value, the bound, and whether it is met. Targets that ask only that something be reported (the ambiguity of
plants with many sufficient answers) are met when the value is there. Every value is read from the tables; nothing
is recomputed from a model, so the check runs in a moment on tables of any run, your own plants included.

The rules, and why:

- a case's family is its name up to ``/`` (``entangled-head/add-mul@seed1`` is ``entangled-head``);
- only ``control == "none"`` rows are held to the targets; the controls are checked for being there;
- AUROC of head masks is ``auroc_gain`` (the left-out heads ranked by marginal gain; docs/finder-study.md, "Ordering
  the units a mask leaves out": higher than the logits' on 5 of 20 head masks, and never lower on an entangled
  plant), of every other granularity ``auroc`` (the gains rank neurons worse);
- where every unit is in the answer key (a tracr program that uses every head: ``true_fraction`` 1) AUROC has no
  unused units to rank and is undefined; the mask is then held to recall at the same bound (it "recovers the used
  heads" when it keeps them all), a ``recall`` row in place of the AUROC one;
- a value that is NaN where a bound applies (e.g. AUROC where every unit is used) is not met and not failed:
  ``met`` is NaN, and :func:`target_tally` counts it apart; but a mask that keeps no scored unit fails its
  precision, and a disconnected plant not run at a granularity fails a ``granularity run`` row;
- a measurement the tables lack is failed, never undefined: a mask whose run has no ``runs`` row fails
  ``seconds``, one with other subtasks but no ``inverse`` row evaluated on them fails ``others_after_removal``, one
  with no ``scores`` or ``sharing`` row fails ``iou_with_others``, a head mask whose gains were not measured
  (:func:`gain_not_measured`) fails ``auroc_gain``; the note says ``not measured: ...``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from modmask_lens.groundtruth.controls import CONTROLS
from modmask_lens.masks.readout import SCANNED_COUNTS

NULL_CONTROLS = tuple(control for control in CONTROLS if control != "none")
KEYS = ["case", "subtask", "granularity", "method", "seed"]
COLUMNS = ["target", *KEYS, "measure", "value", "bound", "met", "note"]
REQUIRED = {
    "summary": [
        *KEYS,
        "control",
        "precision",
        "recall",
        "auroc",
        "auroc_gain",
        "kept_fraction",
        "true_fraction",
        "faithfulness",
        "seed_iou",
        "inside_others",
    ],
    "scores": [*KEYS, "control", "kept_fraction", "scored_units"],
    "sharing": [*KEYS, "control", "measured_shared"],
    "faithfulness": [*KEYS, "control", "condition", "evaluated_on", "faithfulness"],
    "runs": ["case", "granularity", "method", "seed", "control", "total_s", "torch_threads"],
}
"""The tables and columns the check reads (``groundtruth run --out`` writes them all since session 17)."""


@dataclass(frozen=True)
class Bound:
    """A measure's bound: ``value >= limit`` (``at_least``) or ``value <= limit``; ``limit`` None asks only that the
    value be reported (not NaN)."""

    limit: float | None = None
    at_least: bool = True

    def met(self, value: float) -> float:
        """1.0 or 0.0; NaN where ``value`` is NaN and a limit applies."""
        if self.limit is None:
            return float(not math.isnan(value))
        if math.isnan(value):
            return math.nan
        return float(value >= self.limit if self.at_least else value <= self.limit)

    def __str__(self) -> str:
        if self.limit is None:
            return "reported"
        return f"{'>=' if self.at_least else '<='} {self.limit:g}"


TARGETS: dict[str, dict[str, Bound]] = {
    "disconnected": {
        "precision": Bound(0.98),
        "iou_with_others": Bound(0.05, at_least=False),
        "faithfulness": Bound(0.95),
        "others_after_removal": Bound(0.9),
        "seconds": Bound(180.0, at_least=False),
    },
    "entangled": {"precision": Bound(0.95), "auroc": Bound(0.98), "faithfulness": Bound(0.95)},
    "many-answers": {"seed_iou": Bound(), "inside_own": Bound(), "inside_others": Bound()},
    "tracr": {"auroc": Bound(0.99)},
}
"""Target -> measure -> bound, as issue #18 states them. ``seconds`` is the wall time of one granularity's run of
every subtask of a case (issue: "within 3 minutes on one CPU thread"; undefined for a run on more threads), one row
per run; ``seed_iou`` one row per mask across its seeds; ``inside_own`` is precision (the share of the mask inside
its own planted set) and ``inside_others`` the share inside the other subtask's, the "fraction of the mask inside
either planted set" of the issue."""
RUN_MEASURES = ("seconds",)
SEEDS_MEASURES = ("seed_iou",)
DISCONNECTED_GRANULARITIES = ("weight", "neuron", "head")
"""A disconnected plant is held to its targets at each of these; one not run is a failed check."""

FAMILY_TARGET = {
    "disconnected": "disconnected",
    "entangled-neuron": "entangled",
    "entangled-head": "entangled",
    "partly-shared": "entangled",
    "per-weight": "many-answers",
    "tracr": "tracr",
}
"""Case family -> the target its masks are held to."""

PLANT_GRANULARITY = {"entangled-neuron": "neuron", "entangled-head": "head", "partly-shared": "neuron", "tracr": "head"}
"""Families held to their target at one granularity only: the one their answer is exact at (tracr: heads; its MLP
layers are checked by ``benchmarks/tracr_mask_auroc.py``, docs/tracr.md)."""


def gain_not_measured(summary: pd.DataFrame) -> pd.Series:
    """Rows of ``summary`` whose ``auroc_gain`` was not measured (the readout left out more than
    :data:`~modmask_lens.masks.readout.SCANNED_COUNTS` units to rank by marginal gain), as against undefined (one
    class of the answer key empty): NaN where ``auroc``, on the same answer key, is defined."""
    return summary["auroc_gain"].isna() & summary["auroc"].notna()


def family(case: str) -> str:
    """The family of a case name: ``"entangled-head/add-mul@seed1"`` -> ``"entangled-head"``."""
    return case.split("/", 1)[0]


def target_checks(tables: Mapping[str, pd.DataFrame], method: str | None = None) -> pd.DataFrame:
    """One row per target, uncontrolled mask and measure, and one per case and granularity for its null controls.

    Args:
        tables: the suite's tables (at least ``summary``, ``scores``, ``sharing``, ``faithfulness``, ``runs``;
            ``skipped`` where controls were skipped), e.g. :func:`~modmask_lens.groundtruth.run_suite`'s.
        method: check only this method's rows (default: every method's).

    Returns:
        Columns ``target``, ``case``, ``subtask``, ``granularity``, ``method``, ``seed``, ``measure``, ``value``,
        ``bound`` (text), ``met`` (1.0, 0.0, or NaN where the value is undefined) and ``note`` (the torch
        threads of a ``seconds`` row; whether a control ran or why it was skipped). The ``controls`` rows have
        ``measure`` ``random-init`` or ``shuffled-answers``, value 1.0 where that control was run (or skipped with a
        reason, in ``skipped``) for the case and granularity.

    Raises:
        ValueError: when a table or column is missing, the summary holds no masks, a mask or run appears twice, or
            ``method`` names no method of the tables.
    """
    _check_tables(tables)
    summary = tables["summary"]
    if method is not None:
        if method not in set(summary["method"]):
            raise ValueError(f"no masks of method {method!r} in the tables; they hold {sorted(set(summary['method']))}")
        summary = summary[summary["method"] == method]
    uncontrolled = summary[summary["control"] == "none"]
    iou = _iou_with_others(tables)
    after_removal = _others_after_removal(tables)
    runs = tables["runs"][tables["runs"]["control"] == "none"].set_index(["case", "granularity", "method", "seed"])
    subtask_counts = uncontrolled.groupby(["case", "granularity", "method", "seed"])["subtask"].nunique()
    uncontrolled = uncontrolled.assign(gain_not_measured=gain_not_measured(uncontrolled))
    rows, emitted = [], set()
    for row in uncontrolled.itertuples(index=False):
        target = FAMILY_TARGET.get(family(row.case))
        if target is None or PLANT_GRANULARITY.get(family(row.case), row.granularity) != row.granularity:
            continue
        key = (row.case, row.subtask, row.granularity, row.method, row.seed)
        run_key = (row.case, row.granularity, row.method, row.seed)
        run = runs.loc[run_key] if run_key in runs.index else None
        threads = None if run is None else int(run["torch_threads"])
        values = {
            "precision": row.precision,
            "recall": row.recall,
            "auroc": row.auroc_gain if row.granularity == "head" else row.auroc,
            "faithfulness": row.faithfulness,
            "iou_with_others": iou.get(key, math.nan),
            "others_after_removal": after_removal.get(key, math.nan),
            "seconds": math.nan if run is None or threads != 1 else run["total_s"],
            "seed_iou": row.seed_iou,
            "inside_own": row.precision,
            "inside_others": row.inside_others,
        }
        empty = row.kept_fraction == 0
        notes = {
            "seconds": "" if run is None else f"{run['total_s']:g} s on {threads} torch thread(s)",
            "precision": "keeps no scored unit" if empty else "",
            "recall": "every unit is in the answer key: AUROC undefined, recall held to its bound",
        }
        has_others = subtask_counts.get(run_key, 1) > 1
        absent = {  # a measurement the tables should hold but do not: failed, never undefined
            "seconds": "not measured: no runs row for this run" if run is None else "",
            "iou_with_others": "not measured: no scores or sharing row for this mask" if key not in iou else "",
            "others_after_removal": "not measured: no inverse rows on the other subtasks"
            if has_others and key not in after_removal
            else "",
            "auroc": f"not measured: the readout leaves out more than {SCANNED_COUNTS} units to rank by marginal gain"
            if row.granularity == "head" and row.gain_not_measured
            else "",
        }
        for measure, bound in TARGETS[target].items():
            if measure == "auroc" and row.true_fraction == 1:
                measure = "recall"
            scope = _scope(measure, key)
            if (measure, scope) in emitted:
                continue
            emitted.add((measure, scope))
            value = float(values[measure])
            failed = (measure == "precision" and empty) or bool(absent.get(measure))
            met = 0.0 if failed else bound.met(value)
            rows.append(
                {
                    "target": target,
                    **dict(zip(KEYS, scope, strict=True)),
                    "measure": "auroc_gain" if measure == "auroc" and row.granularity == "head" else measure,
                    "value": value,
                    "bound": str(bound),
                    "met": met,
                    "note": absent.get(measure) or notes.get(measure, ""),
                }
            )
    rows += _granularities_not_run(uncontrolled)
    checks = pd.DataFrame(rows + _control_rows(tables, uncontrolled), columns=COLUMNS)
    return checks.astype({"seed": "Int64"})


def target_tally(checks: pd.DataFrame) -> pd.DataFrame:
    """Per target of :data:`TARGETS` and ``controls``: ``checked`` (rows with a defined value), ``met`` among them,
    and ``undefined`` (NaN values, e.g. AUROC where every unit is used); a target the tables have no rows for reads
    0 / 0 / 0, so that a family left out of a run shows."""
    met = checks["met"]
    return pd.DataFrame(
        [
            {
                "target": target,
                "checked": int(met[checks["target"] == target].notna().sum()),
                "met": int((met[checks["target"] == target] == 1).sum()),
                "undefined": int(met[checks["target"] == target].isna().sum()),
            }
            for target in [*TARGETS, "controls"]
        ]
    )


def _scope(measure: str, key: tuple) -> tuple:
    """The (case, subtask, granularity, method, seed) a measure's row stands for: a run's measures leave the subtask
    empty (one row for both subtasks), a measure across seeds leaves the seed empty (one row for every seed)."""
    case, subtask, granularity, method, seed = key
    if measure in RUN_MEASURES:
        return (case, "", granularity, method, seed)
    if measure in SEEDS_MEASURES:
        return (case, subtask, granularity, method, None)
    return key


def _granularities_not_run(uncontrolled: pd.DataFrame) -> list[dict]:
    """A failed ``disconnected`` row for each of :data:`DISCONNECTED_GRANULARITIES` a disconnected case's method was
    not run at (uncontrolled)."""
    rows = []
    disconnected = uncontrolled[uncontrolled["case"].map(family) == "disconnected"]
    for (case, method), masks in disconnected.groupby(["case", "method"]):
        for granularity in sorted(set(DISCONNECTED_GRANULARITIES) - set(masks["granularity"])):
            rows.append(
                {
                    "target": "disconnected",
                    **dict(zip(KEYS, (case, "", granularity, method, None), strict=True)),
                    "measure": "granularity run",
                    "value": 0.0,
                    "bound": "run",
                    "met": 0.0,
                    "note": "not run",
                }
            )
    return rows


def _check_tables(tables: Mapping[str, pd.DataFrame]) -> None:
    """Refuse tables the check cannot read right: a missing table or column (tables of an older version), no masks,
    or a mask or run that appears twice (the same run's folder passed twice, or two runs of one case, whose rows
    would be counted twice and whose IoU would pair the wrong masks)."""
    for table, columns in REQUIRED.items():
        if table not in tables:
            raise ValueError(f"no {table} table: pass the --out folders of groundtruth run (they hold {table}.csv)")
        missing = sorted(set(columns) - set(tables[table].columns))
        if missing:
            raise ValueError(
                f"the {table} table has no columns {missing}: tables of an older version; rerun groundtruth run"
            )
    if tables["summary"].empty:
        raise ValueError("the summary table holds no masks")
    for table, columns in (("summary", [*KEYS, "control"]), ("runs", REQUIRED["runs"][:5])):
        repeated = tables[table][tables[table].duplicated(columns, keep=False)]
        if not repeated.empty:
            first = repeated.iloc[0]
            raise ValueError(
                f"the {table} table holds {len(repeated)} rows more than once (e.g. case {first['case']!r}, "
                f"granularity {first['granularity']!r}, method {first['method']!r}, control {first['control']!r}, "
                f"seed {first['seed']}): pass each run's folder once, and keep two runs of one case apart"
            )


def _iou_with_others(tables: Mapping[str, pd.DataFrame]) -> dict[tuple, float]:
    """(case, subtask, granularity, method, seed) -> IoU of the mask's kept scored units with the other subtask's
    mask, from ``scores`` (kept fraction of the scored units) and ``sharing`` (the share of the mask's kept units the
    other keeps too): ``|A & B| / (|A| + |B| - |A & B|)``; NaN unless the case has exactly two subtasks, and where
    neither mask keeps a unit."""
    scores = tables["scores"][tables["scores"]["control"] == "none"]
    sharing = tables["sharing"][tables["sharing"]["control"] == "none"].set_index(KEYS)["measured_shared"]
    kept = (scores["kept_fraction"] * scores["scored_units"]).round().to_numpy()
    keys = [tuple(key) for key in scores[KEYS].itertuples(index=False)]
    result = {}
    for key, count in zip(keys, kept, strict=True):
        others = [other for other_key, other in zip(keys, kept, strict=True) if _partners(key, other_key)]
        if len(others) != 1:
            result[key] = math.nan
            continue
        if count and key not in sharing.index:
            continue  # not measured: target_checks fails it
        both = float(sharing[key]) * count if count else 0.0
        union = count + others[0] - both
        result[key] = both / union if union else math.nan  # neither mask keeps a unit: no overlap to measure
    return result


def _partners(key: tuple, other: tuple) -> bool:
    """Whether two mask keys are different subtasks of one case, granularity, method and seed."""
    return key[0] == other[0] and key[1] != other[1] and key[2:] == other[2:]


def _others_after_removal(tables: Mapping[str, pd.DataFrame]) -> dict[tuple, float]:
    """(case, subtask, granularity, method, seed) -> the lowest faithfulness of another subtask with this mask's
    units removed (``faithfulness``'s ``inverse`` rows evaluated on the others)."""
    faithfulness = tables["faithfulness"]
    inverse = faithfulness[
        (faithfulness["condition"] == "inverse")
        & (faithfulness["evaluated_on"] != faithfulness["subtask"])
        & (faithfulness["control"] == "none")
    ]
    return inverse.groupby(KEYS)["faithfulness"].min().to_dict()


def _control_rows(tables: Mapping[str, pd.DataFrame], uncontrolled: pd.DataFrame) -> list[dict]:
    """One row per (case, granularity, method) of ``uncontrolled`` and null control: 1.0 where the summary has that
    control's rows or ``skipped`` gives a reason it could not be built (the note says which), 0.0 where neither."""
    summary = tables["summary"]
    skipped = tables.get("skipped", pd.DataFrame(columns=["case", "granularity", "control", "reason"]))
    if not skipped.empty and "granularity" not in skipped.columns:  # older tables: skipped at every granularity
        skipped = skipped.merge(uncontrolled[["case", "granularity"]].drop_duplicates(), on="case")
    run = set(zip(summary["case"], summary["granularity"], summary["method"], summary["control"], strict=True))
    reasons = {(row.case, row.granularity, row.control): row.reason for row in skipped.itertuples(index=False)}
    rows = []
    masks = set(zip(uncontrolled["case"], uncontrolled["granularity"], uncontrolled["method"], strict=True))
    for case, granularity, method in sorted(masks):
        for control in NULL_CONTROLS:
            ran = (case, granularity, method, control) in run
            reason = reasons.get((case, granularity, control))
            note = "run" if ran else (f"skipped: {reason}" if reason is not None else "not run")
            rows.append(
                {
                    "target": "controls",
                    "case": case,
                    "subtask": "",
                    "granularity": granularity,
                    "method": method,
                    "seed": None,
                    "measure": control,
                    "value": float(ran or reason is not None),
                    "bound": "run or skipped with a reason",
                    "met": float(ran or reason is not None),
                    "note": note,
                }
            )
    return rows
