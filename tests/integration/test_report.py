"""The report's content, and the file-based entry point that ``modmask-lens report`` wraps."""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest
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
    path = report_from_files(tmp_path / "out" / "report.html", tmp_path / "model", files, "3 7 10 3", prompt_ids=True)
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


def test_report_data_named_after_no_mask_leaves_the_mask_columns_empty(gpt2_bridge, tmp_path):
    from modmask_lens.core.data import SubtaskData
    from modmask_lens.viz.report import _summary, report_views

    input_ids = torch.randint(1, gpt2_bridge.cfg.d_vocab, (4, 6), generator=torch.Generator().manual_seed(0))
    other = SubtaskData("other", input_ids, torch.where(torch.arange(6) >= 4, input_ids, -100))
    mask = random_mask_set(gpt2_bridge, "only", 0).binary()
    views = report_views(gpt2_bridge, {"only": mask}, torch.tensor([1, 2, 3]), data={"other": other})
    summary = views[1].frame.set_index("mask")
    assert summary.loc["only", ["accuracy full", "accuracy mask", "accuracy inverse"]].isna().all()
    assert _summary({"only": mask}, None, {"only": "only"}).columns.tolist() == [
        "mask",
        "kept",
        "total",
        "kept_fraction",
    ]


def test_a_mask_under_a_label_is_scored_on_its_own_subtask_in_the_summary_and_the_accuracy_table(gpt2_bridge):
    """Masks keyed by labels other than their subtask (``--label``, or two seeds of one subtask) had their accuracy
    cells empty: the report matched masks to data by the label. Expected values from forwards written here: data
    labelled with the full model's own greedy answers (full accuracy 1), a mask that keeps every weight (1), and its
    inverse."""
    from modmask_lens import MaskSet, masked
    from modmask_lens.core.data import SubtaskData
    from modmask_lens.viz.report import report_views

    gpt2_bridge.eval()  # no dropout: the report evaluates in eval mode
    answers = torch.randint(1, gpt2_bridge.cfg.d_vocab, (6, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for position in (4, 5):  # greedy decoding: positions 4 and 5 are what the model predicts
            answers[:, position] = gpt2_bridge(answers[:, :position]).argmax(dim=-1)[:, -1]
    data = SubtaskData("copy", answers, torch.where(torch.arange(6) >= 4, answers, -100))
    kept_all = MaskSet.for_bridge(gpt2_bridge, name="copy")  # initial logits above the threshold: all kept
    with masked(gpt2_bridge, ~kept_all.binary()), torch.no_grad():
        predicted = gpt2_bridge(answers).argmax(dim=-1)[:, 3:5]
    inverse = (predicted == answers[:, 4:]).all(dim=1).float().mean().item()
    other = dataclasses.replace(data, name="other")  # a second subtask (the same questions) that no mask is for
    views = report_views(
        gpt2_bridge,
        {"seed 0": kept_all, "seed 1": kept_all.binary()},
        torch.tensor([1, 2]),
        data={"copy": data, "other": other},
    )
    summary = views[1].frame.set_index("mask")[["accuracy full", "accuracy mask", "accuracy inverse"]]
    assert summary.values.flatten().tolist() == pytest.approx([1.0, 1.0, inverse] * 2)
    titles = [getattr(view, "title", "") for view in views]
    table = views[titles.index("Accuracy: full model, mask, inverse mask")].frame
    assert table[["mask", "subtask"]].values.tolist() == [["seed 0", "copy"], ["seed 1", "copy"]]
    assert table[["full", "mask only", "inverse"]].values.flatten().tolist() == pytest.approx([1.0, 1.0, inverse] * 2)
    removal = views[titles.index("Accuracy on every subtask: each mask alone and removed")].frame
    assert removal[["mask", "condition"]].values.tolist() == [
        ["full model", ""],
        *([name, condition] for name in ("seed 0", "seed 1") for condition in ("mask only", "mask removed")),
    ]
    expected = [1.0, 1.0] + [1.0, 1.0, inverse, inverse] * 2  # each row: copy, other
    assert removal[["copy", "other"]].values.flatten().tolist() == pytest.approx(expected)
    unnamed = MaskSet.for_bridge(gpt2_bridge)  # named "mask": scored on the data its label names, as before
    views = report_views(gpt2_bridge, {"copy": unnamed}, torch.tensor([1, 2]), data={"copy": data})
    assert views[1].frame.loc[0, ["accuracy full", "accuracy mask"]].tolist() == pytest.approx([1.0, 1.0])


def test_report_refuses_a_bad_prompt_before_any_work(gpt2_bridge, tmp_path, monkeypatch):
    report = importlib.import_module("modmask_lens.viz.report")

    monkeypatch.setattr(report, "attention_patterns", lambda *arguments: pytest.fail("ran before the prompt check"))
    mask = random_mask_set(gpt2_bridge, "only", 0).binary()
    for prompt, message in (
        (torch.tensor([[1, 2, 3]]), "1-D tensor|parameter 'prompt'"),  # under the tests, jaxtyping refuses it first
        (torch.tensor([], dtype=torch.long), "non-empty"),
        (torch.tensor([1, gpt2_bridge.cfg.d_vocab]), "outside the model's vocabulary"),
        (torch.ones(gpt2_bridge.cfg.n_ctx + 1, dtype=torch.long), "context"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            write_report(tmp_path / "report.html", gpt2_bridge, {"only": mask}, prompt)


def test_report_command_scores_the_masks_on_named_subtasks(tmp_path):
    """``report --task`` adds the accuracy table (a walk-through found no way to get it from the command line): on
    the zoo's SCAN model, the jump mask's own accuracy checked against a forward written here (``masked``, argmax
    of every answer position)."""
    from typer.testing import CliRunner

    from modmask_lens import masked
    from modmask_lens.cli import app
    from modmask_lens.loading import load_bridge, load_subtask
    from modmask_lens.masks.io import load_masks

    runner = CliRunner()
    train = ["masks", "train", "--model", "scan", "--task", "scan/jump", "--task", "scan/walk", "--steps", "2"]
    trained = runner.invoke(app, train + ["--batch-size", "8", "--out", str(tmp_path)])
    assert trained.exit_code == 0, trained.output
    files = [str(tmp_path / f"masks-scan-{name}.safetensors") for name in ("jump", "walk")]
    arguments = ["report", "--model", "scan", "--prompt", "jump twice", "--out", str(tmp_path / "r.html")]
    arguments += [part for file in files for part in ("--masks", file)]
    result = runner.invoke(app, arguments + ["--task", "scan/jump", "--task", "scan/walk", "--eval-limit", "40"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    accuracy = html[html.index("Accuracy: full model, mask, inverse mask") :]
    bridge, tokenizer = load_bridge("scan")
    jump = load_subtask("scan/jump", tokenizer).head(40)
    with masked(bridge, load_masks(files[0], bridge).binary()), torch.no_grad():
        predicted = bridge(jump.input_ids).argmax(dim=-1)[:, :-1]
    scored = jump.labels[:, 1:] != -100
    right = ((predicted == jump.labels[:, 1:]) | ~scored).all(dim=1).float().mean().item()
    assert right > 0.5  # a mask that keeps the subtask: the check below compares a number, not two zeros
    row = re.search(r"<tr><td class=mm-text>scan-jump</td>(.*?)</tr>", accuracy).group(1)
    assert row.split("</td>")[2].endswith(f">{right:.3f}"), row  # the columns: subtask, full, mask only, inverse
    assert "scan-jump (40 examples)" in html
    # under labels of its own, a mask is still scored on its subtask (its accuracy cells were empty)
    labels = ["--label", "mine", "--label", "theirs"]
    labelled = runner.invoke(
        app, arguments + ["--task", "scan/jump", "--task", "scan/walk", "--eval-limit", "40"] + labels
    )
    assert labelled.exit_code == 0, labelled.output
    html = (tmp_path / "r.html").read_text()
    summary = html[html.index("<h3>Masks</h3>") : html.index("Accuracy: full model, mask, inverse mask")]
    accuracy = html[html.index("Accuracy: full model, mask, inverse mask") :]
    for table, cell in ((summary, 4), (accuracy, 2)):  # summary: kept, total, kept_fraction, full, mask, inverse
        row = re.search(r"<tr><td class=mm-text>mine</td>(.*?)</tr>", table).group(1)
        assert row.split("</td>")[cell].endswith(f">{right:.3f}"), row
    absent = runner.invoke(app, arguments + ["--task", str(tmp_path / "absent.jsonl")])
    assert absent.exit_code != 0 and "absent.jsonl" in absent.output


def test_two_masks_of_one_subtask_stay_apart_under_their_labels(gpt2_bridge):
    """Masks keep their subtask's name; the report's label must name them in every view (a reviewer found the kept
    fraction plot averaging two seeds into one series and both circuits titled alike)."""
    from modmask_lens.viz.report import report_views

    seeds = {"seed0": random_mask_set(gpt2_bridge, "copy", 0), "seed1": random_mask_set(gpt2_bridge, "copy", 1)}
    views = report_views(gpt2_bridge, seeds, torch.tensor([3, 7, 10]))
    html = "".join(view.body() for view in views)
    assert "Circuit of seed0" in html and "Circuit of seed1" in html and "Circuit of copy" not in html
    kept = next(view for view in views if getattr(view, "title", "") == "Kept fraction per layer and role")
    assert list(kept.values.columns) == ["seed0", "seed1"]
    expected = seeds["seed1"].binary().kept_fraction(by="layer_role").set_index(["layer", "role"])["kept_fraction"]
    assert kept.values["seed1"].tolist() == pytest.approx(expected.tolist())


def test_report_refuses_to_write_over_a_mask_file_it_reads(tmp_path):
    """``--out`` naming one of the ``--masks`` files replaced the trained masks with the HTML page, exit 0."""
    from typer.testing import CliRunner

    from modmask_lens.cli import app
    from modmask_lens.masks.io import load_masks

    bridge = boot_gpt2(tmp_path / "model")
    mask_set = random_mask_set(bridge, "a", 0)
    file = save_masks(mask_set, tmp_path / "masks-a.safetensors")
    saved = file.read_bytes()
    arguments = [
        "report",
        "--model",
        str(tmp_path / "model"),
        "--masks",
        str(file),
        "--prompt",
        "3 7 10",
        "--prompt-ids",
    ]
    for out in (file, tmp_path / "." / "masks-a.safetensors"):
        result = CliRunner().invoke(app, [*arguments, "--out", str(out)])
        assert result.exit_code != 0 and "would replace the mask file" in result.output, result.output
    assert file.read_bytes() == saved
    assert load_masks(file, bridge).binary().count == mask_set.binary().count
