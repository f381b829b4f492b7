"""Resuming compares run fingerprints; a train setting added later reads as its old behaviour in older checkpoints."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from modmask_lens.core.data import SubtaskData
from modmask_lens.masks.config import MaskConfig, TrainConfig
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.model_config import ModelConfigUnchecked
from modmask_lens.masks.run_fingerprint import RunMismatch, check_same_run, run_fingerprint
from modmask_lens.masks.training import MaskTrainer
from modmask_lens.testing.tiny_models import tiny_bridge


def fingerprint(config: TrainConfig, drop: tuple[str, ...] = ()) -> dict[str, object]:
    settings = {key: value for key, value in config.deciding_fields().items() if key not in drop}
    return {"data": "abc", "train_config": settings}


def test_a_checkpoint_written_before_loss_increase_per_resumes_per_token_only():
    old = fingerprint(TrainConfig(), drop=("loss_increase_per",))  # written before the setting existed
    check_same_run(old, fingerprint(TrainConfig(loss_increase_per="token")), "ckpt", "copy")
    with pytest.raises(RunMismatch, match="loss_increase_per='token', this run has loss_increase_per='example'"):
        check_same_run(old, fingerprint(TrainConfig(loss_increase_per="example")), "ckpt", "copy")


@pytest.mark.parametrize(
    ("mask_config", "written", "resumes"),
    [
        (MaskConfig(), TrainConfig(loss_increase_per="token"), True),  # weight masks: auto is token
        (MaskConfig(granularity="head"), TrainConfig(loss_increase_per="token"), False),  # heads: auto is example
        (MaskConfig(granularity="head"), TrainConfig(loss_increase_per="example"), True),
        (MaskConfig(), TrainConfig(beta=1e-4, max_loss_increase=None, loss_increase_per="token"), True),  # Csordás
    ],
)
def test_a_run_under_auto_resumes_a_checkpoint_of_the_unit_it_trains_with(mask_config, written, resumes):
    origin = MaskOrigin.of(tiny_bridge())
    data = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
    now = dataclasses.replace(written, loss_increase_per="auto")
    saved = run_fingerprint(origin, data, mask_config, written)
    if resumes:
        check_same_run(saved, run_fingerprint(origin, data, mask_config, now), "ckpt", "copy")
    else:
        with pytest.raises(RunMismatch, match="loss_increase_per='token', this run has loss_increase_per='example'"):
            check_same_run(saved, run_fingerprint(origin, data, mask_config, now), "ckpt", "copy")


def test_any_other_setting_still_has_to_match():
    saved = fingerprint(TrainConfig())
    with pytest.raises(RunMismatch, match="trained with lr=0.05, this run has lr=0.01"):
        check_same_run(saved, fingerprint(dataclasses.replace(TrainConfig(), lr=0.01)), "ckpt", "copy")


def written_before_the_head_share(mask_config: MaskConfig) -> tuple[dict[str, object], dict[str, object]]:
    """A run's fingerprint as a checkpoint written before ``heads_estimated_per_step`` existed holds it, and the
    same run's fingerprint now."""
    data = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
    origin = MaskOrigin.of(tiny_bridge())
    now = run_fingerprint(origin, data, mask_config, TrainConfig())
    saved = copy.deepcopy(now)
    saved["train_config"].pop("heads_estimated_per_step", None)
    return saved, now


@pytest.mark.parametrize("sampler", ["hard-concrete", "gumbel-sigmoid"])
def test_a_pathwise_run_resumes_whatever_its_share_of_heads(sampler):
    """The share of heads per step changes nothing but Bernoulli head runs: older checkpoints of others resume."""
    saved, now = written_before_the_head_share(MaskConfig(granularity="head", sampler=sampler))
    assert "heads_estimated_per_step" not in now["train_config"]
    check_same_run(saved, now, "ckpt", "copy")


