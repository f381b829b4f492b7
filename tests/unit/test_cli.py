"""The modmask-lens command line: data statistics and export, zoo listing, help with examples."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.core.pairs import load_pairs

runner = CliRunner()


def test_data_stats_print_the_published_split_sizes():
    result = runner.invoke(app, ["data", "scan", "--split", "addprim_jump", "--stats"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["train: 14670", "test: 7706"]


def test_data_export_keeps_train_and_test_apart_and_loads_as_a_custom_subtask(tmp_path):
    result = runner.invoke(app, ["data", "modadd", "--export", str(tmp_path / "modadd.jsonl")])
    assert result.exit_code == 0, result.output
    parts = {
        part: [json.loads(line) for line in (tmp_path / f"modadd.{part}.jsonl").read_text().splitlines()]
        for part in ("train", "test")
    }
    assert {record["part"] for record in parts["train"]} == {"train"}
    assert {record["part"] for record in parts["test"]} == {"test"}
    assert len(parts["train"]) + len(parts["test"]) == 59 * 59
    prompts = {part: load_pairs(tmp_path / f"modadd.{part}.jsonl")[0] for part in parts}
    assert prompts["train"] == [record["prompt"] for record in parts["train"]]
    assert not set(prompts["train"]) & set(prompts["test"])  # modadd's prompts are all distinct


def test_a_jsonl_of_several_parts_trains_on_its_train_rows_unless_a_part_is_named(tmp_path):
    rows = [("1+1", "2", "train"), ("2+2", "4", "test"), ("3+3", "6", "train"), ("4+4", "8", "test")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c, "part": part}) + "\n" for p, c, part in rows))
    assert load_pairs(path) == (["1+1", "3+3"], ["2", "6"])
    assert load_pairs(path, part="test") == (["2+2", "4+4"], ["4", "8"])
    with pytest.raises(ValueError, match="has no rows of part 'valid'"):
        load_pairs(path, part="valid")


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
