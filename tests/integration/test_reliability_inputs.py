"""Bad input gets a clear error, raised before any training, that names what is wrong and the fix; the command line
turns the same errors into one ``error: ...`` line and exit code 1 (a traceback only with ``--debug``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import VOCAB, boot_gpt2, boot_native
from transformers import GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

import modmask_lens.masks.objectives
import modmask_lens.masks.training
from modmask_lens import MaskConfig, MaskSet, MaskTrainer, NonFiniteLoss, SubtaskData, TrainConfig, masked
from modmask_lens.adapters import UnsupportedArchitecture
from modmask_lens.analysis import mask_accuracy
from modmask_lens.cli import app
from modmask_lens.core.pairs import load_pairs
from modmask_lens.loading import load_bridge, load_subtask
from modmask_lens.masks.evaluation import objective_metric
from modmask_lens.masks.objectives import AnswerCrossEntropy
from modmask_lens.masks.training import CHECKPOINT_FILE
from modmask_lens.probes import ProbeConfig, ProbeData, ProbeTrainer, read_activations
from modmask_lens.tasks.arithmetic import add_mul_task, modular_addition_task
from modmask_lens.testing.tiny_models import placeholder_word_tokenizer

N_CTX = 16  # boot_native's context


def subtask(name: str = "bad", examples: int = 4, positions: int = 6, token: int | None = None) -> SubtaskData:
    """Random tokens (or all ``token``) with the last two positions scored."""
    input_ids = torch.randint(0, VOCAB, (examples, positions), generator=torch.Generator().manual_seed(0))
    if token is not None:
        input_ids = torch.full_like(input_ids, token)
    labels = torch.full_like(input_ids, -100)
    labels[:, -2:] = input_ids[:, -2:]
    return SubtaskData(name, input_ids, labels)


@pytest.fixture(scope="module")
def bridge():
    torch.manual_seed(0)
    return boot_native()


def jsonl(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    return path


def nested_masked(bridge) -> None:
    mask = MaskSet.for_bridge(bridge, MaskConfig(granularity="matrix")).binary()
    with masked(bridge, mask), masked(bridge, mask):
        pass


def training_inside_masked(bridge) -> None:
    with masked(bridge, MaskSet.for_bridge(bridge).binary()):
        MaskTrainer(bridge, [subtask()])


def masked_by_state_dict_key(bridge) -> None:
    key = next(iter(MaskSet.for_bridge(bridge).binary().kept))  # a state_dict key, e.g. blocks.0.ln1.weight
    with masked(bridge, {key: torch.zeros(1)}):
        bridge(subtask().input_ids)


def labels_outside_vocabulary() -> SubtaskData:
    data = subtask()
    return SubtaskData(data.name, data.input_ids, torch.where(data.labels == -100, -100, VOCAB + 3))


def resume_with_other_settings(bridge, tmp_path: Path) -> None:
    data = subtask()
    MaskTrainer(
        bridge,
        [data],
        train_config=TrainConfig(steps=1, batch_size=4, n_samples=2),
        checkpoint_dir=tmp_path,
        progress=False,
    ).train()
    MaskTrainer(bridge, [data], train_config=TrainConfig(steps=2, batch_size=4, n_samples=4), checkpoint_dir=tmp_path)


def on_meta_device(make):
    """Run ``make(bridge)`` with a bridge moved to the meta device (its data stay on the CPU)."""
    return lambda bridge, tmp_path: make(boot_native().to("meta"))


GOOD_PAIRS = b'{"prompt": "w5", "completion": "w6"}\n{"prompt": "w7", "completion": "w8"}\n'

# case -> (action(bridge, tmp_path), error type, what the message must say)
CASES = {
    "not_a_transformer_bridge": (
        lambda b, t: MaskTrainer(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2)), [subtask()]),
        UnsupportedArchitecture,
        "not a TransformerBridge.*installed: .*CONTRIBUTING",
    ),
    "no_tokenizer": (
        lambda b, t: SubtaskData.from_pairs("capitals", [("a", "b"), ("c", "d")], None),
        ValueError,
        "has no tokenizer; pass the tokenizer",
    ),
    "no_subtasks": (lambda b, t: MaskTrainer(b, []), ValueError, "no subtasks given"),
    "duplicate_subtask_names": (lambda b, t: MaskTrainer(b, [subtask("a"), subtask("a")]), ValueError, "unique"),
    "empty_subtask": (lambda b, t: subtask(examples=0), ValueError, "is empty; give it at least one example"),
    "one_example_subtask": (lambda b, t: MaskTrainer(b, [subtask(examples=1)]), ValueError, "one example.*at least 2"),
    "one_example_pairs": (lambda b, t: load_pairs([("w5", "w6")]), ValueError, "at least 2 examples, got 1"),
    "pair_of_three": (
        lambda b, t: load_pairs([("w5", "w6"), ("w7", "w8", "w9")]),
        ValueError,
        r"pair 2: give a \(prompt, completion\) pair of two strings, got \('w7', 'w8', 'w9'\)",
    ),
    "prompt_longer_than_context": (
        lambda b, t: MaskTrainer(b, [subtask(positions=N_CTX + 4)]),
        ValueError,
        f"20 positions; the model's context is n_ctx={N_CTX}: shorten",
    ),
    "probe_data_longer_than_context": (
        lambda b, t: read_activations(
            b,
            ["blocks.0.hook_resid_post"],
            torch.zeros(1, N_CTX + 1, dtype=torch.long),
            torch.zeros(1, dtype=torch.long),
        ),
        ValueError,
        f"the probe data has examples of 17 positions; .*n_ctx={N_CTX}",
    ),
    "token_above_vocabulary": (
        lambda b, t: MaskTrainer(b, [subtask(token=VOCAB)]),
        ValueError,
        f"outside the model's vocabulary \\[0, {VOCAB}\\)",
    ),
    "negative_token": (lambda b, t: MaskTrainer(b, [subtask(token=-1)]), ValueError, "outside the model's vocabulary"),
    "token_above_vocabulary_in_an_analysis": (
        lambda b, t: mask_accuracy(b, {"m": MaskSet.for_bridge(b).binary()}, {"s": subtask(token=VOCAB)}),
        ValueError,
        f"outside the model's vocabulary \\[0, {VOCAB}\\)",
    ),
    "token_above_vocabulary_in_an_evaluation": (
        lambda b, t: objective_metric(b, subtask(token=VOCAB), AnswerCrossEntropy()),
        ValueError,
        "outside the model's vocabulary",
    ),
    "jsonl_missing_completion": (
        lambda b, t: load_pairs(jsonl(t, b'{"prompt": "w5"}\n' + GOOD_PAIRS)),
        ValueError,
        "line 1: no 'completion' key \\(the row has \\['prompt'\\]\\)",
    ),
    "jsonl_empty_completion": (
        lambda b, t: load_pairs(jsonl(t, GOOD_PAIRS + b'{"prompt": "w5", "completion": ""}')),
        ValueError,
        "line 3: 'completion' must be a non-empty string",
    ),
    "jsonl_bad_encoding": (
        lambda b, t: load_pairs(jsonl(t, GOOD_PAIRS + '{"prompt": "caf\u00e9"}'.encode("latin-1"))),
        ValueError,
        "not UTF-8 text.*save it as UTF-8",
    ),
    "jsonl_bad_json": (
        lambda b, t: load_pairs(jsonl(t, GOOD_PAIRS + b'{"prompt": w5}')),
        ValueError,
        "line 3: not valid JSON",
    ),
    "jsonl_not_an_object": (
        lambda b, t: load_pairs(jsonl(t, b'["w5", "w6"]\n' + GOOD_PAIRS)),
        ValueError,
        "line 1: expected an object",
    ),
    # A ValueError; under the tests' run-time type checks the Literal annotation refuses it first (a TypeError).
    "unknown_granularity": (lambda b, t: MaskConfig(granularity="block"), (ValueError, TypeError), "granularity"),
    "combine_masks_of_different_granularity": (
        lambda b, t: (
            MaskSet.for_bridge(b, MaskConfig(granularity="head")).binary()
            & MaskSet.for_bridge(b, MaskConfig(granularity="neuron")).binary()
        ),
        ValueError,
        "cannot combine masks.*cover different tensors",
    ),
    "combine_a_binary_mask_with_a_mask_set": (
        lambda b, t: MaskSet.for_bridge(b, MaskConfig()).binary() & MaskSet.for_bridge(b, MaskConfig()),
        TypeError,
        r"cannot combine mask .* with a MaskSet.*mask_set\.binary\(\)",
    ),
    "head_mask_on_a_layer_the_model_lacks": (
        lambda b, t: MaskSet.for_bridge(b, MaskConfig(granularity="head", layers=(7,))),
        ValueError,
        r"MaskConfig layers \[7\] are not in this model: it has layers 0\.\.\d+",
    ),
    "unknown_parameter_kind": (lambda b, t: MaskConfig(kinds=("attention",)), ValueError, "unknown parameter kinds"),
    "lr_zero": (lambda b, t: TrainConfig(lr=0.0), ValueError, r"lr 0.0 is out of range \(0, 1\]"),
    "lr_too_large": (lambda b, t: TrainConfig(lr=5.0), ValueError, r"lr 5.0 is out of range"),
    "beta_negative": (
        lambda b, t: TrainConfig(beta=-1e-4, max_loss_increase=None),
        ValueError,
        "beta -0.0001 must be a finite number >= 0",
    ),
    "beta_nan": (
        lambda b, t: TrainConfig(beta=float("nan"), max_loss_increase=None),
        ValueError,
        "beta nan must be a finite number",
    ),
    "beta_inf": (
        lambda b, t: TrainConfig(beta=float("inf"), max_loss_increase=None),
        ValueError,
        "beta inf must be a finite number",
    ),
    "temperature_nan": (
        lambda b, t: TrainConfig(temperature=float("nan")),
        ValueError,
        "temperature nan must be a finite number > 0",
    ),
    "init_logit_nan": (
        lambda b, t: MaskConfig(init_logit=float("nan")),
        ValueError,
        "init_logit nan must be a finite number",
    ),
    "grad_clip_zero": (
        lambda b, t: TrainConfig(grad_clip=0.0),
        ValueError,
        "grad_clip 0.0 must be a finite number > 0",
    ),
    "grad_clip_negative": (lambda b, t: TrainConfig(grad_clip=-1.0), ValueError, "grad_clip -1.0 must be"),
    "checkpoint_every_zero": (
        lambda b, t: TrainConfig(checkpoint_every=0),
        ValueError,
        "checkpoint_every 0 must be >= 1",
    ),
    "lagrangian_lr_nan": (
        lambda b, t: TrainConfig(lagrangian_lr=float("nan")),
        ValueError,
        "lagrangian_lr nan is out of range",
    ),
    "target_density_out_of_range": (
        lambda b, t: TrainConfig(target_density=1.5, max_loss_increase=None),
        ValueError,
        "must lie in \\(0, 1\\)",
    ),
    "batch_smaller_than_samples": (
        lambda b, t: TrainConfig(batch_size=2, n_samples=4),
        ValueError,
        "raise batch_size or lower n_samples",
    ),
    "unknown_hook_name": (
        lambda b, t: read_activations(
            b, ["blocks.0.hook_nonexistent"], torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        ),
        KeyError,
        "no hook point.*use names such as blocks.0.hook_resid_post",
    ),
    "probe_with_one_example": (
        lambda b, t: ProbeTrainer(
            b,
            ["blocks.0.hook_resid_post"],
            ProbeData.from_subtasks([subtask(examples=1)], vocab_size=VOCAB),
            ProbeConfig(),
        ),
        ValueError,
        "at least 2 examples",
    ),
    "masks_device_mismatch": (
        on_meta_device(lambda model: MaskTrainer(model, [subtask()])),
        ValueError,
        "subtask 'bad' is on device cpu but the model is on meta; move one",
    ),
    "probe_device_mismatch": (
        on_meta_device(
            lambda model: read_activations(
                model,
                ["blocks.0.hook_resid_post"],
                torch.zeros(1, 4, dtype=torch.long),
                torch.zeros(1, dtype=torch.long),
            )
        ),
        ValueError,
        "the probe data is on device cpu but the model is on meta",
    ),
    "nested_masked_contexts": (lambda b, t: nested_masked(b), RuntimeError, "do not nest"),
    "training_inside_masked": (lambda b, t: training_inside_masked(b), RuntimeError, "inside a masked\\(\\) context"),
    "masked_by_state_dict_key": (
        lambda b, t: masked_by_state_dict_key(b),
        KeyError,
        "not a parameter path of this bridge.*BinaryMask.weight_masks",
    ),
    "label_outside_vocabulary": (
        lambda b, t: MaskTrainer(b, [labels_outside_vocabulary()]),
        ValueError,
        "labels outside the model's output vocabulary",
    ),
    "attention_mask_row_empty": (
        lambda b, t: SubtaskData("bad", *subtask().batch(torch.arange(4)), torch.tensor([[1] * 6, [0] * 6] * 2)),
        ValueError,
        "example 1 attends to no position",
    ),
    "answer_under_padding": (  # the last two positions are scored; example 2 marks its last one as padding
        lambda b, t: SubtaskData(
            "bad", *subtask().batch(torch.arange(4)), torch.tensor([[1] * 6, [1] * 6, [1] * 5 + [0], [1] * 6])
        ),
        ValueError,
        "example 2 has a scored label where its attention_mask is 0",
    ),
    "int32_token_ids": (
        lambda b, t: SubtaskData("bad", subtask().input_ids.int(), subtask().labels),
        ValueError,
        r"input_ids has dtype torch.int32; .*must be torch.long \(int64\): convert with .long\(\)",
    ),
    # The test suite checks annotations at run time (beartype), which refuses these first, with its own message;
    # without it, MaskConfig and TrainConfig refuse them with theirs.
    "layers_not_a_tuple": (
        lambda b, t: MaskConfig(layers=1),
        TypeError,
        r"(layers takes a tuple, e.g. layers=\(0, 1,\)|parameter 'layers')",
    ),
    "head_mask_on_mlp_roles": (
        lambda b, t: MaskSet.for_bridge(b, MaskConfig(granularity="head", roles=("W_in",))),
        ValueError,
        r"selects no tensor of this model .*the model has layers 0\.\.\d+ and roles \[.*'W_Q'",
    ),
    "roles_of_a_kind_left_out": (
        lambda b, t: MaskSet.for_bridge(b, MaskConfig(roles=("W_Q", "b_Q", "W_X"))),
        ValueError,
        r"never be masked with kinds=\('linear', 'norm'\): 'b_Q' is a 'bias' role: add 'bias' to kinds; 'W_X' is",
    ),
    "fractional_layers": (
        lambda b, t: MaskConfig(layers=(0, 1.5)),
        TypeError,
        r"(layers takes whole numbers, e.g. layers=\(0, 1\)|parameter 'layers')",
    ),
    "roles_a_string": (lambda b, t: MaskConfig(roles="W_Q"), TypeError, "(roles takes a tuple|parameter 'roles')"),
    "fractional_steps": (
        lambda b, t: TrainConfig(steps=2.5),
        TypeError,
        "(steps must be a whole number|parameter 'steps')",
    ),
    "steps_a_bool": (lambda b, t: TrainConfig(steps=True), TypeError, "steps must be a whole number, not True"),
    "resume_with_other_settings": (resume_with_other_settings, ValueError, "trained with n_samples=2"),
    "unknown_task": (lambda b, t: load_subtask("scna/jump", None), KeyError, "unknown task 'scna'; known tasks"),
    "unknown_subtask": (
        lambda b, t: load_subtask("addmul/pow", None),
        ValueError,
        "no subtask 'pow'; its subtasks: add, mul \\(e.g. addmul/add; a space may be written _ or -\\)",
    ),
    "test_fraction_above_one": (lambda b, t: add_mul_task(test_fraction=1.5), ValueError, "test_fraction must be in"),
    "negative_test_fraction": (lambda b, t: add_mul_task(test_fraction=-0.1), ValueError, "test_fraction must be in"),
    "composite_modulus": (lambda b, t: modular_addition_task(prime=4), ValueError, "prime must be a prime"),
    "folder_without_a_model": (lambda b, t: load_bridge(str(t)), ValueError, "holds no model \\(no config.json\\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_an_early_clear_error(case, bridge, tmp_path):
    action, error, message = CASES[case]
    with pytest.raises(error, match=message):
        action(bridge, tmp_path)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_training_names_the_step_and_keeps_the_last_checkpoint(
    bad_value, bridge, tmp_path, monkeypatch
):
    data, config = subtask(), TrainConfig(steps=5, batch_size=4, n_samples=2, checkpoint_every=1)
    trainer = MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False)
    score_answers = modmask_lens.masks.objectives.score_answers  # what the default objective scores with

    def diverging_at_step_2(logits, labels, label_shift=1):
        score = score_answers(logits, labels, label_shift)
        if trainer.step == 2:
            score = type(score)(score.loss_sum * bad_value, score.n_tokens, score.n_correct, score.n_examples)
        return score

    monkeypatch.setattr(modmask_lens.masks.objectives, "score_answers", diverging_at_step_2)
    with pytest.raises(
        NonFiniteLoss,
        match=f"became {bad_value} at step 2; training stopped and the last good "
        f"checkpoint is {tmp_path / CHECKPOINT_FILE}",
    ):
        trainer.train()
    monkeypatch.undo()
    assert MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False).step == 2


runner = CliRunner()


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A tiny GPT-2 saved with a tokenizer, and the same without one."""
    with_tokenizer = tmp_path_factory.mktemp("with_tokenizer")
    boot_gpt2(with_tokenizer)
    placeholder_word_tokenizer(VOCAB).save_pretrained(with_tokenizer)
    without_tokenizer = tmp_path_factory.mktemp("without_tokenizer")
    boot_gpt2(without_tokenizer)
    return with_tokenizer, without_tokenizer