@pytest.mark.parametrize("share", [8, None])
def test_a_bernoulli_run_from_before_the_share_of_heads_is_refused_by_name(share):
    """No setting deals the heads as those runs did (every head, a fixed share per chunk), so none resumes them; the
    refusal names the setting and what the old run did (it raised an IndexError when the setting was None)."""
    saved, now = written_before_the_head_share(MaskConfig(granularity="head", sampler="bernoulli"))
    now["train_config"]["heads_estimated_per_step"] = share
    with pytest.raises(RunMismatch, match=r"heads_estimated_per_step='every head, each chunk a fixed share"):
        check_same_run(saved, now, "ckpt", "copy")


def test_a_setting_absent_from_one_side_is_named_even_when_the_other_holds_null():
    with pytest.raises(RunMismatch, match=r"trained with extra='\(not set\)', this run has extra=None"):
        check_same_run({"train_config": {"lr": 0.05}}, {"train_config": {"lr": 0.05, "extra": None}}, "ckpt", "copy")


def test_a_bernoulli_head_run_started_at_the_old_logit_is_refused_by_name():
    """Bernoulli head masks start at logit 0.01 since session 11; a checkpoint of a run that started at 3.0 (the
    earlier default) resumes only with ``init_logit=3.0`` named."""
    bridge = tiny_bridge()
    data = SubtaskData("copy", torch.tensor([[1, 2, 2], [3, 4, 4]]), torch.tensor([[-100, -100, 2], [-100, -100, 4]]))

    def saved_fingerprint(mask_config: MaskConfig) -> dict[str, object]:
        trainer = MaskTrainer(bridge, [data], mask_config, TrainConfig(steps=1), progress=False)
        return trainer.runs[0].masks.fingerprint

    old = saved_fingerprint(MaskConfig(granularity="head", init_logit=3.0))
    with pytest.raises(RunMismatch, match="trained with mask config init_logit=3.0, this run has init_logit=0.01"):
        check_same_run(old, saved_fingerprint(MaskConfig(granularity="head")), "ckpt", "copy")
    check_same_run(old, saved_fingerprint(MaskConfig(granularity="head", init_logit=3.0)), "ckpt", "copy")


def written_before_the_neuron_mask(mask_config: MaskConfig) -> tuple[dict[str, object], dict[str, object]]:
    """A run's fingerprint as a checkpoint written before ``neuron_mask`` existed holds it, and the same run's
    fingerprint now."""
    data = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
    now = run_fingerprint(MaskOrigin.of(tiny_bridge()), data, mask_config, TrainConfig())
    saved = copy.deepcopy(now)
    saved["mask_config"].pop("neuron_mask", None)
    return saved, now


@pytest.mark.parametrize("granularity", ["weight", "head"])
def test_runs_of_other_granularities_resume_whatever_their_neuron_mask(granularity):
    for neuron_mask in ("output", "in-out"):
        saved, now = written_before_the_neuron_mask(MaskConfig(granularity=granularity, neuron_mask=neuron_mask))
        assert "neuron_mask" not in now["mask_config"]
        check_same_run(saved, now, "ckpt", "copy")


def test_a_neuron_run_from_before_neuron_mask_resumes_in_out_only():
    saved, now = written_before_the_neuron_mask(MaskConfig(granularity="neuron", neuron_mask="in-out"))
    check_same_run(saved, now, "ckpt", "copy")
    _, default = written_before_the_neuron_mask(MaskConfig(granularity="neuron"))
    with pytest.raises(RunMismatch, match="neuron_mask='in-out', this run has neuron_mask='output'"):
        check_same_run(saved, default, "ckpt", "copy")


def test_a_neuron_run_with_roles_resumes_whatever_its_neuron_mask():
    """``roles`` decides which tensors a neuron logit masks; ``neuron_mask`` then selects nothing."""
    saved, now = written_before_the_neuron_mask(MaskConfig(granularity="neuron", roles=("W_out",)))
    assert "neuron_mask" not in now["mask_config"]
    check_same_run(saved, now, "ckpt", "copy")


def test_another_objective_is_named_as_the_objective():
    saved = {"objective": {"name": "answer_cross_entropy"}}
    expected = r"trained with objective name='answer_cross_entropy', this run has name='kl'"
    with pytest.raises(RunMismatch, match=expected):
        check_same_run(saved, {"objective": {"name": "kl"}}, "ckpt", "copy")


