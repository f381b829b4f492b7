"""The zoo trainer: reproducible length-bucketed epochs, the learning-rate schedule, and a tiny end-to-end run that
writes a folder the bridge boots, with a card."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformer_lens.model_bridge import TransformerBridge

from experiments.zoo.architectures import build_model
from experiments.zoo.modular_training import unwrapped_model, wrap_in_bridge
from experiments.zoo.recipes import Architecture, Recipe, recipe
from experiments.zoo.train import _epoch_batches, _learning_rate_factor, train
from modmask_lens.core.checkpoint import Checkpointer
from modmask_lens.modularity import (
    MODULAR_ADDITION,
    ClusterabilityConfig,
    clusterability,
    permute_units,
    unit_graph_of,
)
from modmask_lens.tasks.catalog import task_spec
from modmask_lens.zoo.cards import read_card

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
    tiny = dataclasses.replace(
        recipe("modadd"),
        architecture=Architecture("llama", 1, 32, 4, n_key_value_heads=2),
        steps=12,
        warmup_steps=4,
        eval_every=6,
        checkpoint_every=6,
    )
    card = train(tiny, tmp_path / "model", tmp_path / "checkpoints", "test run")
    assert read_card(tmp_path / "model").to_markdown() == card.to_markdown()
    assert set(card.accuracies) == {"train/all", "test/all"}
    assert card.wall_time_s > 0 and card.torch_threads == 1
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "model"), device="cpu")
    assert bridge.cfg.n_layers == 1
    resumed = train(tiny, tmp_path / "again", tmp_path / "checkpoints", "test run")  # finished checkpoint: no steps
    assert resumed.accuracies == card.accuracies
    for other in (dataclasses.replace(tiny, warmup_steps=3), dataclasses.replace(tiny, steps=6)):
        with pytest.raises(ValueError, match="holds a run of 'modadd' at step 12, not of this recipe"):
            train(other, tmp_path / "other", tmp_path / "checkpoints", "test run")
    shorter = train(dataclasses.replace(tiny, steps=6), tmp_path / "short", tmp_path / "checkpoints", "", restart=True)
    assert shorter.recipe["steps"] == 6  # started over; the checkpoint is now the shorter run's
    with pytest.raises(ValueError, match="holds a run of 'modadd' at step 6"):
        train(tiny, tmp_path / "other", tmp_path / "checkpoints", "test run", restart=False)


class _Killed(Exception):
    """Stands for the process being killed right after a checkpoint."""


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, monkeypatch):
    tiny = dataclasses.replace(
        recipe("modadd"),
        architecture=Architecture("gpt2", 1, 32, 4),
        steps=12,
        warmup_steps=4,
        eval_every=12,
        checkpoint_every=6,
    )
    train(tiny, tmp_path / "uninterrupted", tmp_path / "uninterrupted-checkpoints", "test run")
    save = Checkpointer.save

    def save_then_die(self, tensors, metadata):
        save(self, tensors, metadata)
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(_Killed):
            train(tiny, tmp_path / "killed", tmp_path / "checkpoints", "test run")
    train(tiny, tmp_path / "resumed", tmp_path / "checkpoints", "test run")
    uninterrupted = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)


def _tiny_variant(family: str, **regulariser) -> Recipe:
    architecture = Architecture(family, 1, 32, 4, n_key_value_heads=2 if family == "llama" else None)
    return dataclasses.replace(
        recipe("modadd"),
        name=f"tiny-{family}",
        architecture=architecture,
        steps=24,
        warmup_steps=4,
        eval_every=12,
        checkpoint_every=12,
        **regulariser,
    )


def _mean_block_clusterability(directory) -> float:
    table = clusterability(TransformerBridge.boot_transformers(str(directory), device="cpu"), k=4, methods=("blocks",))
    return float(table["clusterability"].mean())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_modular_variants_train_through_a_bridge_and_save_the_plain_layout(tmp_path, family):
    plain = train(_tiny_variant(family), tmp_path / "plain", tmp_path / "plain-checkpoints", "test run")
    clustered = train(
        _tiny_variant(family, clusterability=ClusterabilityConfig(strength=20.0)),
        tmp_path / "clustered",
        tmp_path / "clustered-checkpoints",
        "test run",
    )
    bimt = dataclasses.replace(MODULAR_ADDITION, swap_every=6, top_k=8)
    swapped = train(_tiny_variant(family, bimt=bimt), tmp_path / "bimt", tmp_path / "bimt-checkpoints", "test run")
    assert clustered.recipe["clusterability"]["strength"] == 20.0 and swapped.recipe["bimt"]["swap_every"] == 6
    assert set(plain.accuracies) == set(clustered.accuracies) == set(swapped.accuracies)
    assert _mean_block_clusterability(tmp_path / "clustered") > _mean_block_clusterability(tmp_path / "plain") + 0.02
    resumed = train(_tiny_variant(family, bimt=bimt), tmp_path / "again", tmp_path / "bimt-checkpoints", "test run")
    assert resumed.accuracies == swapped.accuracies  # the wrapped model resumes from its own checkpoint


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_unwrapped_model_computes_what_the_wrapped_model_computes(family):
    variant = _tiny_variant(family)
    tokenizer = task_spec(variant.task).make_tokenizer()
    model = build_model(variant.architecture, tokenizer)
    bridge = wrap_in_bridge(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in bridge.parameters():  # through the bridge's names, views into fused tensors included
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        for axis in unit_graph_of(bridge).axes:
            permute_units(axis, torch.randperm(axis.n_units, generator=generator))
    tokens = torch.randint(3, len(tokenizer), (2, 7), generator=generator)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            unwrapped_model(model, variant, tokenizer)(tokens).logits, model(tokens).logits, rtol=0, atol=1e-5
        )
