"""Issue #18's targets read from the suite's tables: each check against a value worked out by hand."""

from __future__ import annotations

import errno
import math
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.cli_groundtruth import SHOWN, shown_summary
from modmask_lens.groundtruth.targets import target_checks, target_tally

LABELS = {"method": "faithful", "seed": 0}


def _summary_row(case, subtask, granularity, control="none", **values):
    row = {"case": case, "subtask": subtask, "granularity": granularity, "control": control, **LABELS}
    defaults = {"precision": 1.0, "recall": 1.0, "auroc": 1.0, "auroc_gain": 1.0, "faithfulness": 1.0}
    defaults |= {"kept_fraction": 0.5, "true_fraction": 0.5}
    return row | defaults | {"seed_iou": math.nan, "inside_others": 0.0} | values


def _tables() -> dict[str, pd.DataFrame]:
    """A disconnected pair that misses every bound but precision, an entangled-head pair, an entangled-neuron mask,
    a tracr program whose heads are all used and one whose AUROC is missing, and a per-weight pair without a second
    seed."""
    disconnected = "disconnected/add-mul"
    summary = pd.DataFrame(
        [
            _summary_row(disconnected, "add", "neuron"),
            _summary_row(disconnected, "mul", "neuron", faithfulness=0.9),
            _summary_row(disconnected, "add", "neuron", control="random-init", precision=0.5),
            _summary_row("entangled-head/add-mul", "add", "head", auroc=0.5, auroc_gain=0.99),
            _summary_row("entangled-head/add-mul", "mul", "head", precision=0.9, auroc_gain=0.97),
            _summary_row("entangled-neuron/add-mul", "add", "neuron", auroc=0.97, auroc_gain=0.99),
            _summary_row("entangled-neuron/add-mul", "add", "weight", precision=0.5),  # not its plant's granularity
            _summary_row(
                "tracr/hist", "hist", "head", auroc=math.nan, auroc_gain=math.nan, recall=0.98, true_fraction=1
            ),
            _summary_row("tracr/reverse", "reverse", "head", auroc=math.nan, auroc_gain=math.nan),
            _summary_row("per-weight/add-mul", "add", "weight", inside_others=0.5),
        ]
    )
    keys = ["case", "subtask", "granularity", "control", "method", "seed"]
    masks = [(disconnected, "add", "neuron", "none"), (disconnected, "mul", "neuron", "none")]
    scores = pd.DataFrame([dict(zip(keys[:4], mask, strict=True)) | LABELS for mask in masks]).assign(
        kept_fraction=[10 / 40, 8 / 40], scored_units=40
    )
    sharing = scores[keys].assign(measured_shared=[2 / 10, 2 / 8])  # 2 units kept by both
    faithfulness = pd.DataFrame(
        [
            {"case": disconnected, "subtask": "add", "evaluated_on": "mul", "faithfulness": 0.85},
            {"case": disconnected, "subtask": "mul", "evaluated_on": "add", "faithfulness": 0.95},
            {"case": disconnected, "subtask": "mul", "evaluated_on": "mul", "faithfulness": 0.0},  # on itself
        ]
    ).assign(granularity="neuron", control="none", condition="inverse", **LABELS)
    runs = pd.DataFrame(
        [
            {"case": disconnected, "granularity": "neuron", "control": "none", "total_s": 200.0, "torch_threads": 1}
            | LABELS
        ]
    )
    skipped = pd.DataFrame([{"case": disconnected, "control": "shuffled-answers", "reason": "no two examples share"}])
    return {
        "summary": summary,
        "scores": scores,
        "sharing": sharing,
        "faithfulness": faithfulness,
        "runs": runs,
        "skipped": skipped,
    }


def _value(checks: pd.DataFrame, case: str, subtask: str, measure: str) -> tuple[float, float]:
    row = checks[(checks["case"] == case) & (checks["subtask"] == subtask) & (checks["measure"] == measure)]
    assert len(row) == 1, row
    return float(row["value"].iloc[0]), float(row["met"].iloc[0])


