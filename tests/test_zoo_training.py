"""The zoo trainer: reproducible length-bucketed epochs, the learning-rate schedule, and a tiny end-to-end run that
writes a folder the bridge boots, with a card."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from modmask_lens.zoo.cards import read_card
from modmask_lens.zoo.recipes import Architecture, recipe
from modmask_lens.zoo.train import _epoch_batches, _learning_rate_factor, train

torch.set_num_threads(1)


def test_an_epoch_visits_every_example_once_and_depends_only_on_seed_and_epoch():
    lengths = torch.randint(3, 40, (1_000,), generator=torch.Generator().manual_seed(0))
    batches = _epoch_batches(lengths, batch_size=32, seed=1, epoch=2)
    assert sorted(torch.cat(batches).tolist()) == list(range(1_000))
    assert all(torch.equal(a, b) for a, b in zip(batches, _epoch_batches(lengths, 32, seed=1, epoch=2)))
    assert not torch.equal(torch.cat(batches), torch.cat(_epoch_batches(lengths, 32, seed=1, epoch=3)))


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    scan_recipe = recipe("scan")
    assert _learning_rate_factor(0, scan_recipe) == pytest.approx(1 / scan_recipe.warmup_steps)
    assert _learning_rate_factor(scan_recipe.warmup_steps, scan_recipe) == pytest.approx(1.0)
    assert _learning_rate_factor(scan_recipe.steps, scan_recipe) == pytest.approx(0.0)


def test_tiny_training_run_writes_a_bootable_model_with_its_card(tmp_path):
    tiny = dataclasses.replace(recipe("modadd"), architecture=Architecture("llama", 1, 32, 4, n_key_value_heads=2),
                               steps=12, warmup_steps=4, eval_every=6, checkpoint_every=6)
    card = train(tiny, tmp_path / "model", tmp_path / "checkpoints", "test run")
    assert read_card(tmp_path / "model").to_markdown() == card.to_markdown()
    assert set(card.accuracies) == {"train/all", "test/all"}
    assert card.wall_time_s > 0 and card.torch_threads == 1
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "model"), device="cpu")
    assert bridge.cfg.n_layers == 1
    resumed = train(tiny, tmp_path / "again", tmp_path / "checkpoints", "test run")  # finished checkpoint: no steps
    assert resumed.accuracies == card.accuracies
