"""Fully sharded mask training in one process: the block-by-block sharded forward equals the plain masked forward,
checkpoints move between sharded and plain runs, and the model is untouched. (Two processes: test_distributed.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import VOCAB, assert_unchanged, boot_native, state_snapshot

from modmask_lens import CSORDAS_MASKS, CSORDAS_TRAINING, MaskConfig, MaskSet, MaskTrainer, SubtaskData
from modmask_lens.masks.apply import masked_call
from modmask_lens.masks.sampling import UniformNoise
from modmask_lens.masks.sharding import ShardedBridge, ShardedLogits, shard_bounds

# Fully sharded training runs Csordás's method only.
CONFIG = dataclasses.replace(CSORDAS_TRAINING, steps=4, batch_size=16, n_samples=4, lr=0.05, checkpoint_every=2)


def subtask(name: str = "copy") -> SubtaskData:
    input_ids = torch.randint(0, VOCAB, (32, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, -100)
    labels[:, 4:] = input_ids[:, 4:]
    return SubtaskData(name, input_ids, labels)


@pytest.mark.parametrize("numel", [1, 2, 7, 64, 65])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_bounds_tile_the_tensor_once(numel, world_size):
    covered = []
    for rank in range(world_size):
        start, end = shard_bounds(numel, rank, world_size)
        assert 0 <= end - start <= -(-numel // world_size)
        covered += range(start, end)
    assert covered == list(range(numel))


@pytest.mark.parametrize(
    ("granularity", "sampler"),
    [
        ("weight", "gumbel-sigmoid"),
        ("neuron", "gumbel-sigmoid"),
        ("head", "gumbel-sigmoid"),
        ("weight", "hard-concrete"),
    ],
)
def test_sharded_forward_and_gradients_equal_the_masked_forward(any_bridge, tokens, granularity, sampler):
    """Also with hard-concrete masks, which the sharded forward once sampled as Gumbel-sigmoid."""
    snapshot = state_snapshot(any_bridge)
    config = dataclasses.replace(CSORDAS_MASKS, granularity=granularity, sampler=sampler)
    masks = MaskSet.for_bridge(any_bridge, config)
    with torch.no_grad():  # logits near 0, so the sample keeps about half of each unit
        for logit in masks.logits.values():
            logit.copy_(torch.randn(logit.shape, generator=torch.Generator().manual_seed(logit.numel())))
    any_bridge.eval()
    expected = masked_call(
        any_bridge, masks.sample(1.0, UniformNoise(3)), type(any_bridge).forward.__get__(any_bridge), tokens
    )
    expected.square().mean().backward()
    shards = ShardedLogits(masks, "cpu")
    sharded = ShardedBridge(any_bridge)(shards, 1.0, UniformNoise(3), tokens)
    sharded.square().mean().backward()
    torch.testing.assert_close(sharded, expected, rtol=0, atol=1e-6)
    for name, logit in masks.logits.items():
        assert logit.grad.abs().sum() > 0, name
        torch.testing.assert_close(shards.shards[name].grad.view(logit.shape), logit.grad, rtol=1e-5, atol=1e-8)
    assert_unchanged(any_bridge, snapshot)
    assert all("forward" not in block.module.__dict__ for block in ShardedBridge(any_bridge).blocks)


def test_sharded_training_equals_plain_training(any_bridge):
    snapshot = state_snapshot(any_bridge)
    plain = MaskTrainer(any_bridge, [subtask()], CSORDAS_MASKS, CONFIG, progress=False).train()["copy"]
    sharded = MaskTrainer(any_bridge, [subtask()], CSORDAS_MASKS, CONFIG, progress=False, fully_shard=True).train()[
        "copy"
    ]
    for name, logit in plain.logits.items():
        assert not torch.equal(logit, torch.full_like(logit, plain.config.init_logit)), name
        torch.testing.assert_close(sharded.logits[name], logit, rtol=0, atol=1e-6)
    assert_unchanged(any_bridge, snapshot)


class Interrupted(Exception):
    pass


def interrupted_after_checkpoint(bridge, tmp_path, fully_shard: bool) -> None:
    """Train until the step after the first checkpoint, then fail while drawing that step's batch."""
    data = subtask()
    batch = data.batch

    def batch_or_interrupt(indices):
        if trainer.step == CONFIG.checkpoint_every:
            raise Interrupted
        return batch(indices)

    object.__setattr__(data, "batch", batch_or_interrupt)  # SubtaskData is frozen
    trainer = MaskTrainer(
        bridge, [data], CSORDAS_MASKS, CONFIG, checkpoint_dir=tmp_path, progress=False, fully_shard=fully_shard
    )
    with pytest.raises(Interrupted):
        trainer.train()


@pytest.mark.parametrize(
    ("first", "resumed"), [(True, False), (False, True)], ids=["sharded-then-plain", "plain-then-sharded"]
)
def test_a_checkpoint_resumes_across_sharding(gpt2_bridge, tmp_path, first, resumed):
    snapshot = state_snapshot(gpt2_bridge)
    uninterrupted = MaskTrainer(gpt2_bridge, [subtask()], CSORDAS_MASKS, CONFIG, progress=False).train()["copy"]
    interrupted_after_checkpoint(gpt2_bridge, tmp_path, fully_shard=first)
    trainer = MaskTrainer(
        gpt2_bridge, [subtask()], CSORDAS_MASKS, CONFIG, checkpoint_dir=tmp_path, progress=False, fully_shard=resumed
    )
    assert trainer.step == CONFIG.checkpoint_every
    finished = trainer.train()["copy"]
    for name, logit in uninterrupted.logits.items():
        torch.testing.assert_close(finished.logits[name], logit, rtol=0, atol=1e-6)
    assert_unchanged(gpt2_bridge, snapshot)