def test_disconnected_checks_read_iou_removal_and_time_from_the_tables():
    checks = target_checks(_tables())
    assert _value(checks, "disconnected/add-mul", "add", "iou_with_others") == pytest.approx((2 / 16, 0.0))
    assert _value(checks, "disconnected/add-mul", "mul", "iou_with_others") == pytest.approx((2 / 16, 0.0))
    assert _value(checks, "disconnected/add-mul", "add", "others_after_removal") == (0.85, 0.0)
    assert _value(checks, "disconnected/add-mul", "mul", "others_after_removal") == (0.95, 1.0)
    assert _value(checks, "disconnected/add-mul", "mul", "faithfulness") == (0.9, 0.0)
    assert _value(checks, "disconnected/add-mul", "", "seconds") == (200.0, 0.0)  # one row per run
    not_run = checks[checks["measure"] == "granularity run"]
    assert sorted(not_run["granularity"]) == ["head", "weight"] and (not_run["met"] == 0).all()
    assert _value(checks, "disconnected/add-mul", "add", "precision") == (1.0, 1.0)


def test_head_masks_are_held_to_the_gain_ranking_and_neurons_to_the_logits():
    checks = target_checks(_tables())
    assert _value(checks, "entangled-head/add-mul", "add", "auroc_gain") == (0.99, 1.0)
    assert _value(checks, "entangled-head/add-mul", "mul", "auroc_gain") == (0.97, 0.0)
    assert _value(checks, "entangled-head/add-mul", "mul", "precision") == (0.9, 0.0)
    assert _value(checks, "entangled-neuron/add-mul", "add", "auroc") == (0.97, 0.0)
    entangled = checks[(checks["case"] == "entangled-neuron/add-mul") & (checks["target"] == "entangled")]
    assert set(entangled["granularity"]) == {"neuron"}  # its weight row is not held to the target


def test_undefined_values_and_reported_values():
    checks = target_checks(_tables())
    value, met = _value(checks, "tracr/reverse", "reverse", "auroc_gain")
    assert math.isnan(value) and math.isnan(met)
    assert _value(checks, "per-weight/add-mul", "add", "inside_others") == (0.5, 1.0)
    assert _value(checks, "per-weight/add-mul", "add", "inside_own") == (1.0, 1.0)
    value, met = _value(checks, "per-weight/add-mul", "add", "seed_iou")
    assert math.isnan(value) and met == 0.0  # one seed: the ambiguity is not reported
    tally = target_tally(checks).set_index("target")
    assert tally.loc["tracr"].tolist() == [1, 0, 1]


def test_a_missing_measurement_fails_its_target_with_a_note_instead_of_reading_undefined():
    """A disconnected pair whose run has no ``runs`` row, whose ``add`` mask has no inverse row on ``mul`` and no
    ``sharing`` row: those measurements were absent and read as undefined (NaN, neither met nor failed)."""
    tables = _tables()
    tables["runs"] = tables["runs"].iloc[0:0]
    faithfulness = tables["faithfulness"]
    tables["faithfulness"] = faithfulness[(faithfulness["subtask"] != "add") | (faithfulness["evaluated_on"] != "mul")]
    tables["sharing"] = tables["sharing"][tables["sharing"]["subtask"] != "add"]
    checks = target_checks(tables).set_index(["subtask", "measure"])
    disconnected = checks[checks["case"] == "disconnected/add-mul"]
    for subtask, measure, note in [
        ("", "seconds", "not measured: no runs row for this run"),
        ("add", "others_after_removal", "not measured: no inverse rows on the other subtasks"),
        ("add", "iou_with_others", "not measured: no scores or sharing row for this mask"),
    ]:
        assert disconnected.loc[(subtask, measure), ["met", "note"]].tolist() == [0.0, note]
    assert disconnected.loc[("mul", "others_after_removal"), "met"] == 1.0  # its inverse row is there: 0.95
    assert target_tally(target_checks(tables)).set_index("target").loc["disconnected", "undefined"] == 0


