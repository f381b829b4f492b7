"""The demo job runs end to end and writes loadable masks and a summary."""

from __future__ import annotations

import json

from transformer_lens.model_bridge import TransformerBridge

from modmask_lens import load_masks
from modmask_lens.demo import run_demo


def test_demo_writes_masks_that_load_onto_its_model_and_a_summary(tmp_path):
    summary = run_demo(tmp_path, mask_steps=30, progress=False)
    assert summary.read_text().startswith("# modmask-lens demo")
    numbers = json.loads((tmp_path / "summary.json").read_text())
    assert {row["task"] for row in numbers["accuracy"]} == {"copy_first", "copy_second"}
    assert all(row["full"] == 1.0 for row in numbers["accuracy"])
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "model"), device="cpu")
    masks = load_masks(tmp_path / "masks-copy_first.safetensors", bridge)
    assert masks.train_config["steps"] == 30
    report = (tmp_path / "report.html").read_text()
    assert "<svg" in report and "copy_second" in report and 'src="http' not in report
