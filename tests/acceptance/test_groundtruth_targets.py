"""The suite's fast cases against the finder's targets: on the disconnected plant the library's default finder keeps
each subtask's own heads and neurons, nothing of the other's, stays faithful, and removing one subtask's mask leaves
the other subtask working (issue targets: precision >= 0.98, IoU <= 0.05, faithfulness >= 0.95, other >= 0.9)."""

from __future__ import annotations

import pytest

from modmask_lens.groundtruth import FinderMethod, load_plant, run_suite
from modmask_lens.masks.config import TrainConfig

STEPS = 600  # the finder study's budget (docs/finder-study.md)


@pytest.fixture(scope="module")
def tables():
    case = load_plant("disconnected-add-mul")
    finder = FinderMethod(TrainConfig(steps=STEPS))
    return run_suite({"faithful": finder}, [case], granularities=["neuron", "head"], controls=["none"])


@pytest.mark.parametrize("granularity", ["neuron", "head"])
def test_the_default_finder_recovers_each_subtasks_own_units(tables, granularity):
    summary = tables["summary"][tables["summary"]["granularity"] == granularity].set_index("subtask")
    assert (summary["precision"] >= 0.98).all(), summary["precision"]
    assert (summary["faithfulness"] >= 0.95).all(), summary["faithfulness"]
    sharing = tables["sharing"][tables["sharing"]["granularity"] == granularity]
    assert (sharing["measured_shared"] <= 0.05).all(), sharing  # the masks share (almost) nothing
    faithfulness = tables["faithfulness"]
    removed = faithfulness[
        (faithfulness["granularity"] == granularity)
        & (faithfulness["condition"] == "inverse")
        & (faithfulness["evaluated_on"] != faithfulness["subtask"])
    ]
    assert len(removed) == 2 and (removed["faithfulness"] >= 0.9).all(), removed  # the other subtask still works
