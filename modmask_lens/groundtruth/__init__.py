"""Ground truth for mask methods: models whose subtasks' weights are known, metrics against that answer, null controls.

>>> from modmask_lens.groundtruth import all_cases, baseline_methods, run_suite              # doctest: +SKIP
>>> tables = run_suite(baseline_methods(steps=300), all_cases(["disconnected"]))          # doctest: +SKIP
>>> tables["summary"][["case", "subtask", "granularity", "method", "control", "auroc"]]     # doctest: +SKIP
"""

from modmask_lens.groundtruth.case import GroundTruthCase, UnitTruth
from modmask_lens.groundtruth.controls import CONTROLS, control_case, random_init_bridge, shuffled_answers
from modmask_lens.groundtruth.methods import FinderMethod, Method, baseline_methods
from modmask_lens.groundtruth.metrics import (
    auroc,
    curve_areas,
    density_curves,
    gain_ranked_scores,
    mask_faithfulness,
    measured_sharing,
    unit_scores,
)
from modmask_lens.groundtruth.plants import PLANTS, available_plants, load_plant, plant_cases
from modmask_lens.groundtruth.probe_check import probe_check
from modmask_lens.groundtruth.registry import all_cases
from modmask_lens.groundtruth.suite import run_suite
from modmask_lens.groundtruth.targets import TARGETS, target_checks, target_tally
from modmask_lens.groundtruth.tracr_cases import load_tracr_case, tracr_cases

__all__ = [
    "CONTROLS",
    "PLANTS",
    "TARGETS",
    "FinderMethod",
    "GroundTruthCase",
    "Method",
    "UnitTruth",
    "all_cases",
    "auroc",
    "available_plants",
    "baseline_methods",
    "control_case",
    "curve_areas",
    "density_curves",
    "gain_ranked_scores",
    "load_plant",
    "load_tracr_case",
    "mask_faithfulness",
    "measured_sharing",
    "plant_cases",
    "probe_check",
    "random_init_bridge",
    "run_suite",
    "shuffled_answers",
    "target_checks",
    "target_tally",
    "tracr_cases",
    "unit_scores",
]