def test_lists_and_numpy_layers_read_as_the_tuple_of_ints_they_hold():
    import json

    import numpy as np

    given = MaskConfig(kinds=["linear"], roles=["W_Q", "W_O"], layers=list(np.arange(2)))
    assert given == MaskConfig(kinds=("linear",), roles=("W_Q", "W_O"), layers=(0, 1))
    assert type(given.layers[0]) is int and json.loads(json.dumps(given.to_dict()))["layers"] == [0, 1]


def test_a_refusal_names_every_setting_that_differs():
    written = {"data": "abc", "mask_config": MaskConfig(init_logit=0.01, sampler="gumbel-sigmoid").deciding_fields()}
    now = {"data": "abc", "mask_config": MaskConfig(init_logit=3.0, sampler="hard-concrete").deciding_fields()}
    with pytest.raises(
        RunMismatch, match=r"init_logit=0.01, this run has init_logit=3.0 \(mask_config; also differ: sampler\)"
    ):
        check_same_run(written, now, "ckpt", "copy")


def test_a_checkpoint_written_before_model_configs_resumes_with_a_warning_and_another_config_is_named():
    data = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
    current = run_fingerprint(MaskOrigin.of(tiny_bridge()), data, MaskConfig(), TrainConfig())
    old = copy.deepcopy(current)
    del old["model"]["config"]
    with pytest.warns(ModelConfigUnchecked, match="ckpt \\(subtask 'copy'\\) records no model config"):
        check_same_run(old, current, "ckpt", "copy")
    relu = copy.deepcopy(current)
    relu["model"]["config"]["act_fn"] = "relu"
    expected = r"another model \(config \(act_fn: relu in the checkpoint, gelu in this run\) differ\)"
    with pytest.raises(RunMismatch, match=expected):
        check_same_run(relu, current, "ckpt", "copy")
    del old["model"]["weights_sha256"]
    with pytest.warns(ModelConfigUnchecked), pytest.raises(RunMismatch, match=r"\(weights_sha256 differ\)"):
        check_same_run(old, current, "ckpt", "copy")


def test_a_run_resumed_from_a_checkpoint_without_model_config_finishes_a_mask_that_records_it(tmp_path):
    """The resume compares the checkpoint's weights and dimensions with the model it runs on (warning once that the
    config went unchecked); the finished mask took the checkpoint's model record, without a config, and warned at
    every load after. It records the config of the model it was finished on, as a fresh run's does."""
    import warnings

    from modmask_lens.core.checkpoint import CHECKSUM_FIELD, read_safetensors, write_safetensors_atomically
    from modmask_lens.masks.io import load_masks, save_masks
    from modmask_lens.masks.training import CHECKPOINT_FILE, CHECKPOINT_FORMAT

    bridge = tiny_bridge()
    data = SubtaskData("copy", torch.tensor([[1, 2, 2], [3, 4, 4]]), torch.tensor([[-100, -100, 2], [-100, -100, 4]]))
    config = TrainConfig(steps=1, batch_size=2, n_samples=1, checkpoint_every=1)
    MaskTrainer(bridge, [data], train_config=config, checkpoint_dir=tmp_path, progress=False).train()
    path = tmp_path / CHECKPOINT_FILE
    tensors, metadata = read_safetensors(path, CHECKPOINT_FORMAT)
    for task in metadata["tasks"]:  # as written before model records held the config
        del task["mask"]["model"]["config"], task["fingerprint"]["model"]["config"]
    del metadata[CHECKSUM_FIELD]
    write_safetensors_atomically(path, tensors, metadata)

    longer = dataclasses.replace(config, steps=2)
    with pytest.warns(ModelConfigUnchecked, match="records no model config"):
        trainer = MaskTrainer(bridge, [data], train_config=longer, checkpoint_dir=tmp_path, progress=False)
    finished = trainer.train()["copy"]
    assert finished.origin == MaskOrigin.of(bridge)
    saved = save_masks(finished, tmp_path / "copy.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelConfigUnchecked)
        assert load_masks(saved, bridge).origin.model["config"] == MaskOrigin.of(bridge).model["config"]
        MaskTrainer(bridge, [data], train_config=longer, checkpoint_dir=tmp_path, progress=False)
