"""The new-user walk-through of issue #20: every input that was once accepted with a wrong result, crashed with a
traceback or misled, pinned with the clear message it gets now (docs/reliability.md lists them all).

Most cases run in this process on a tiny GPT-2 folder (the command line through Typer's runner, which runs the same
code as the installed command); the ones about a process's start (``--help`` imports, progress bars) run in a fresh
one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from conftest import VOCAB, boot_gpt2, boot_native, tiny_nemotron_h
from typer.testing import CliRunner

from modmask_lens import MaskConfig, MaskSet, MaskTrainer, SubtaskData, TrainConfig, masked, masked_call, save_masks
from modmask_lens.adapters import UnsupportedArchitecture, adapter_for, registry
from modmask_lens.adapters.nemotron_h import NemotronHAdapter
from modmask_lens.cli import app
from modmask_lens.core.checkpoint import Checkpointer, CheckpointInUse
from modmask_lens.core.interrupt import TrainingInterrupted
from modmask_lens.core.pairs import load_pairs
from modmask_lens.loading import check_subtask_spec, load_bridge, load_subtask
from modmask_lens.masks.io import load_labelled_masks, load_masks
from modmask_lens.masks.run_fingerprint import BERNOULLI_ONLY_SETTINGS, RunMismatch
from modmask_lens.masks.training import CHECKPOINT_FILE, CHECKPOINT_FORMAT
from modmask_lens.tasks.catalog import task_spec
from modmask_lens.testing.tiny_models import placeholder_word_tokenizer
from modmask_lens.viz.report import parse_prompt

N_CTX = 16  # boot_gpt2's n_positions
TRAIN = TrainConfig(steps=2, batch_size=4, n_samples=2, checkpoint_every=1)
runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved with a word-level tokenizer (``w5`` ... ``w39``)."""
    path = tmp_path_factory.mktemp("gpt2")
    boot_gpt2(path)
    placeholder_word_tokenizer(VOCAB).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return load_bridge(str(folder))


