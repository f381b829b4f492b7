"""The reproduction experiments run end to end on the shipped zoo (tiny settings; the real numbers are in
docs/results.md)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from experiments.csordas import (
    METHODS,
    MaskMethod,
    addmul_experiment,
    double_add_experiment,
    math_experiment,
    math_probe_experiment,
    modular_training_experiment,
    scan_experiment,
    scan_probe_experiment,
    write_results,
)
from modmask_lens import zoo
from modmask_lens.cli import app
from modmask_lens.masks.config import MaskConfig, TrainConfig

TINY = MaskMethod(MaskConfig(), TrainConfig(steps=2, batch_size=8))


def test_scan_experiment_reports_every_split_and_the_action_rows(tmp_path):
    result = scan_experiment(TINY, eval_limit=16)
    accuracy = result.tables["accuracy on each split's test set (Fig. 4a)"]
    assert {"jump", "length", "simple", "turn_left"} <= set(accuracy.columns)
    full = accuracy[accuracy.condition == "full"]
    assert len(full) == 1 and (full[["jump", "simple"]] > 0.9).all(axis=None)
    rows = result.tables["output rows removed by the jump mask (Fig. 4b)"]
    assert set(rows.token) == {"I_JUMP", "I_WALK", "I_RUN", "I_LOOK", "I_TURN_LEFT", "I_TURN_RIGHT"}
    control = result.tables["null control: the simple mask on a randomly initialised model"].set_index("model")
    assert control.loc["trained", "full accuracy"] > 0.9 and control.loc["random-init", "full accuracy"] < 0.05
    assert control["mask kept"].between(0, 1).all()
    # Two steps from logits at 3.0 leave every logit above 0: the mask as trained is the whole model.
    trained = control.loc["trained"]
    assert trained["as trained kept"] == 1.0 and trained["as trained accuracy"] == trained["full accuracy"]
    # The settings name what the masks were trained with, not MaskConfig()'s "decided by the model".
    assert (result.settings["masks"]["sampler"], result.settings["masks"]["init_logit"]) == ("hard-concrete", 3.0)
    write_results([result], tmp_path / "results.md", "test")
    assert "Fig. 4a" in (tmp_path / "results.md").read_text()


def test_addmul_experiment_compares_the_operations():
    csordas = METHODS["csordas"].with_steps(2)
    result = addmul_experiment(csordas, eval_limit=16)
    assert result.settings["masks"]["sampler"] == "gumbel-sigmoid" and result.settings["train"]["beta"] == 1e-4
    overlap = result.tables["IoU of the subtask masks per layer and role"]
    assert set(overlap.mask_a) == {"add"} and set(overlap.mask_b) == {"mul"}
    assert set(result.tables["mask sizes"]["mask"]) == {"control", "add", "mul"}


def test_scan_probe_experiment_reports_routing_and_errors():
    result = scan_probe_experiment(eval_limit=16, probe_steps=3)
    information = result.tables["routing information (bits)"].iloc[0]
    assert 0 <= information.mutual_information <= information.subtask_entropy <= 2.0 + 1e-9
    assert set(result.tables["subtask x expert (examples routed by argmax gate)"].subtask) == {
        "jump",
        "walk",
        "run",
        "look",
    }


def test_double_add_experiment_scores_each_pair_on_its_own_slot():
    result = double_add_experiment(TINY, eval_limit=16)
    assert set(result.tables["mask sizes"]["mask"]) == {"control", "pair1", "pair2"}
    accuracy = result.tables["accuracy (full / mask / inverse mask)"]
    full = accuracy[accuracy.condition == "full"]
    assert len(full) == 1 and (full[["pair1", "pair2"]] > 0.9).all(axis=None)
    assert set(result.tables["IoU of the subtask masks per layer and role"].mask_a) == {"pair1"}


def test_math_experiment_has_a_sharing_matrix_and_the_difficulty_test():
    result = math_experiment(TINY, eval_limit=16)
    modules = result.settings["modules"]
    assert len(modules) >= 3 and set(result.tables["IoU between the modules' masks"].mask_a) <= set(modules)
    difficulty = result.tables["control vs easy-only mask"]
    assert {"interpolate", "extrapolate"} <= set(difficulty.columns)
    assert set(difficulty[difficulty.condition == "mask"]["mask"]) == {"control", "easy_only"}


def test_math_probe_experiment_routes_the_modules():
    result = math_probe_experiment(eval_limit=16, probe_steps=3, train_limit=64)
    table = result.tables["subtask x expert (examples routed by argmax gate)"]
    assert len(table) == len(zoo.load("math").task.build(0)["interpolate"].unique("module"))


def test_modular_training_experiment_compares_the_three_scan_variants():
    result = modular_training_experiment(TINY, eval_limit=16, base="scan", train_limit=64)
    table = result.tables["plain vs BIMT vs clusterability loss"]
    assert list(table.model) == ["scan", "scan-bimt", "scan-clusterability"]
    assert ((table["mask IoU"] >= 0) & (table["mask IoU"] <= 1)).all()
    assert (table["test accuracy"] > 0.9).all()


def test_command_runs_experiments_in_two_processes_and_records_the_total_time(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "reproduce",
            "addmul",
            "double_add",
            "--steps",
            "2",
            "--eval-limit",
            "16",
            "--jobs",
            "2",
            "--out",
            str(tmp_path / "r.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r.md").read_text()
    assert text.index("## addmul") < text.index("## double addition")
    assert (
        f"modmask-lens reproduce addmul double_add --method faithful --steps 2 --eval-limit 16 --jobs 2 "
        f"--out {tmp_path / 'r.md'}"
        in text
        and "Total wall time:" in text
    )


def test_scan_primitive_subtasks_come_from_the_split_the_model_was_trained_with():
    from types import SimpleNamespace

    from experiments.csordas import _scan_primitive_subtasks
    from modmask_lens.core.data import SubtaskData
    from modmask_lens.tasks import scan
    from modmask_lens.tasks.catalog import task_spec

    task = task_spec("scan")
    model = SimpleNamespace(task=task, card=SimpleNamespace(seed=1), tokenizer=task.make_tokenizer())
    jump = _scan_primitive_subtasks(model, "test", None)[0]
    rows = scan.scan_task("simple", seed=1)["test"].filter(
        lambda names: list(names) == ["jump"], input_columns="primitives"
    )
    expected = SubtaskData.from_pairs("jump", rows, model.tokenizer, fields=("question", "answer"))
    assert jump.name == "jump" and torch.equal(jump.input_ids, expected.input_ids)


def test_settings_name_the_loss_unit_the_masks_were_trained_under():
    from dataclasses import replace
    from types import SimpleNamespace

    from experiments.csordas import DEFAULT_METHOD, _settings

    assert DEFAULT_METHOD.train_config.loss_increase_per == "auto"
    weight, head = MaskConfig(granularity="weight"), MaskConfig(granularity="head")
    assert _settings(DEFAULT_METHOD, {"jump": SimpleNamespace(config=weight)})["train"]["loss_increase_per"] == "token"
    assert _settings(DEFAULT_METHOD, {"jump": SimpleNamespace(config=head)})["train"]["loss_increase_per"] == "example"
    per_example = MaskMethod(weight, replace(DEFAULT_METHOD.train_config, loss_increase_per="example"))
    assert _settings(per_example, {"jump": SimpleNamespace(config=weight)})["train"]["loss_increase_per"] == "example"
