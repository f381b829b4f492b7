"""The modmask-lens command line: data statistics and export, zoo listing, help with examples."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.core.pairs import load_pairs

runner = CliRunner()


def test_data_stats_print_the_published_split_sizes():
    result = runner.invoke(app, ["data", "scan", "--split", "addprim_jump", "--stats"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["train: 14670", "test: 7706"]


def test_data_export_writes_jsonl_that_loads_as_a_custom_subtask(tmp_path):
    path = tmp_path / "modadd.jsonl"
    result = runner.invoke(app, ["data", "modadd", "--export", str(path)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {record["part"] for record in records} == {"train", "test"} and len(records) == 59 * 59
    prompts, completions = load_pairs(path)
    assert len(prompts) == 59 * 59 and all(completions)


def test_split_is_refused_for_tasks_other_than_scan():
    result = runner.invoke(app, ["data", "modadd", "--split", "length"])
    assert result.exit_code != 0 and "only applies to scan" in result.output


def test_every_command_has_help_with_an_example():
    for command in (
        ["demo"],
        ["data"],
        ["report"],
        ["analyze"],
        ["masks", "train"],
        ["zoo", "list"],
        ["zoo", "train"],
        ["reproduce"],
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example: modmask-lens" in result.output, command


def test_masks_train_resumes_and_analyze_writes_tables(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from modmask_lens.testing.tiny_models import boot_tiny

    folder = tmp_path / "model"
    boot_tiny(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16)), folder)
    for name, offset in (("evens", 0), ("odds", 1)):
        rows = [
            {"prompt": f"w{a} w{b}", "completion": f"w{(a + b) % 20 + 5}"}
            for a in range(5, 15)
            for b in range(5, 9)
            if (a + b) % 2 == offset
        ]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    arguments = [
        "masks",
        "train",
        "--model",
        str(folder),
        "--task",
        str(tmp_path / "evens.jsonl"),
        "--task",
        str(tmp_path / "odds.jsonl"),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "m"),
    ]
    first = runner.invoke(app, arguments)
    assert first.exit_code == 0, first.output
    saved = (tmp_path / "m" / "masks-evens.safetensors").read_bytes()
    again = runner.invoke(app, arguments)  # resumes from the finished checkpoint: same masks
    assert again.exit_code == 0 and (tmp_path / "m" / "masks-evens.safetensors").read_bytes() == saved
    result = runner.invoke(
        app,
        [
            "analyze",
            "--model",
            str(folder),
            "--masks",
            str(tmp_path / "m" / "masks-evens.safetensors"),
            "--masks",
            str(tmp_path / "m" / "masks-odds.safetensors"),
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert result.exit_code == 0, result.output
    overlap = pd.read_csv(tmp_path / "a" / "overlap.csv")
    assert set(overlap.mask_a) == {"evens"} and overlap.iou.between(0, 1).all()
    assert (tmp_path / "a" / "kept_fraction.csv").exists() and (tmp_path / "a" / "head_importance.csv").exists()
