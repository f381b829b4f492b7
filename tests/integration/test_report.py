"""The report's content, and the file-based entry point that ``modmask-lens report`` wraps."""

from __future__ import annotations

import re

import torch
from conftest import boot_gpt2
from test_viz_views import random_mask_set

from modmask_lens import save_masks
from modmask_lens.probes import ProbeEvaluation
from modmask_lens.viz import report_from_files, write_report
from modmask_lens.viz.report import versions


def test_report_from_files_reads_a_model_folder_and_mask_files(tmp_path):
    bridge = boot_gpt2(tmp_path / "model")
    files = [
        save_masks(random_mask_set(bridge, name, seed), tmp_path / f"masks-{name}.safetensors")
        for seed, name in enumerate(["first", "second"])
    ]
    path = report_from_files(tmp_path / "out" / "report.html", tmp_path / "model", files, "3 7 10 3")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("var CircuitsVis=") == 1
    assert {
        "Circuit of first",
        "Circuit of second",
        "Overlap of first, second",
        "Mask logits",
        "IoU of masks per layer and role",
        "Kept fraction per layer and role",
    } <= set(re.findall(r"<h3>([^<]+)</h3>", html))
    assert str(files[0]) in html and versions()["transformer-lens"] in html


def test_report_of_one_mask_leaves_out_the_overlap_and_records_the_settings(gpt2_bridge, tmp_path):
    mask = random_mask_set(gpt2_bridge, "only", 0).binary()
    html = write_report(
        tmp_path / "report.html",
        gpt2_bridge,
        {"only": mask},
        torch.tensor([1, 2, 3]),
        settings={"command": "modmask-lens demo"},
    ).read_text()
    headings = re.findall(r"<h3>([^<]+)</h3>", html)
    assert headings == [
        "Masks",
        "Circuit of only",
        "Attention through only",
        "Kept fraction per layer and role",
        "Model, masks and settings",
    ]
    assert "modmask-lens demo" in html


def test_report_with_a_probe_shows_its_routing_table_and_error_attribution(gpt2_bridge, tmp_path):
    gate = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    evaluation = ProbeEvaluation(
        gate,
        torch.ones(4, 2, dtype=torch.bool),
        torch.ones(4, dtype=torch.bool),
        torch.tensor([0, 0, 1, 1]),
        ("jump", "walk"),
    )
    mask = random_mask_set(gpt2_bridge, "only", 0).binary()
    html = write_report(
        tmp_path / "report.html", gpt2_bridge, {"only": mask}, torch.tensor([1, 2, 3]), probe=evaluation
    ).read_text()
    headings = re.findall(r"<h3>([^<]+)</h3>", html)
    assert headings[-4:] == [
        "Routing of subtasks to experts",
        "Routing information (bits)",
        "Error attribution",
        "Model, masks and settings",
    ]
    assert "Gated-module probe" in html and "walk" in html
