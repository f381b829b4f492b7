"""Resuming compares run fingerprints; a train setting added later reads as its old behaviour in older checkpoints."""

from __future__ import annotations

import dataclasses

import pytest

from modmask_lens.masks.config import TrainConfig
from modmask_lens.masks.run_fingerprint import RunMismatch, check_same_run


def fingerprint(config: TrainConfig, drop: tuple[str, ...] = ()) -> dict[str, object]:
    settings = {key: value for key, value in config.deciding_fields().items() if key not in drop}
    return {"data": "abc", "train_config": settings}


def test_a_checkpoint_written_before_loss_increase_per_resumes_per_token_only():
    old = fingerprint(TrainConfig(), drop=("loss_increase_per",))  # written before the setting existed
    check_same_run(old, fingerprint(TrainConfig(loss_increase_per="token")), "ckpt", "copy")
    with pytest.raises(RunMismatch, match="loss_increase_per='token', this run has loss_increase_per='example'"):
        check_same_run(old, fingerprint(TrainConfig(loss_increase_per="example")), "ckpt", "copy")


def test_any_other_setting_still_has_to_match():
    saved = fingerprint(TrainConfig())
    with pytest.raises(RunMismatch, match="trained with lr=0.05, this run has lr=0.01"):
        check_same_run(saved, fingerprint(dataclasses.replace(TrainConfig(), lr=0.01)), "ckpt", "copy")