@pytest.fixture
def ctrl_c_reaches_python():
    """Ctrl-C as in an interactive session: Python's default SIGINT handler for the test, whatever the test process
    inherited (a test run started in the background of a non-interactive shell inherits SIGINT ignored, and Python
    then leaves it ignored); the inherited handler is put back after."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def pairs_file(folder: Path, lines: list[str], name: str = "pairs.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_LINES = ['{"prompt": "w5 w6", "completion": "w7"}', '{"prompt": "w8 w9", "completion": "w10"}']


def copy_task(name: str = "copy", seed: int = 0) -> SubtaskData:
    input_ids = torch.randint(5, VOCAB, (8, 6), generator=torch.Generator().manual_seed(seed))
    return SubtaskData(name, input_ids, torch.where(torch.arange(6) >= 4, input_ids, -100))


def masks_without_its_adapter(folder: Path) -> MaskSet:
    """Masks for a tiny NemotronH as a family without a hand-written adapter would get them: TransformerLens maps
    only its Mamba-2 mixers (its MoE, attention and MLP layers pass through unread), so the derived adapter alone
    reads few of its weights. Since every family TransformerLens boots has an adapter, the built-in NemotronH one is
    set aside for this case (restored after)."""
    bridge = tiny_nemotron_h(folder, vocab_size=VOCAB, d_mlp=128, d_expert=32)
    without = tuple(adapter for adapter in registry._BUILT_IN if adapter is not NemotronHAdapter)
    with mock.patch.object(registry, "_BUILT_IN", without):
        return MaskSet.for_bridge(bridge)


def dict_of_masks(bridge) -> None:
    with masked(bridge, {"jump": MaskSet.for_bridge(bridge, name="jump")}):
        pass


def second_run_while_the_first_writes(bridge, folder: Path) -> None:
    first = Checkpointer(folder / CHECKPOINT_FILE, CHECKPOINT_FORMAT)
    with first.locked():
        MaskTrainer(bridge, [copy_task()], train_config=TRAIN, checkpoint_dir=folder, progress=False).train()


def resume_after(change: str):
    """Train 2 steps into a folder, then resume it with one thing changed."""

    def resume(bridge, folder: Path) -> None:
        MaskTrainer(bridge, [copy_task()], train_config=TRAIN, checkpoint_dir=folder, progress=False).train()
        mask_config, train_config, data = MaskConfig(), TrainConfig(steps=3, batch_size=4, n_samples=2), copy_task()
        if change == "model":
            bridge = boot_native(seed=1)  # same shapes, other weights
        elif change == "granularity":
            mask_config = MaskConfig(granularity="head")
        elif change == "data":
            data = copy_task(seed=1)
        elif change == "settings":
            train_config = TrainConfig(steps=3, batch_size=4, n_samples=2, lr=1e-2)
        elif change == "subtasks":
            data = copy_task("walk")
        MaskTrainer(bridge, [data], mask_config, train_config, checkpoint_dir=folder)

    return resume


# case -> (action(bridge, tokenizer, tmp_path), error, what the message must say). ``bridge`` is the tiny GPT-2
# loaded from its folder; resumes use a tiny native bridge.
CASES = {
    "out_of_vocabulary_word_in_jsonl": (
        lambda b, t, p: SubtaskData.from_pairs(
            "x", pairs_file(p, [*GOOD_LINES, '{"prompt": "w5 jmup", "completion": "w6"}']), t
        ),
        ValueError,
        r"1 text\(s\) hold words the tokenizer does not know: \['jmup'\] \(each would read as '<unk>'\)",
    ),
    "out_of_vocabulary_word_in_report_prompt": (
        lambda b, t, p: parse_prompt(b, "w5 jmup w6"),
        ValueError,
        r"does not know: \['jmup'\]",
    ),
    "completion_of_only_spaces": (
        lambda b, t, p: load_pairs(pairs_file(p, [*GOOD_LINES, '{"prompt": "w5", "completion": "   "}'])),
        ValueError,
        "line 3: 'completion' is only spaces",
    ),
    "duplicate_json_key": (
        lambda b, t, p: load_pairs(
            pairs_file(p, [*GOOD_LINES, '{"prompt": "w5", "completion": "w6", "completion": "w7"}'])
        ),
        ValueError,
        r"line 3: the key\(s\) \['completion'\] appear twice in one object",
    ),
    "report_prompt_empty": (lambda b, t, p: parse_prompt(b, "  "), ValueError, "the prompt is empty"),
    "report_prompt_negative_id": (
        lambda b, t, p: parse_prompt(b, "-1 5", token_ids=True),
        ValueError,
        rf"token ids \[-1\] are outside the model's vocabulary \[0, {VOCAB}\)",
    ),
    "report_prompt_id_past_the_vocabulary": (
        lambda b, t, p: parse_prompt(b, f"5 {VOCAB}", token_ids=True),
        ValueError,
        rf"token ids \[{VOCAB}\] are outside",
    ),
    "report_prompt_longer_than_the_context": (
        lambda b, t, p: parse_prompt(b, " ".join(["5"] * (N_CTX + 1)), token_ids=True),
        ValueError,
        f"the prompt has examples of 17 positions; the model's context is n_ctx={N_CTX}",
    ),
    "task_file_named_json": (
        lambda b, t, p: check_subtask_spec(str(pairs_file(p, GOOD_LINES, "pairs.json"))),
        ValueError,
        "looks like a file but not a .jsonl one; .* rename it",
    ),
    "task_file_missing": (
        lambda b, t, p: check_subtask_spec(str(p / "absent.jsonl")),
        FileNotFoundError,
        "no task file .*absent.jsonl",
    ),
    "jsonl_part_it_lacks": (
        lambda b, t, p: load_subtask(str(pairs_file(p, GOOD_LINES)) + ":test", t),
        ValueError,
        "has no rows of part 'test'",
    ),
    "missing_model_folder": (
        lambda b, t, p: load_bridge(str(p / "absent")),
        ValueError,
        "is neither a zoo model nor a model folder \\(no such folder\\); zoo models: .*scan",
    ),
    "hub_id_offline": (
        lambda b, t, p: load_bridge("someone/some-model"),
        ValueError,
        "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set",
    ),
    "dict_of_masks_to_masked": (
        lambda b, t, p: dict_of_masks(b),
        ValueError,
        r"masked\(\) applies one mask; got a dict of masks \['jump'\]: enter one, e\.g\. masked\(bridge, masks\[",
    ),
    "nemotron_h_without_its_adapter_maps_too_little": (
        lambda b, t, p: masks_without_its_adapter(p),
        UnsupportedArchitecture,
        (
            r"NemotronHForCausalLM: no adapter that maps its weights: the \w+ adapter finds only "
            r"\['W_U', 'W_ssm_conv', 'W_ssm_in', 'W_ssm_out', 'ln1\.w', 'ln_final\.w', 'ssm_A_log', 'ssm_norm\.w'\] "
            r"\([\d,]+ of the model's .* parameters, \d+%\)"
        ),
    ),
    "two_runs_write_one_checkpoint_folder": (
        lambda b, t, p: second_run_while_the_first_writes(boot_native(), p),
        CheckpointInUse,
        f"another run \\(process {os.getpid()}\\) is writing checkpoints to .*; wait for it",
    ),
    "resume_on_another_model": (
        lambda b, t, p: resume_after("model")(boot_native(), p),
        RunMismatch,
        (
            r"subtask 'copy' was trained on another model \(weights_sha256 differ\); set it back to resume, or "
            r"start over with --restart"
        ),
    ),
    "resume_with_another_granularity": (
        lambda b, t, p: resume_after("granularity")(boot_native(), p),
        RunMismatch,
        (
            "trained with mask config granularity='weight', this run has granularity='head' "
            "\\(mask_config; also differ: init_logit, sampler\\); .*--restart"
        ),
    ),
    "resume_on_other_data_under_the_same_name": (
        lambda b, t, p: resume_after("data")(boot_native(), p),
        RunMismatch,
        "'copy' was trained on other data \\(token ids or labels differ\\); .*--restart",
    ),
    "resume_with_other_subtasks": (
        lambda b, t, p: resume_after("subtasks")(boot_native(), p),
        ValueError,
        r"holds subtasks \['copy'\]; this run trains \['walk'\]: start over with --restart",
    ),
    "steps_zero": (
        lambda b, t, p: TrainConfig(steps=0),
        ValueError,
        "steps 0 must be >= 1",
    ),
    "resume_with_another_setting": (
        lambda b, t, p: resume_after("settings")(boot_native(), p),
        RunMismatch,
        "trained with lr=0.05, this run has lr=0.01 \\(train_config\\)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_of_the_walkthrough_gets_one_clear_error(case, model, tmp_path):
    action, error, message = CASES[case]
    with pytest.raises(error, match=message) as raised:
        action(*model, tmp_path)
    assert "\n" not in str(raised.value)


def test_restart_starts_over_and_a_resume_says_its_step(tmp_path, capsys):
    bridge = boot_native()
    MaskTrainer(bridge, [copy_task()], train_config=TRAIN, checkpoint_dir=tmp_path, progress=False).train()
    head = MaskConfig(granularity="head")
    restarted = MaskTrainer(bridge, [copy_task()], head, TRAIN, checkpoint_dir=tmp_path, progress=False, restart=True)
    assert restarted.step == 0
    fresh = MaskTrainer(bridge, [copy_task()], head, TRAIN, progress=False).train()["copy"]
    result = restarted.train()["copy"]
    assert all(torch.equal(result.logits[name], logit) for name, logit in fresh.logits.items())
    longer = TrainConfig(steps=3, batch_size=4, n_samples=2, checkpoint_every=1)
    resumed = MaskTrainer(bridge, [copy_task()], head, longer, checkpoint_dir=tmp_path, progress=True)
    assert resumed.step == 2
    assert f"resumed from step 2 of 3 ({tmp_path / CHECKPOINT_FILE})" in capsys.readouterr().err


def test_ctrl_c_finishes_the_step_saves_and_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, ctrl_c_reaches_python
):
    bridge, config = boot_native(), TrainConfig(steps=5, batch_size=4, n_samples=2, checkpoint_every=10)
    uninterrupted = MaskTrainer(bridge, [copy_task()], train_config=config, progress=False).train()["copy"]
    original_step = MaskTrainer._train_step

    def ctrl_c_inside_step_3(self, run):
        if self.step == 2:  # the third step
            os.kill(os.getpid(), signal.SIGINT)
        original_step(self, run)

    monkeypatch.setattr(MaskTrainer, "_train_step", ctrl_c_inside_step_3)
    trainer = MaskTrainer(bridge, [copy_task()], train_config=config, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.train()
    assert str(raised.value) == (
        f"interrupted after step 3 of 5; checkpoint saved to {tmp_path / CHECKPOINT_FILE}: rerun the same command "
        "(the same checkpoint_dir) to resume"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(MaskTrainer, "_train_step", original_step)
    resumed = MaskTrainer(bridge, [copy_task()], train_config=config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.step == 3  # not the last periodic checkpoint (none: every 10 steps), the interrupted step
    result = resumed.train()["copy"]
    assert all(torch.equal(result.logits[name], logit) for name, logit in uninterrupted.logits.items())


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, ctrl_c_reaches_python):
    original_step = MaskTrainer._train_step

    def two_ctrl_c(self, run):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        original_step(self, run)

    monkeypatch.setattr(MaskTrainer, "_train_step", two_ctrl_c)
    trainer = MaskTrainer(boot_native(), [copy_task()], train_config=TRAIN, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt) as raised:
        trainer.train()
    assert not isinstance(raised.value, TrainingInterrupted)
    assert trainer.step == 1 and Checkpointer(tmp_path / CHECKPOINT_FILE, CHECKPOINT_FORMAT).load({})[1]["step"] == 1


def test_a_ctrl_c_during_the_readout_stops_it_after_the_last_step_is_saved(
    tmp_path, monkeypatch, ctrl_c_reaches_python
):
    original_readout = MaskTrainer._faithful_readout

    def ctrl_c_in_readout(self, run):
        os.kill(os.getpid(), signal.SIGINT)
        original_readout(self, run)

    monkeypatch.setattr(MaskTrainer, "_faithful_readout", ctrl_c_in_readout)
    trainer = MaskTrainer(boot_native(), [copy_task()], train_config=TRAIN, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert Checkpointer(tmp_path / CHECKPOINT_FILE, CHECKPOINT_FORMAT).load({})[1]["step"] == TRAIN.steps


def test_mask_files_and_checkpoints_carry_the_run_fingerprint(tmp_path):
    bridge, data = boot_native(), copy_task()
    trainer = MaskTrainer(bridge, [data], train_config=TRAIN, checkpoint_dir=tmp_path, progress=False)
    mask = trainer.train()["copy"]
    loaded = load_masks(save_masks(mask, tmp_path / "copy.safetensors"), bridge)
    assert set(loaded.fingerprint) == {"model", "data", "mask_config", "train_config", "objective"}
    assert loaded.fingerprint["data"] == data.fingerprint()
    assert loaded.fingerprint["model"]["weights_sha256"] == mask.origin.model["weights_sha256"]
    pathwise = {key: value for key, value in TRAIN.deciding_fields().items() if key not in BERNOULLI_ONLY_SETTINGS}
    pathwise["loss_increase_per"] = "token"  # the unit in effect: "auto" is per token for a weight mask
    assert loaded.fingerprint["train_config"] == pathwise  # a weight mask: the head share does not decide it
    _, header = Checkpointer(tmp_path / CHECKPOINT_FILE, CHECKPOINT_FORMAT).load({})
    assert json.dumps(header["tasks"][0]["fingerprint"], sort_keys=True) == json.dumps(
        loaded.fingerprint, sort_keys=True
    )


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mask_files_are_written_with_the_process_umask(umask, mode, tmp_path):
    bridge = boot_native()
    previous = os.umask(umask)
    try:
        path = save_masks(MaskSet.for_bridge(bridge, MaskConfig(granularity="matrix")), tmp_path / "m.safetensors")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_masked_takes_a_dict_of_parameter_masks_as_masked_call_does():
    bridge = boot_native()
    tokens = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    path = next(spec.path for spec in adapter_for(bridge).tensor_specs(bridge) if spec.role == "W_out")
    masks = {path: torch.zeros_like(bridge.get_parameter(path))}
    with masked(bridge, masks):
        inside = bridge(tokens)
    assert torch.equal(inside, masked_call(bridge, masks, type(bridge).forward.__get__(bridge), tokens))
    assert not torch.equal(inside, bridge(tokens))


def test_names_mean_the_same_in_every_command(model, tmp_path):
    from modmask_lens import zoo

    assert task_spec("double-add") is task_spec("double_add")
    assert zoo.model_dir("double_add") == zoo.model_dir("double-add")
    upper = pairs_file(tmp_path, GOOD_LINES, "pairs.JSONL")
    assert load_subtask(str(upper), model[1]).name == "pairs"


def test_two_masks_of_one_subtask_stay_apart_in_analyses_and_reports(tmp_path):
    bridge = boot_native()
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="matrix"), name="copy")
        masks.logits = {name: torch.randn_like(logit) for name, logit in masks.logits.items()}
        files.append(save_masks(masks, tmp_path / f"seed{seed}" / "masks-copy.safetensors"))
    by_file = load_labelled_masks(files, bridge)
    assert list(by_file) == [f"copy ({files[0]})", f"copy ({files[1]})"]
    assert [mask.name for mask in by_file.values()] == list(by_file)
    kept = [mask.binary().kept_fraction(by="all")["kept"].tolist() for mask in by_file.values()]
    assert kept[0] != kept[1]
    assert list(load_labelled_masks(files, bridge, ["seed 0", "seed 1"])) == ["seed 0", "seed 1"]
    with pytest.raises(ValueError, match="one distinct --label per mask file"):
        load_labelled_masks(files, bridge, ["same", "same"])


# The command line: cases refused before any model loads. -> (arguments, exit code, what the output must say)
def early_cli_cases(folder: Path, tmp_path: Path) -> dict[str, tuple[list[str], int, str]]:
    good = pairs_file(tmp_path, GOOD_LINES)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    train = ["masks", "train", "--model", str(folder), "--task", str(good), "--out", str(tmp_path / "out")]
    mask_folder = tmp_path / "masks"
    mask_folder.mkdir()
    return {
        "threads_zero": (
            ["--threads", "0", "zoo", "list"],
            2,
            "Invalid value for '--threads': Input should be greater than or equal to 1",
        ),
        "checkpoint_every_zero": (train + ["--checkpoint-every", "0"], 1, "error: checkpoint_every 0 must be >= 1"),
        "beta_nan": (
            train + ["--method", "csordas", "--beta", "nan"],
            1,
            "error: beta nan must be a finite number >= 0",
        ),
        "missing_model_folder": (
            ["masks", "train", "--model", str(tmp_path / "absent"), "--task", str(good)],
            1,
            "is neither a zoo model nor a model folder",
        ),
        "task_file_named_json": (
            ["masks", "train", "--model", str(folder), "--task", str(pairs_file(tmp_path, GOOD_LINES, "p.json"))],
            1,
            "not a .jsonl one",
        ),
        "unknown_task_with_the_fix": (
            ["masks", "train", "--model", str(folder), "--task", "scna"],
            1,
            "unknown task 'scna'; known tasks: scan, addmul, double_add",
        ),
        "out_is_a_file": (
            ["masks", "train", "--model", str(folder), "--task", str(good), "--out", str(a_file)],
            1,
            "cannot write to",
        ),
        "folder_as_masks": (
            ["analyze", "--model", str(folder), "--masks", str(mask_folder)],
            1,
            "is a folder; pass the files in it",
        ),
        "report_prompt_empty": (
            ["report", "--model", str(folder), "--masks", str(good), "--prompt", ""],
            1,
            "--prompt is empty",
        ),
        "report_missing_mask_file": (
            ["report", "--model", "scan", "--masks", str(tmp_path / "absent.safetensors"), "--prompt", "jump"],
            1,
            "no such file",
        ),
        "report_out_unwritable": (
            ["report", "--model", "scan", "--masks", str(good), "--prompt", "jump", "--out", str(a_file / "r.html")],
            1,
            "cannot write to",
        ),
        "report_out_a_folder": (
            ["report", "--model", "scan", "--masks", str(good), "--prompt", "jump", "--out", str(mask_folder)],
            1,
            "is a folder; name the HTML file to write",
        ),
        "report_task_file_absent": (
            ["report", "--model", "scan", "--masks", str(good), "--prompt", "jump", "--task", "absent.jsonl"],
            1,
            "absent.jsonl",
        ),
    }


def test_the_cli_refuses_bad_input_before_any_model_loads(folder, tmp_path, monkeypatch):
    import modmask_lens.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(modmask_lens.loading, "load_bridge", no_loading)
    for case, (arguments, code, message) in early_cli_cases(folder, tmp_path).items():
        result = runner.invoke(app, arguments)
        assert result.exit_code == code, (case, result.output)
        assert message in result.output, (case, result.output)
        assert "Traceback" not in result.output and "a model was loaded" not in result.output, case


def test_the_cli_trains_resumes_restarts_and_stops_on_ctrl_c(folder, tmp_path, monkeypatch, ctrl_c_reaches_python):
    good = pairs_file(tmp_path, [*GOOD_LINES, '{"prompt": "w11", "completion": "w12"}'])
    train = ["masks", "train", "--model", str(folder), "--task", str(good), "--out", str(tmp_path / "out")]
    small = ["--batch-size", "4", "--n-samples", "2", "--checkpoint-every", "1"]
    assert runner.invoke(app, [*train, *small, "--steps", "2"]).exit_code == 0
    other = runner.invoke(app, [*train, *small, "--steps", "3", "--granularity", "head"])
    assert other.exit_code == 1 and "granularity='weight', this run has granularity='head'" in other.output
    assert "start over with --restart" in other.output
    extended = runner.invoke(app, [*train, *small, "--steps", "3"])
    assert extended.exit_code == 0 and "resumed from step 2 of 3" in extended.output
    restarted = runner.invoke(app, [*train, *small, "--steps", "2", "--granularity", "head", "--restart"])
    assert restarted.exit_code == 0 and "resumed" not in restarted.output, restarted.output
    huge = runner.invoke(app, [*train, "--batch-size", "2000000000", "--n-samples", "1", "--restart"])
    assert huge.exit_code == 1 and "needs at least" in huge.output and "lower --batch-size" in huge.output
    original_step = MaskTrainer._train_step

    def ctrl_c(self, run):
        if self.step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        original_step(self, run)

    monkeypatch.setattr(MaskTrainer, "_train_step", ctrl_c)
    stopped = runner.invoke(app, [*train, *small, "--steps", "4", "--checkpoint-every", "10", "--restart"])
    assert stopped.exit_code == 130
    assert "error: interrupted after step 1 of 4; checkpoint saved to" in stopped.output
    assert "rerun the same command" in stopped.output


def test_analyze_keeps_two_masks_of_one_subtask_apart(folder, model, tmp_path):
    bridge = model[0]
    files = []
    for seed in (0, 1):  # two seeds of one subtask
        masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="matrix"), name="copy")
        generator = torch.Generator().manual_seed(seed)
        masks.logits = {name: torch.randn(logit.shape, generator=generator) for name, logit in masks.logits.items()}
        files.append(save_masks(masks, tmp_path / f"copy-seed{seed}.safetensors"))
    arguments = ["analyze", "--model", str(folder), "--by", "all", "--out", str(tmp_path / "tables")]
    arguments += [option for file in files for option in ("--masks", str(file))]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    kept = pd.read_csv(tmp_path / "tables" / "kept_fraction.csv")
    assert sorted(kept["mask"]) == ["copy (copy-seed0)", "copy (copy-seed1)"]
    assert kept["kept"].iloc[0] != kept["kept"].iloc[1]
    assert len(pd.read_csv(tmp_path / "tables" / "overlap.csv")) == 1
    labelled = runner.invoke(app, [*arguments, "--label", "seed a", "--label", "seed b"])
    assert labelled.exit_code == 0, labelled.output
    assert sorted(pd.read_csv(tmp_path / "tables" / "kept_fraction.csv")["mask"]) == ["seed a", "seed b"]


def test_report_takes_a_zoo_name_as_every_command_does(tmp_path):
    from modmask_lens import zoo

    scan = zoo.load("scan")
    path = save_masks(
        MaskSet.for_bridge(scan.bridge, MaskConfig(granularity="matrix"), name="all"), tmp_path / "m.safetensors"
    )
    result = runner.invoke(
        app,
        [
            "report",
            "--model",
            "scan",
            "--masks",
            str(path),
            "--prompt",
            "jump twice",
            "--out",
            str(tmp_path / "r.html"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def run_fresh(code: str) -> subprocess.CompletedProcess:
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300, check=False
    )


def test_settings_given_as_whole_numbers_or_numpy_floats_are_stored_as_floats():
    """Outside the tests' run-time type checks (which refuse them first), ``lr=1`` was stored as 1, so a checkpoint
    written with it refused a resume with ``lr=1.0`` ("trained with lr=1, this run has lr=1.0"), and a numpy float32
    setting failed at the first checkpoint's JSON."""
    process = run_fresh(
        "import json, numpy as np\n"
        "from modmask_lens import MaskConfig, TrainConfig\n"
        "from modmask_lens.masks.run_fingerprint import check_same_run\n"
        "loose, exact = TrainConfig(lr=1, temperature=np.float32(0.5)), TrainConfig(lr=1.0, temperature=0.5)\n"
        "json.dumps(loose.to_dict())\n"
        "check_same_run({'train_config': loose.to_dict()}, {'train_config': exact.to_dict()}, 'ckpt', 'copy')\n"
        "assert type(loose.lr) is float and type(MaskConfig(init_logit=np.float32(2.0)).init_logit) is float\n"
    )
    assert process.returncode == 0, process.stderr


