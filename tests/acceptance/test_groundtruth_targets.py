"""The suite's fast cases against the finder's targets: on the disconnected plant the library's default finder keeps
each subtask's own heads and neurons, nothing of the other's, stays faithful, and removing one subtask's mask leaves
the other subtask working (issue targets: precision >= 0.98, IoU <= 0.05, faithfulness >= 0.95, other >= 0.9)."""

from __future__ import annotations

import pytest

from modmask_lens.groundtruth import FinderMethod, load_plant, run_suite, target_checks
from modmask_lens.masks.config import TrainConfig

STEPS = 600  # the finder study's budget (docs/finder-study.md)


@pytest.fixture(scope="module")
def tables():
    case = load_plant("disconnected-add-mul")
    finder = FinderMethod(TrainConfig(steps=STEPS))
    return run_suite({"faithful": finder}, [case], granularities=["neuron", "head"], controls=["none"])


@pytest.mark.parametrize("granularity", ["neuron", "head"])
def test_the_default_finder_recovers_each_subtasks_own_units(tables, granularity):
    checks = target_checks(tables)
    checks = checks[(checks["granularity"] == granularity) & (checks["target"] == "disconnected")]
    held = checks[checks["measure"] != "seconds"]  # time is a benchmark's figure, never a test's
    assert set(held["measure"]) == {"precision", "iou_with_others", "faithfulness", "others_after_removal"}
    assert len(held) == 2 * 4 and (held["met"] == 1).all(), held
    faithfulness = tables["faithfulness"]
    removed = faithfulness[
        (faithfulness["granularity"] == granularity)
        & (faithfulness["condition"] == "inverse")
        & (faithfulness["evaluated_on"] != faithfulness["subtask"])
    ].set_index("subtask")["faithfulness"]
    others_after_removal = held[held["measure"] == "others_after_removal"].set_index("subtask")["value"]
    assert others_after_removal.to_dict() == removed.to_dict()  # the check reads the table's own numbers


def test_the_default_head_finder_recovers_an_entangled_plants_heads():
    """On a plant whose two subtasks share every input token and whose heads were trained split (each subtask on its
    own 8 of the 16 heads alone, both on all), each default head mask keeps its subtask's heads and ranks them above
    the other's (issue targets: precision >= 0.95, AUROC >= 0.98, faithful). From logit 3.0, the start before
    session 11, the `mul` mask here was padded with `add`'s heads on seeds 1 and 2 (precision 0.583,
    docs/concepts.md#head-masks)."""
    case = load_plant("entangled-head-add-mul")
    tables = run_suite(
        {"faithful": FinderMethod(TrainConfig(steps=STEPS))},
        [case],
        granularities=["head"],
        controls=["none"],
        method_seeds=(1,),  # one where the start before session 11 failed
    )
    summary = tables["summary"].set_index("subtask")
    assert (summary["precision"] >= 0.95).all(), summary["precision"]
    assert (summary["auroc"] >= 0.98).all(), summary["auroc"]
    assert (summary["auroc_gain"] >= 0.98).all(), summary["auroc_gain"]  # left-out heads by their marginal gain
    assert (summary["faithfulness"] >= 0.95).all(), summary["faithfulness"]