def test_a_head_mask_whose_gains_were_not_measured_fails_its_auroc_instead_of_reading_undefined():
    """``auroc_gain`` is NaN where the readout left out more units than the gains are measured for: with the logits'
    AUROC defined (the same answer key, both classes present) the gains were not measured, and that read as
    undefined; where the logits' AUROC is NaN too, it is undefined."""
    tables = _tables()
    summary = tables["summary"]
    unmeasured = (summary["case"] == "entangled-head/add-mul") & (summary["subtask"] == "mul")
    tables["summary"] = summary.assign(auroc_gain=summary["auroc_gain"].mask(unmeasured))
    checks = target_checks(tables).set_index(["case", "subtask", "measure"])
    row = checks.loc[("entangled-head/add-mul", "mul", "auroc_gain")]
    assert math.isnan(row["value"])
    assert row[["met", "note"]].tolist() == [
        0.0,
        "not measured: the readout leaves out more than 256 units to rank by marginal gain",
    ]
    assert math.isnan(checks.loc[("tracr/reverse", "reverse", "auroc_gain"), "met"])  # auroc NaN too: undefined
    assert target_tally(target_checks(tables)).set_index("target").loc["entangled", "undefined"] == 0


def test_the_printed_summary_says_which_gains_were_not_measured_and_which_are_undefined():
    summary = _tables()["summary"]
    summary = summary.assign(auroc_gain=summary["auroc_gain"].mask(summary["subtask"] == "mul"))
    shown = shown_summary(summary.assign(**{column: 0.0 for column in SHOWN["summary"] if column not in summary}))
    gains = dict(zip(shown["case"] + ":" + shown["subtask"], shown["auroc_gain"], strict=True))
    assert gains["entangled-head/add-mul:mul"] == "not measured"  # auroc 1.0: the gains were not measured
    assert gains["tracr/reverse:reverse"] == "nan"  # auroc NaN too: undefined
    assert gains["entangled-head/add-mul:add"] == "0.990"


def test_a_case_of_one_subtask_leaves_the_measures_against_others_undefined():
    tables = _tables()
    tables["summary"] = tables["summary"][tables["summary"]["subtask"] != "mul"]
    tables["faithfulness"] = tables["faithfulness"][tables["faithfulness"]["evaluated_on"] != "mul"]
    checks = target_checks(tables).set_index(["case", "subtask", "measure"])
    row = checks.loc[("disconnected/add-mul", "add", "others_after_removal")]
    assert math.isnan(row["met"]) and row["note"] == ""


def test_a_program_that_uses_every_head_is_held_to_recall_in_place_of_auroc():
    checks = target_checks(_tables())
    assert _value(checks, "tracr/hist", "hist", "recall") == (0.98, 0.0)  # one used head left out: not recovered
    hist = checks[checks["case"] == "tracr/hist"]
    assert "auroc_gain" not in set(hist["measure"]) and "AUROC undefined" in hist["note"].iloc[0]


def test_controls_count_when_run_or_skipped_with_a_reason():
    checks = target_checks(_tables())
    controls = checks[checks["target"] == "controls"].set_index(["case", "measure"])["met"]
    assert controls[("disconnected/add-mul", "random-init")] == 1.0
    assert controls[("disconnected/add-mul", "shuffled-answers")] == 1.0  # skipped, with a reason
    notes = checks[checks["target"] == "controls"].set_index(["case", "measure"])["note"]
    assert notes[("disconnected/add-mul", "random-init")] == "run"
    assert notes[("disconnected/add-mul", "shuffled-answers")] == "skipped: no two examples share"
    assert notes[("entangled-head/add-mul", "random-init")] == "not run"
    assert controls[("entangled-head/add-mul", "random-init")] == 0.0
    assert controls[("entangled-neuron/add-mul", "random-init")].tolist() == [0.0, 0.0]  # neuron and weight
    assert len(controls) == 2 * 7  # two controls for each uncontrolled case and granularity, held to a target or not


def test_targets_command_reads_the_run_folders(tmp_path):
    folder = tmp_path / "run"
    _write_run(folder, _tables())
    (folder / "stability.csv").write_text("\n")  # an empty table, as run --out writes one
    result = CliRunner().invoke(app, ["groundtruth", "targets", str(tmp_path), "--out", str(tmp_path / "targets.md")])
    assert result.exit_code == 0, result.output
    assert "| disconnected | 11 | 4 | 0 |" in result.output  # 2 masks x 4 measures, 1 run, 2 granularities not run
    assert "| tracr/reverse | reverse | head | faithful | 0 | auroc_gain | nan | >= 0.99 | undefined |" in result.output
    assert (tmp_path / "targets.md").read_text().startswith("| target | checked | met | undefined |")


