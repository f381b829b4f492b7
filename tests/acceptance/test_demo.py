"""The demo job runs end to end on the zoo's SCAN model and writes loadable masks, a summary and a report."""

from __future__ import annotations

import json

from experiments.demo import run_demo
from modmask_lens import load_masks, zoo
from modmask_lens.masks.config import TrainConfig


def test_demo_writes_masks_that_load_onto_the_zoo_model_a_summary_and_a_report(tmp_path):
    summary = run_demo(tmp_path, TrainConfig(steps=3, batch_size=8), progress=False)
    assert summary.read_text().startswith("# modmask-lens demo")

    def refuse(constant: str):
        raise ValueError(f"summary.json holds {constant}, which is not JSON")

    numbers = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)  # strict: no NaN
    full = [row for row in numbers["accuracy"] if row["condition"] == "full"]
    assert {row["subtask"] for row in full} == {"scan-jump", "scan-walk"}
    assert all(row["accuracy"] > 0.95 for row in full)
    for name, (scored, total) in numbers["test_commands_scored"].items():  # the summary says what was scored
        assert scored == min(300, total) and f"{name}: {scored} of {total}" in summary.read_text()
    masks = load_masks(tmp_path / "masks-scan-jump.safetensors", zoo.load("scan").bridge)
    assert masks.train_config["steps"] == 3
    report = (tmp_path / "report.html").read_text()
    assert "<svg" in report and "scan-walk" in report and 'src="http' not in report
