"""Seed stability refuses what it cannot compare before it trains."""

from __future__ import annotations

import pytest
import torch

import modmask_lens.analysis.stability
from modmask_lens.analysis import seed_stability
from modmask_lens.core.data import SubtaskData
from modmask_lens.testing.tiny_models import tiny_bridge


@pytest.mark.parametrize("seeds", [(), (0,)])
def test_fewer_than_two_seeds_are_refused_before_any_training(monkeypatch, seeds):
    def never(*arguments, **options):
        pytest.fail("seed_stability trained a mask before refusing the seeds")

    monkeypatch.setattr(modmask_lens.analysis.stability, "train_masks", never)
    copy = SubtaskData("copy", torch.tensor([[1, 2, 2]]), torch.tensor([[-100, -100, 2]]))
    with pytest.raises(ValueError, match=r"two or more seeds; got seeds=\(0?,?\)"):
        seed_stability(tiny_bridge(), copy, seeds=seeds)
