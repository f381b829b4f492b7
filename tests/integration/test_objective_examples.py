"""The examples of docs/objectives.md, run as written (few steps): a KL-objective mask on the zoo SCAN model and a
logit-difference mask on the zoo modular-addition model, each rendered in the HTML report."""

from __future__ import annotations

import pytest

import modmask_lens as mm
from modmask_lens import zoo
from modmask_lens.analysis import mask_accuracy
from modmask_lens.loading import load_subtask

QUICK = mm.TrainConfig(steps=5, batch_size=16, n_samples=2)


def test_kl_objective_mask_on_the_zoo_scan_model_renders_in_the_report(tmp_path):
    bridge, tokenizer, _, _ = zoo.load("scan")
    jump = load_subtask("scan/jump", tokenizer).head(64)
    masks = mm.train_masks(bridge, jump, train_config=QUICK, objective=mm.KLDivergence(), progress=False)
    report = mm.write_report(
        tmp_path / "kl.html", bridge, masks, jump.input_ids[0][:6], data={jump.name: jump}, objective=mm.KLDivergence()
    )
    assert "Per-weight masks trained on kl_divergence (positions=answers)" in report.read_text()
    table = mask_accuracy(
        bridge, {jump.name: masks[jump.name].binary()}, {jump.name: jump}, objective=mm.KLDivergence()
    )
    assert table.set_index("condition").loc["full", "accuracy"] == pytest.approx(1.0)  # agreement with itself
    assert masks[jump.name].history[-1]["agreement"] <= 1.0


def test_logit_difference_mask_on_the_zoo_modadd_model_renders_in_the_report(tmp_path):
    bridge, tokenizer, _, _ = zoo.load("modadd")
    sums = load_subtask("modadd", tokenizer).head(64)
    first_digits = [tokenizer.decode(row[row != -100][:1]) for row in sums.labels]
    sums = sums.with_foils([str((int(digit) + 1) % 10) for digit in first_digits], tokenizer)
    masks = mm.train_masks(
        bridge, sums, mm.MaskConfig(granularity="head"), QUICK, objective=mm.LogitDifference(), progress=False
    )
    report = mm.write_report(
        tmp_path / "logit-difference.html",
        bridge,
        masks,
        sums.input_ids[0][:6],
        data={sums.name: sums},
        objective=mm.LogitDifference(),
    )
    assert "Head masks trained on logit_difference" in report.read_text()
    full = mm.objective_metric(bridge, sums, mm.LogitDifference())
    assert full == pytest.approx(1.0)  # the zoo model's answer always beats the foil (its test exact match is 1.0)