def test_help_imports_neither_torch_nor_transformers():
    process = run_fresh(
        "import sys; from typer.testing import CliRunner; from modmask_lens.cli import app\n"
        "for command in ([], ['masks', 'train'], ['groundtruth', 'run'], ['zoo', 'train']):\n"
        "    assert CliRunner().invoke(app, [*command, '--help']).exit_code == 0\n"
        "heavy = ('torch', 'transformers', 'transformer_lens', 'pandas', 'datasets')\n"
        "print(sorted(module for module in heavy if module in sys.modules))"
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "[]"


def test_commands_show_no_third_party_progress_bars_but_their_own(folder, tmp_path):
    good = pairs_file(tmp_path, [*GOOD_LINES, '{"prompt": "w11", "completion": "w12"}'])
    arguments = ["masks", "train", "--model", str(folder), "--task", str(good), "--out", str(tmp_path / "out")]
    arguments += ["--steps", "2", "--batch-size", "2", "--n-samples", "1"]
    code = "import sys; from modmask_lens.cli import main; import datasets\n"
    code += f"sys.argv = ['modmask-lens', *{arguments!r}]\n"
    code += "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
    code += "print(datasets.is_progress_bar_enabled())"  # the Filter / Map bars of task views
    process = run_fresh(code)
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines()[-1] == "False"
    assert "Loading weights" not in process.stderr, process.stderr
    assert "masks: 100%" in process.stderr  # ours


def test_zoo_train_writes_into_the_package_only_when_asked():
    from experiments.commands import zoo_output_folder

    assert zoo_output_folder("scan", None, in_place=False) == Path("zoo-models") / "scan"
    assert zoo_output_folder("scan", Path("mine"), in_place=False) == Path("mine")
    assert zoo_output_folder("scan", None, in_place=True) is None  # train_named's default: the package's zoo
    with pytest.raises(Exception, match="give --out or --in-place, not both"):
        zoo_output_folder("scan", Path("mine"), in_place=True)


def test_a_command_that_fails_after_checking_its_out_folder_leaves_no_empty_folder(tmp_path):
    """A walk-through found `masks train --task scan/jumpp` leaving OUT/checkpoints/ behind; a run that wrote
    something keeps its folder."""
    out, kept = tmp_path / "new" / "out", tmp_path / "kept"
    process = run_fresh(
        "from typer.testing import CliRunner; from modmask_lens.cli import app\n"
        f"result = CliRunner().invoke(app, ['masks', 'train', '--model', 'scan', '--task', 'scan/jumpp', '--out', "
        f"{str(out)!r}])\n"
        "assert result.exit_code != 0 and 'jumpp' in result.output, result.output\n"
        "from modmask_lens.cli_common import check_writable\n"
        "from pathlib import Path\n"
        f"check_writable(Path({str(kept)!r}), '--out'); (Path({str(kept)!r}) / 'x.csv').write_text('x')\n"
    )
    assert process.returncode == 0, process.stderr
    assert not (tmp_path / "new").exists()
    assert (kept / "x.csv").exists()