def cli_cases(folders, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    with_tokenizer, without_tokenizer = folders
    good = jsonl(tmp_path, GOOD_PAIRS + b'{"prompt": "w9", "completion": "w10"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD_PAIRS + b'{"prompt": "w5"}\n')
    not_a_mask = tmp_path / "not-a-mask.safetensors"
    not_a_mask.write_bytes(b"\x00" * 16)
    train = ["masks", "train", "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "out")]
    return {
        "no_model_in_folder": (train + ["--model", str(tmp_path), "--task", str(good)], "holds no model"),
        "no_tokenizer": (train + ["--model", str(without_tokenizer), "--task", str(good)], "has no tokenizer"),
        "jsonl_missing_field": (
            train + ["--model", str(with_tokenizer), "--task", str(bad)],
            "line 3: no 'completion' key (the row has ['prompt'])",
        ),
        "lr_out_of_range": (
            train + ["--model", str(with_tokenizer), "--task", str(good), "--lr", "5"],
            "lr 5.0 is out of range",
        ),
        "beta_negative": (
            train + ["--model", str(with_tokenizer), "--task", str(good), "--method", "csordas", "--beta", "-1"],
            "beta -1.0 must be a finite number >= 0",
        ),
        "unknown_task": (train + ["--model", str(with_tokenizer), "--task", "scna"], "unknown task 'scna'"),
        "not_a_mask_file": (
            ["analyze", "--model", str(with_tokenizer), "--masks", str(not_a_mask), "--out", str(tmp_path / "a")],
            "not a readable safetensors file",
        ),
        "missing_mask_file": (
            [
                "analyze",
                "--model",
                str(with_tokenizer),
                "--masks",
                str(tmp_path / "absent.safetensors"),
                "--out",
                str(tmp_path / "a"),
            ],
            "no such file",
        ),
    }


CLI_CASES = [
    "no_model_in_folder",
    "no_tokenizer",
    "jsonl_missing_field",
    "lr_out_of_range",
    "beta_negative",
    "unknown_task",
    "not_a_mask_file",
    "missing_mask_file",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_cli_reports_bad_input_in_one_line_with_exit_code_1(case, model_folders, tmp_path):
    arguments, message = cli_cases(model_folders, tmp_path)[case]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert message in line, line
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback_of_the_same_error(model_folders, tmp_path):
    arguments, message = cli_cases(model_folders, tmp_path)["lr_out_of_range"]
    result = runner.invoke(app, ["--debug", *arguments])
    assert result.exit_code != 0 and error_lines(result) == []
    assert isinstance(result.exception, ValueError) and message in str(result.exception)