@pytest.mark.parametrize(
    ("masks", "training"),
    [
        (CSORDAS_MASKS, {"beta": None, "target_density": 0.1}),
        (CSORDAS_MASKS, {"beta": None, "max_loss_increase": 0.02}),
        (CSORDAS_MASKS, {"readout": "faithful"}),
        (MaskConfig(sampler="hard-concrete"), {}),
    ],
    ids=["target-density", "loss-constraint", "faithful-readout", "hard-concrete"],
)
def test_sharded_training_runs_csordas_method_only(gpt2_bridge, masks, training):
    config = dataclasses.replace(CSORDAS_TRAINING, steps=2, batch_size=8, n_samples=2, **training)
    with pytest.raises(ValueError, match="runs Csordás's method only.*pass CSORDAS_MASKS and CSORDAS_TRAINING"):
        MaskTrainer(gpt2_bridge, [subtask()], masks, config, fully_shard=True)


def test_a_device_without_fully_sharded_training_is_refused(gpt2_bridge):
    """``device`` places the shards only; without ``fully_shard`` it was ignored and the run stayed where it was."""
    with pytest.raises(ValueError, match="places the shards of fully sharded training only.*bridge.to"):
        MaskTrainer(gpt2_bridge, [subtask()], CSORDAS_MASKS, CSORDAS_TRAINING, device="cpu")


def test_an_error_inside_a_sharded_forward_leaves_the_model_as_it_was(gpt2_bridge, tokens):
    snapshot = state_snapshot(gpt2_bridge)
    sharded = ShardedBridge(gpt2_bridge)
    shards = ShardedLogits(MaskSet.for_bridge(gpt2_bridge), "cpu")
    with pytest.raises(IndexError):
        sharded(shards, 1.0, UniformNoise(0), tokens + VOCAB)  # token ids past the vocabulary
    assert all("forward" not in block.module.__dict__ for block in sharded.blocks)
    assert_unchanged(gpt2_bridge, snapshot)


def test_a_block_that_mixes_dtypes_is_sharded_alike_on_every_process(monkeypatch):
    """float32 norms in a bfloat16 model: each of 3 processes once cut its slice of a block as one flat tensor,
    float32 where the slice held a norm and bfloat16 where it did not, and the gather aborted (gloo: 'Received data
    size doesn't match expected size'). Each process now holds every dtype's slice in that dtype; the slices join
    into the parameters bit for bit."""
    bridge = boot_native().to(torch.bfloat16)
    for name, parameter in bridge.named_parameters():
        if ".ln" in name:
            parameter.data = parameter.data.float()
    snapshot = state_snapshot(bridge)
    world_size = 3
    ranks = []
    for rank in range(world_size):
        monkeypatch.setattr("modmask_lens.masks.sharding.world", lambda rank=rank: (rank, world_size))
        ranks.append(ShardedBridge(bridge).blocks)
    assert {tuple(block.numels) for block in ranks[0] if block.path.startswith("blocks.")} == {
        (torch.float32, torch.bfloat16)
    }
    for per_rank in zip(*ranks):
        first = per_rank[0]
        for dtype, numel in first.numels.items():
            slices = [block.weight_shards[dtype] for block in per_rank]
            assert all(piece.dtype == dtype for piece in slices), (first.path, dtype, [p.dtype for p in slices])
            joined = torch.cat(slices)
            parameters = [
                bridge.get_parameter(f"{first.path}.{name}").reshape(-1)
                for _, name, _, entry_dtype in first.entries
                if entry_dtype == dtype
            ]
            assert joined.numel() == numel
            assert torch.equal(joined, torch.cat(parameters))
    assert_unchanged(bridge, snapshot)


def _report_state_sizes(rank: int, store: str, out: str) -> None:
    """One of two gloo processes: train sharded for 2 steps, write how many elements this process holds."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    bridge = boot_native(gqa=True)
    trainer = MaskTrainer(
        bridge,
        [subtask()],
        CSORDAS_MASKS,
        dataclasses.replace(CSORDAS_TRAINING, steps=2, batch_size=8, n_samples=2),
        progress=False,
        fully_shard=True,
    )
    trainer.train()
    run = trainer.runs[0]
    held = {
        "weights": [
            (numel, block.weight_shards[dtype].numel())
            for block in trainer.sharded_bridge.blocks
            for dtype, numel in block.numels.items()
        ],
        "logits": [(unit.numel, run.shards.shards[unit.name].numel()) for unit in run.masks.units],
        "adam": [
            (unit.numel, sum(run.optimizer.state[shard][moment].numel() for moment in ("exp_avg", "exp_avg_sq")))
            for unit, shard in zip(run.masks.units, run.parameters())
        ],
    }
    torch.save(held, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_each_of_two_processes_holds_half_the_weights_logits_and_adam_state(tmp_path):
    torch.multiprocessing.spawn(_report_state_sizes, args=(str(tmp_path / "store"), str(tmp_path / "held")), nprocs=2)
    held = [torch.load(tmp_path / f"held.{rank}") for rank in range(2)]
    for rank, sizes in enumerate(held):
        for kind, per_tensor in sizes.items():
            for numel, kept in per_tensor:
                start, end = shard_bounds(numel, rank, 2)
                assert kept == (end - start) * (2 if kind == "adam" else 1), kind
    for kind in held[0]:  # the two halves make the whole
        assert [a + b for (_, a), (_, b) in zip(held[0][kind], held[1][kind])] == [
            numel * (2 if kind == "adam" else 1) for numel, _ in held[0][kind]
        ]