def test_targets_out_whose_rename_fails_leaves_the_old_report_whole(tmp_path, monkeypatch):
    """``--out`` wrote the report in place: a process that died mid-write left half a report that looked whole."""
    _write_run(tmp_path / "run", _tables())
    report = tmp_path / "targets.md"
    report.write_text("old")

    def replace(source, target):
        raise OSError(errno.EIO, "input/output error", str(target))

    monkeypatch.setattr(os, "replace", replace)
    result = CliRunner().invoke(app, ["groundtruth", "targets", str(tmp_path / "run"), "--out", str(report)])
    assert result.exit_code != 0 and "input/output error" in result.output
    assert report.read_text() == "old" and sorted(path.name for path in tmp_path.iterdir()) == ["run", "targets.md"]


def test_targets_command_names_the_fix_for_a_folder_without_tables(tmp_path):
    result = CliRunner().invoke(app, ["groundtruth", "targets", str(tmp_path)])
    assert result.exit_code != 0
    assert "groundtruth run" in result.output


def _write_run(folder, tables):
    folder.mkdir(parents=True)
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)


def test_tables_read_twice_are_refused_before_they_are_counted_twice(tmp_path):
    _write_run(tmp_path / "first", _tables())
    _write_run(tmp_path / "rerun", _tables())  # e.g. a rerun of the same cases beside the first run
    result = CliRunner().invoke(app, ["groundtruth", "targets", str(tmp_path)])
    assert result.exit_code != 0
    assert "more than once" in result.output and "disconnected/add-mul" in result.output
    doubled = {name: pd.concat([frame, frame]) for name, frame in _tables().items()}
    with pytest.raises(ValueError, match="pass each run's folder once"):
        target_checks(doubled)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tables: tables.pop("scores"), "no scores table"),
        (lambda tables: tables.update(summary=tables["summary"].drop(columns="auroc_gain")), "older version"),
        (lambda tables: tables.update(summary=tables["summary"].iloc[:0]), "holds no masks"),
    ],
)
def test_tables_the_check_cannot_read_are_refused_with_the_fix(change, message):
    tables = _tables()
    change(tables)
    with pytest.raises(ValueError, match=message):
        target_checks(tables)


def test_an_unknown_method_names_the_tables_methods():
    with pytest.raises(ValueError, match=r"no masks of method 'Faithful'.*\['faithful'\]"):
        target_checks(_tables(), method="Faithful")


def test_out_naming_a_folder_is_refused_before_the_report(tmp_path):
    _write_run(tmp_path / "run", _tables())
    result = CliRunner().invoke(app, ["groundtruth", "targets", str(tmp_path / "run"), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "is a folder" in result.output and "| target |" not in result.output


def test_a_run_on_more_threads_leaves_the_time_undefined_and_an_empty_mask_fails_its_precision():
    tables = _tables()
    tables["runs"] = tables["runs"].assign(torch_threads=2)
    summary = tables["summary"]
    tables["summary"] = summary.assign(
        precision=summary["precision"].mask(summary["subtask"] == "mul"),
        kept_fraction=summary["kept_fraction"].mask(summary["subtask"] == "mul", 0.0),
    )
    checks = target_checks(tables)
    value, met = _value(checks, "disconnected/add-mul", "", "seconds")
    assert math.isnan(value) and math.isnan(met)
    assert checks[checks["measure"] == "seconds"]["note"].tolist() == ["200 s on 2 torch thread(s)"]
    value, met = _value(checks, "disconnected/add-mul", "mul", "precision")
    assert math.isnan(value) and met == 0.0


def test_the_tally_lists_a_target_the_tables_have_no_rows_for():
    tables = _tables()
    tables["summary"] = tables["summary"][~tables["summary"]["case"].str.startswith("per-weight")]
    tally = target_tally(target_checks(tables)).set_index("target")
    assert tally.loc["many-answers"].tolist() == [0, 0, 0]
    assert list(tally.index) == ["disconnected", "entangled", "many-answers", "tracr", "controls"]
