"""The reproduction experiments run end to end on the shipped zoo (tiny settings; the real numbers are in
docs/results.md)."""

from __future__ import annotations

from modmask_lens.masks.config import TrainConfig
from modmask_lens.reproduction import addmul_experiment, scan_experiment, scan_probe_experiment, write_results

TINY = TrainConfig(steps=2, batch_size=8)


def test_scan_experiment_reports_every_split_and_the_action_rows(tmp_path):
    result = scan_experiment(TINY, eval_limit=16)
    accuracy = result.tables["accuracy on each split's test set (Fig. 4a)"]
    assert {"jump", "length", "simple", "turn_left"} <= set(accuracy.columns)
    assert (accuracy[accuracy.condition == "full"][["jump", "simple"]] > 0.9).all(axis=None)
    rows = result.tables["output rows removed by the jump mask (Fig. 4b)"]
    assert set(rows.token) == {"I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT"}
    write_results([result], tmp_path / "results.md", "test")
    assert "Fig. 4a" in (tmp_path / "results.md").read_text()


def test_addmul_experiment_compares_the_operations():
    result = addmul_experiment(TINY, eval_limit=16)
    overlap = result.tables["IoU of the subtask masks per layer and role"]
    assert set(overlap.task_a) == {"add"} and set(overlap.task_b) == {"mul"}
    assert set(result.tables["mask sizes"].task) == {"control", "add", "mul"}


def test_scan_probe_experiment_reports_routing_and_errors():
    result = scan_probe_experiment(eval_limit=16, probe_steps=3)
    information = result.tables["routing information (bits)"].iloc[0]
    assert 0 <= information.mutual_information <= information.subtask_entropy <= 2.0 + 1e-9
    assert set(result.tables["subtask x expert (examples routed by argmax gate)"].subtask) == {"jump", "walk", "run", "look"}
