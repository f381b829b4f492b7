"""Mask training: learns what a task needs, touches nothing else, and resumes exactly."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pandas as pd
import pytest
import torch
from conftest import assert_unchanged, boot_native, state_snapshot
from transformer_lens.model_bridge import TransformerBridge

from modmask_lens import (
    CSORDAS_MASKS,
    CSORDAS_TRAINING,
    MaskConfig,
    MaskSet,
    MaskTrainer,
    NonFiniteLoss,
    SubtaskData,
    TrainConfig,
    masked,
    score_answers,
)
from modmask_lens.analysis import exact_match
from modmask_lens.masks import readout, training
from modmask_lens.masks.config import REMOVAL_EVALUATIONS
from modmask_lens.masks.io import load_masks, save_masks
from modmask_lens.masks.training import CHECKPOINT_FILE, PaddedReadout, UnfaithfulReadout

SEP, EOS = 10, 11


def copy_first_token_data(name: str = "copy") -> SubtaskData:
    """``a b SEP -> a EOS`` for all digit pairs: the answer needs attention to position 0."""
    pairs = torch.cartesian_prod(torch.arange(10), torch.arange(10))
    input_ids = torch.stack(
        [pairs[:, 0], pairs[:, 1], torch.full((100,), SEP), pairs[:, 0], torch.full((100,), EOS)], 1
    )
    labels = input_ids.clone()
    labels[:, :3] = -100
    return SubtaskData(name, input_ids, labels)


@pytest.fixture(scope="module")
def one_head_model():
    """A 1-layer model trained on the copy task with heads 1-3 and the MLP writing nothing, by construction."""
    torch.manual_seed(0)
    bridge = TransformerBridge.boot_native(
        {
            "n_layers": 1,
            "d_model": 32,
            "n_heads": 4,
            "d_head": 8,
            "d_mlp": 64,
            "n_ctx": 8,
            "d_vocab": 12,
            "act_fn": "gelu",
            "normalization_type": "LN",
            "seed": 0,
        }
    )
    attention_out = bridge.get_parameter("blocks.0.attn.o._original_component.weight")  # [d_model, n_heads * d_head]
    mlp_out = bridge.get_parameter("blocks.0.mlp.out._original_component.weight")
    writes_nothing = {attention_out: torch.ones_like(attention_out), mlp_out: torch.zeros_like(mlp_out)}
    writes_nothing[attention_out][:, 8:] = 0.0
    with torch.no_grad():
        for weight, keep in writes_nothing.items():
            weight.mul_(keep)
            weight.register_hook(lambda grad, keep=keep: grad * keep)
    data = copy_first_token_data()
    optimizer = torch.optim.Adam(bridge.original_model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        score = score_answers(bridge(data.input_ids), data.labels)
        (score.loss_sum / score.n_tokens).backward()
        optimizer.step()
    for parameter in bridge.original_model.parameters():
        parameter.grad = None
        parameter._backward_hooks = None
    assert score_answers(bridge(data.input_ids), data.labels).n_correct == 100
    return bridge, data


@pytest.mark.parametrize(
    ("mask_config", "train_config"),
    [(MaskConfig(), TrainConfig()), (CSORDAS_MASKS, CSORDAS_TRAINING)],
    ids=["default", "csordas"],
)
def test_mask_training_removes_unneeded_weights_and_keeps_accuracy(one_head_model, mask_config, train_config):
    bridge, data = one_head_model
    snapshot = state_snapshot(bridge)
    settings = dataclasses.replace(train_config, steps=300, batch_size=64)
    masks = MaskTrainer(bridge, [data], mask_config, settings, progress=False).train()
    binary = masks["copy"].binary()
    assert_unchanged(bridge, snapshot)
    assert all(parameter.grad is None for parameter in bridge.parameters())
    heads = binary.kept_fraction(by="head")
    unneeded_heads = heads[heads["head"] > 0]
    assert unneeded_heads.kept.sum() / unneeded_heads.total.sum() < 0.1
    by_role = binary.kept_fraction(by="layer_role").set_index("role")
    assert by_role.loc[["W_in", "W_out", "ln2.w"], "kept_fraction"].max() < 0.1
    with masked(bridge, binary):
        accuracy = score_answers(bridge(data.input_ids), data.labels).n_correct / len(data)
    assert accuracy >= 0.95
    assert binary.count / binary.total < 0.6


def test_several_tasks_in_one_run_equal_separate_runs(one_head_model):
    bridge, data = one_head_model
    other = SubtaskData("copy_low", data.input_ids[:50], data.labels[:50])
    config = TrainConfig(steps=4, batch_size=16)
    undecided = MaskConfig(init_logit=0.0)  # samples inside (0, 1), so each task's gradient reaches its logits at once
    joint = MaskTrainer(bridge, [data, other], undecided, config, progress=False).train()
    for subtask in (data, other):
        alone = MaskTrainer(bridge, [subtask], undecided, config, progress=False).train()[subtask.name]
        for name, logit in alone.logits.items():
            assert torch.equal(logit, joint[subtask.name].logits[name])
    assert not torch.equal(
        joint["copy"].logits["blocks.0.attn.q.weight"], joint["copy_low"].logits["blocks.0.attn.q.weight"]
    )


def test_the_progress_bar_shows_the_kept_fraction_once_it_is_measured(one_head_model):
    """Before the first logged step (every 10) no kept fraction is known: the bar leaves it out, not 'nan'."""
    bridge, data = one_head_model
    other = SubtaskData("copy_low", data.input_ids[:50], data.labels[:50])
    for subtasks in ([data], [data, other]):
        trainer = MaskTrainer(bridge, subtasks, train_config=TrainConfig(steps=1, batch_size=8), progress=False)
        trainer.train()
        for run in trainer.runs:
            run.metrics["kept"] = float("nan")
        assert "nan" not in str(trainer._postfix()) and "kept" not in str(trainer._postfix())
        for run in trainer.runs:
            run.metrics["kept"] = 0.25
        assert "0.25" in str(trainer._postfix())


def test_interrupted_training_resumes_to_the_uninterrupted_result(one_head_model, tmp_path, monkeypatch):
    bridge, data = one_head_model
    config = TrainConfig(steps=6, batch_size=16, checkpoint_every=2)
    uninterrupted = MaskTrainer(bridge, [data], train_config=config, progress=False).train()["copy"]

    interrupted = MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False)
    original_step = MaskTrainer._train_step

    def step_then_crash(self, run):
        if self.step == 3:
            raise KeyboardInterrupt
        original_step(self, run)

    monkeypatch.setattr(MaskTrainer, "_train_step", step_then_crash)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    monkeypatch.setattr(MaskTrainer, "_train_step", original_step)
    resumed = MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.step == 2
    result = resumed.train()["copy"]
    for name, logit in uninterrupted.logits.items():
        assert torch.equal(logit, result.logits[name]), name
    assert (tmp_path / CHECKPOINT_FILE).exists()


def test_resume_refuses_other_training_settings(one_head_model, tmp_path):
    bridge, data = one_head_model
    MaskTrainer(
        bridge,
        [data],
        train_config=TrainConfig(steps=2, batch_size=8, checkpoint_every=1),
        checkpoint_dir=tmp_path,
        progress=False,
    ).train()
    with pytest.raises(ValueError, match="trained with batch_size=8, this run has batch_size=16"):
        MaskTrainer(bridge, [data], train_config=TrainConfig(steps=3, batch_size=16), checkpoint_dir=tmp_path)


def test_a_finished_run_extends_to_more_steps_as_if_it_had_run_them_at_once(one_head_model, tmp_path):
    bridge, data = one_head_model
    short, long = TrainConfig(steps=2, batch_size=8), TrainConfig(steps=4, batch_size=8, checkpoint_every=3)
    MaskTrainer(bridge, [data], train_config=short, checkpoint_dir=tmp_path, progress=False).train()
    extended_trainer = MaskTrainer(bridge, [data], train_config=long, checkpoint_dir=tmp_path, progress=False)
    assert extended_trainer.step == 2
    extended = extended_trainer.train()["copy"]
    at_once = MaskTrainer(bridge, [data], train_config=long, progress=False).train()["copy"]
    for name, logit in at_once.logits.items():
        assert torch.equal(logit, extended.logits[name]), name
    assert extended.train_config["steps"] == 4
    assert extended.history == at_once.history  # no row left by the shorter run's last step (step 2)


def test_resume_refuses_another_granularity_other_data_and_fewer_steps(one_head_model, tmp_path):
    bridge, data = one_head_model
    config = TrainConfig(steps=2, batch_size=8)
    MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False).train()
    with pytest.raises(ValueError, match="'copy' was trained with mask config"):
        MaskTrainer(bridge, [data], MaskConfig(granularity="head"), config, checkpoint_dir=tmp_path)
    other_data = SubtaskData(data.name, data.input_ids.flip(0), data.labels.flip(0))
    with pytest.raises(ValueError, match="'copy' was trained on other data"):
        MaskTrainer(bridge, [other_data], train_config=config, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="at step 2, past this run's steps=1; raise steps"):
        MaskTrainer(bridge, [data], train_config=TrainConfig(steps=1, batch_size=8), checkpoint_dir=tmp_path)


def test_target_density_mode_drives_the_expected_density_to_the_target(one_head_model):
    bridge, data = one_head_model
    config = TrainConfig(
        steps=400,
        batch_size=32,
        max_loss_increase=None,
        target_density=0.5,
        density_warmup_steps=100,
        lagrangian_lr=0.1,
    )
    masks = MaskTrainer(bridge, [data], train_config=config, progress=False).train()["copy"]
    assert abs(float(masks.expected_density().detach()) - 0.5) < 0.05


def test_nan_loss_stops_training_naming_the_step(tmp_path):
    bridge = boot_native()
    with torch.no_grad():
        bridge.get_parameter("blocks.1.mlp.out._original_component.bias")[0] = float("nan")
    data = SubtaskData("nan", torch.randint(0, 40, (8, 6)), torch.randint(0, 40, (8, 6)))
    with pytest.raises(NonFiniteLoss, match="step 0"):
        MaskTrainer(bridge, [data], train_config=TrainConfig(steps=2, batch_size=4), progress=False).train()


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: SubtaskData("empty", torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long)),
            "empty",
        ),
        # The shape check is also jaxtyping's (a TypeError) when the annotations are enforced, as in these tests.
        (
            lambda: SubtaskData("shape", torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)),
            "shape|pos",
        ),
        (lambda: SubtaskData("unscored", torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), -100)), "no answer"),
        (lambda: TrainConfig(lr=5.0), "lr"),
        (lambda: TrainConfig(beta=-1.0, max_loss_increase=None), "beta"),
        (lambda: TrainConfig(beta=1e-4), "set exactly one sparsity term.*max_loss_increase=None"),
        (lambda: TrainConfig(batch_size=2, n_samples=4), "n_samples"),
        (lambda: MaskConfig(granularity="block"), "granularity"),
    ],
)
def test_bad_input_gets_a_clear_error(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_tokens_outside_the_vocabulary_are_refused():
    data = SubtaskData("big", torch.full((2, 4), 99), torch.full((2, 4), 99))
    with pytest.raises(ValueError, match="vocabulary"):
        MaskTrainer(boot_native(), [data])


def test_training_history_logs_every_ten_steps_and_faithfulness_against_an_independent_count(one_head_model, tmp_path):
    bridge, data = one_head_model
    # The history logs the logit > 0 readout during training; the faithful readout is chosen after the last step.
    config = TrainConfig(steps=105, batch_size=8, checkpoint_every=50, readout="zero")
    masks = MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False).train()["copy"]
    history = pd.DataFrame(masks.history)
    assert history.step.tolist() == [*range(10, 101, 10), 105]
    assert history.faithfulness.notna().tolist() == [step in (100, 105) for step in history.step]
    assert history.kept.iloc[-1] == pytest.approx(masks.binary().count / masks.binary().total)
    assert history.expected_density.iloc[-1] == pytest.approx(float(masks.expected_density().detach()))
    examples = min(len(data), 256)
    subset = SubtaskData("first", data.input_ids[:examples], data.labels[:examples])
    expected = exact_match(bridge, subset, masks.binary()) / exact_match(bridge, subset)
    assert history.faithfulness.iloc[-1] == pytest.approx(expected)
    assert load_masks(save_masks(masks, tmp_path / "copy.safetensors"), bridge).history == masks.history


def test_a_resumed_run_continues_the_history_of_an_uninterrupted_one(one_head_model, tmp_path):
    bridge, data = one_head_model
    short, long = TrainConfig(steps=20, batch_size=8), TrainConfig(steps=40, batch_size=8)
    MaskTrainer(bridge, [data], train_config=short, checkpoint_dir=tmp_path, progress=False).train()
    resumed = MaskTrainer(bridge, [data], train_config=long, checkpoint_dir=tmp_path, progress=False).train()
    at_once = MaskTrainer(bridge, [data], train_config=long, progress=False).train()

    def without_faithfulness(history):  # the short run measured it at its last step, 20, as every run does
        return [{key: value for key, value in row.items() if key != "faithfulness"} for row in history]

    assert without_faithfulness(resumed["copy"].history) == without_faithfulness(at_once["copy"].history)


def test_the_default_readout_keeps_the_faithful_units_of_the_training_examples(one_head_model, tmp_path, monkeypatch):
    bridge, data = one_head_model
    chosen = {}

    def recorded(*arguments, **options):
        chosen.update(readout.faithful_units(*arguments, **options))
        return dict(chosen)

    monkeypatch.setattr(training, "faithful_units", recorded)
    masks = MaskTrainer(bridge, [data], train_config=TrainConfig(steps=100, batch_size=64), progress=False).train()
    trained = masks["copy"]
    assert chosen and all(
        torch.equal(kept, chosen[name]) for name, kept in trained.kept_above(trained.threshold).items()
    )
    assert exact_match(bridge, data, trained.binary()) >= 0.99 * exact_match(bridge, data)
    assert load_masks(save_masks(trained, tmp_path / "copy.safetensors"), bridge).threshold == trained.threshold


def test_the_readout_search_budget_is_a_setting_that_a_checkpoint_resumes_under(one_head_model, tmp_path, monkeypatch):
    bridge, data = one_head_model
    budgets = []

    def recorded(*arguments, **options):
        budgets.append(inspect.signature(readout.faithful_units).bind(*arguments, **options).arguments["evaluations"])
        return readout.faithful_units(*arguments, **options)

    monkeypatch.setattr(training, "faithful_units", recorded)
    searched = TrainConfig(steps=20, batch_size=8)
    MaskTrainer(bridge, [data], train_config=searched, checkpoint_dir=tmp_path, progress=False).train()
    unsearched = dataclasses.replace(searched, readout_evaluations=0)
    MaskTrainer(bridge, [data], train_config=unsearched, checkpoint_dir=tmp_path, progress=False).train()
    assert budgets == [REMOVAL_EVALUATIONS, 0]


def test_the_readout_judges_examples_spread_through_the_data_not_its_first_ones(one_head_model, monkeypatch):
    bridge, data = one_head_model
    # Data ordered by some property (a tracr program's inputs come shortest first): 512 rows, the first 256 of
    # which are not a sample of the whole.
    rows = torch.arange(512) % len(data)
    ordered = SubtaskData("copy", data.input_ids[rows], data.labels[rows])
    judged = []

    def recorded(bridge, masks, examples, *arguments, **options):
        judged.append(examples)
        return readout.faithful_units(bridge, masks, examples, *arguments, **options)

    monkeypatch.setattr(training, "faithful_units", recorded)
    MaskTrainer(bridge, [ordered], train_config=TrainConfig(steps=1, batch_size=8), progress=False).train()
    assert torch.equal(judged[0].input_ids, ordered.input_ids[::2])  # every second of 512: 256 spread examples
    assert torch.equal(judged[0].labels, ordered.labels[::2])


def test_a_model_that_solves_no_example_is_read_out_at_zero_with_a_warning():
    bridge = boot_native()
    generator = torch.Generator().manual_seed(0)
    data = SubtaskData("noise", *torch.randint(0, 40, (2, 8, 6), generator=generator))
    assert exact_match(bridge, data) == 0  # random answers to a random model (seeded)
    with pytest.warns(UnfaithfulReadout, match="accuracy on 8 of its examples is 0.0"):
        masks = MaskTrainer(bridge, [data], train_config=TrainConfig(steps=2, batch_size=4), progress=False).train()
    assert masks["noise"].threshold == 0.0


@pytest.mark.parametrize("padded", [True, False])
def test_a_readout_that_keeps_units_training_removed_says_so(one_head_model, monkeypatch, padded):
    bridge, data = one_head_model
    head_logits = torch.tensor([2.0, -1.0, -3.0, -5.0])  # head 0 kept by training, the others removed
    chosen = -4.0 if padded else 0.5  # the readout keeps heads 0-2, or head 0 alone

    def trained(_bridge, masks, *_, **__):
        masks.logits["blocks.0.attn"] = head_logits.clone().requires_grad_()
        return masks.kept_above(chosen)

    monkeypatch.setattr(training, "faithful_units", trained)
    trainer = MaskTrainer(
        bridge, [data], MaskConfig(granularity="head"), TrainConfig(steps=1, batch_size=8), progress=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(warning.message) for warning in caught if warning.category is PaddedReadout]
    if padded:
        assert len(messages) == 1 and "keeps 1 units" in messages[0] and "readout keeps 3, adding back 2" in messages[0]
    else:
        assert not messages


def test_a_constrained_run_resumes_with_its_multiplier_to_the_uninterrupted_result(one_head_model, tmp_path):
    bridge, data = one_head_model
    mask_config = MaskConfig(sampler="hard-concrete", init_logit=0.0)  # half the heads off: the constraint binds
    config = TrainConfig(steps=6, batch_size=8, lr=0.05, max_loss_increase=0.02, lagrangian_lr=0.05, checkpoint_every=3)
    at_once = MaskTrainer(bridge, [data], mask_config, config, progress=False).train()["copy"]
    first = MaskTrainer(
        bridge,
        [data],
        mask_config,
        TrainConfig(**{**config.to_dict(), "steps": 3}),
        checkpoint_dir=tmp_path,
        progress=False,
    )
    first.train()
    assert float(first.runs[0].multipliers[0]) > 0  # the constraint was violated early on and lambda rose
    resumed = MaskTrainer(bridge, [data], mask_config, config, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(resumed.runs[0].multipliers, first.runs[0].multipliers)
    result = resumed.train()["copy"]
    for name, logit in at_once.logits.items():
        assert torch.equal(logit, result.logits[name]), name


def test_the_loss_constraint_bounds_each_example_s_whole_answer_or_its_mean_token(one_head_model):
    """Step 1 is the same in both units (lambda starts at 0), so the same loss increase enters the multiplier divided by
    the examples or by the answer tokens; every answer here has 2 tokens (``a EOS``)."""
    bridge, data = one_head_model
    mask_config = MaskConfig(sampler="hard-concrete", init_logit=0.0)  # half the heads off: the constraint binds
    increases = {}
    for unit in ("example", "token"):
        config = TrainConfig(steps=1, batch_size=8, max_loss_increase=0.02, loss_increase_per=unit, readout="zero")
        trainer = MaskTrainer(bridge, [data], mask_config, config, progress=False)
        trainer.train()
        increases[unit] = float(trainer.runs[0].multipliers[0]) / config.lagrangian_lr + 0.02
    assert increases["token"] > 0.02  # lambda was not clamped at 0
    assert increases["example"] == pytest.approx(2 * increases["token"], rel=1e-5)


@pytest.mark.parametrize(("granularity", "unit"), [("head", "example"), ("weight", "token")])
def test_auto_bounds_head_and_neuron_masks_per_example_and_weight_masks_per_token(one_head_model, granularity, unit):
    bridge, data = one_head_model
    mask_config = MaskConfig(granularity=granularity, sampler="hard-concrete", init_logit=0.0)
    multipliers = {}
    for given in ("auto", unit):
        config = TrainConfig(steps=1, batch_size=8, loss_increase_per=given, readout="zero")
        trainer = MaskTrainer(bridge, [data], mask_config, config, progress=False)
        trainer.train()
        multipliers[given] = float(trainer.runs[0].multipliers[0])
    assert multipliers["auto"] > 0 and multipliers["auto"] == multipliers[unit]
    assert TrainConfig().loss_unit(granularity) == unit
    assert TrainConfig().loss_unit("neuron") == "example" and TrainConfig().loss_unit("matrix") == "token"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_loss_increase": -0.1}, "max_loss_increase -0.1 must be a finite number >= 0"),
        ({"max_loss_increase": float("nan")}, "max_loss_increase nan must be"),
        ({"target_density": 0.1}, "set exactly one sparsity term"),
        ({"max_loss_increase": None}, "got none"),
        (
            {"max_loss_increase": None, "beta": 1e-4, "loss_increase_per": "example"},
            "loss_increase_per='example' is the unit of the loss constraint and applies only with max_loss_increase",
        ),
    ],
)
def test_bad_constraint_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_an_unknown_loss_unit_is_refused():
    with pytest.raises((ValueError, TypeError), match="loss_increase_per"):
        TrainConfig(loss_increase_per="batch")


def test_an_unknown_sampler_is_refused():
    with pytest.raises((ValueError, TypeError), match="sampler"):
        MaskConfig(sampler="bernoulli")


def test_the_faithful_readout_keeps_the_fewest_units_that_keep_accuracy(one_head_model):
    bridge, data = one_head_model
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"), name="copy")
    masks.logits["blocks.0.attn"] = torch.tensor([-1.0, 3.0, 2.0, 1.0])  # the needed head 0 ranks last, below zero
    full = exact_match(bridge, data)

    def top(count):  # the count highest logits, by brute force
        order = masks.logits["blocks.0.attn"].argsort(descending=True)[:count]
        return masks.binary_from({"blocks.0.attn": torch.isin(torch.arange(4), order)})

    by_count = [exact_match(bridge, data, top(count)) for count in range(5)]
    expected_count = next(count for count, accuracy in enumerate(by_count) if accuracy >= 0.99 * full)
    assert expected_count == 4 and readout.faithful_threshold(bridge, masks, data) == pytest.approx(-2.0)
    head_zero_only = masks.binary_from({"blocks.0.attn": torch.tensor([True, False, False, False])})
    assert exact_match(bridge, data, head_zero_only) >= 0.99 * full  # fewer than the top 4: the removal search's
    kept = readout.faithful_binary(bridge, masks, data)
    assert all(torch.equal(kept.kept[key], flags) for key, flags in head_zero_only.kept.items())
    assert exact_match(bridge, data, masks.binary()) < 0.5 <= exact_match(bridge, data, kept)
    masks.logits["blocks.0.attn"] = torch.tensor([3.0, -1.0, -2.0, -3.0])
    chosen = readout.faithful_binary(bridge, masks, data)
    assert all(torch.equal(chosen.kept[key], kept) for key, kept in head_zero_only.kept.items())
