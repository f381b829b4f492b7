"""The modmask-lens command line: data statistics and export, zoo listing, help with examples."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.tasks.custom import load_pairs

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
    for command in (["demo"], ["data"], ["report"], ["zoo", "list"], ["zoo", "train"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example: modmask-lens" in result.output, command
