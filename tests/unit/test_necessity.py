"""The necessity term: the complement's loss, its cap and target, and the trainer's step, against independent
computations on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import boot_native

from modmask_lens import KLDivergence, MaskConfig, MaskSet, MaskTrainer, SubtaskData, TrainConfig, masked
from modmask_lens.core.random import step_generator, stream_seed
from modmask_lens.masks.necessity import (
    capped_loss_sum,
    complement_caps,
    complement_losses,
    empty_losses,
    necessity_target_sum,
)
from modmask_lens.masks.sampling import UniformNoise, keep_probability, sample_hard_concrete


@pytest.fixture(scope="module")
def bridge():
    return boot_native()


def last_token_data(vocab: int, n: int = 16, name: str = "last") -> SubtaskData:
    """Random 5-token prompts whose last token is the answer (labels only there)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(vocab, (n, 5), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = input_ids[:, -1]
    return SubtaskData(name, input_ids, labels)


def answer_loss_of(logits: torch.Tensor, data: SubtaskData) -> torch.Tensor:
    """Each example's cross-entropy of its last token, from the logits at the position before it."""
    return F.cross_entropy(logits[:, -2].float(), data.labels[:, -1], reduction="none")


def batch_of(data: SubtaskData):
    return data.examples(torch.arange(len(data)))


def test_complement_of_a_binary_sample_is_the_inverse_mask_which_keeps_norm_gains(bridge):
    data = last_token_data(bridge.cfg.d_vocab)
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="weight"), name="last")  # linear weights and norms
    generator = torch.Generator().manual_seed(2)
    binary = masks.binary_from(
        {unit.name: torch.rand(masks.logits[unit.name].shape, generator=generator) > 0.5 for unit in masks.units}
    )
    sample = {path: kept.float() for path, kept in binary.weight_masks().items()}
    losses = complement_losses(bridge, masks, sample, batch_of(data))
    with torch.no_grad(), masked(bridge, binary.inverse()):
        expected = answer_loss_of(bridge(data.input_ids), data)
    torch.testing.assert_close(losses.detach(), expected, rtol=1e-5, atol=1e-5)


def test_empty_losses_are_the_model_without_any_masked_weight(bridge):
    data = last_token_data(bridge.cfg.d_vocab)
    masks = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"), name="last")
    with torch.no_grad(), masked(bridge, masks.binary().inverse()):  # a fresh mask keeps every head
        expected = answer_loss_of(bridge(data.input_ids), data)
    torch.testing.assert_close(empty_losses(bridge, masks, batch_of(data)), expected, rtol=1e-5, atol=1e-5)


def test_cap_target_and_capped_sum_by_hand():
    full = torch.tensor([0.1, 3.0, 0.5])
    empty = torch.tensor([2.1, 2.0, 0.5])
    caps = complement_caps(full, empty)
    assert caps.tolist() == pytest.approx([2.1, 3.0, 0.5])
    # target: f + q (c - f) = 0.1 + 0.5 * 2.0, 3.0, 0.5
    assert float(necessity_target_sum(full, caps, 0.5)) == pytest.approx(1.1 + 3.0 + 0.5)
    complement = torch.tensor([5.0, 1.0, 0.2])
    assert float(capped_loss_sum(complement, caps)) == pytest.approx(2.1 + 1.0 + 0.2)


def test_settings_that_cannot_hold_are_refused(bridge):
    with pytest.raises(ValueError, match="max_loss_increase"):
        TrainConfig(complement_loss_fraction=0.5, max_loss_increase=None, beta=1e-4)
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            TrainConfig(complement_loss_fraction=fraction)
    with pytest.raises(ValueError, match="per-example answer loss"):
        MaskTrainer(
            bridge,
            [last_token_data(bridge.cfg.d_vocab)],
            train_config=TrainConfig(complement_loss_fraction=0.5),
            progress=False,
            objective=KLDivergence(),
        )


def test_step_adds_minus_mu_times_the_capped_complement_loss_and_raises_mu_by_its_shortfall(bridge):
    """One step at head granularity with lambda and mu set by hand: the logits' gradient equals one computed here
    from the same hard-concrete sample, with the complement built per head, and mu moves by lr times the
    shortfall."""
    data = last_token_data(bridge.cfg.d_vocab, n=8)
    config = TrainConfig(
        steps=1, batch_size=8, n_samples=1, complement_loss_fraction=0.9, grad_clip=1e9, lagrangian_lr=0.1
    )
    head_masks = MaskConfig(granularity="head", sampler="hard-concrete")  # the pathwise gradient computed here
    trainer = MaskTrainer(bridge, [data], head_masks, config, progress=False)
    run = trainer.runs[0]
    with torch.no_grad():
        for logit in run.masks.logits.values():
            logit.copy_(torch.linspace(-1.0, 3.0, logit.numel()).reshape(logit.shape))
    run.multipliers = torch.tensor([0.7, 1.3])
    logits = {name: logit.detach().clone().requires_grad_(True) for name, logit in run.masks.logits.items()}

    indices = torch.randint(len(data), (8,), generator=step_generator(0, 0, "last"))
    batch = data.examples(indices)
    noise = UniformNoise(stream_seed(0, 0, "last"))
    samples = {}  # head-sliced masks, built here from the unit's sample and the member's layout
    for index, unit in enumerate(run.masks.units):
        unit_sample = sample_hard_concrete(logits[unit.name], noise.substream(index))
        for member in unit.members:
            samples[member.path] = unit.expand(unit_sample, member)
    with torch.no_grad():
        full = answer_loss_of(bridge(batch.input_ids), batch)
        every_head = MaskSet.for_bridge(bridge, MaskConfig(granularity="head"), name="all").binary()
        with masked(bridge, every_head.inverse()):
            empty = answer_loss_of(bridge(batch.input_ids), batch)
    with masked(bridge, samples):
        kept_loss = answer_loss_of(bridge(batch.input_ids), batch).sum()
    with masked(bridge, {path: 1 - mask for path, mask in samples.items()}):  # head masks touch only W_O
        complement = answer_loss_of(bridge(batch.input_ids), batch)
    caps = torch.maximum(full, empty)
    assert (complement > caps).any() and (complement < caps).any()  # the cap binds on some examples, not all
    capped = torch.minimum(complement, caps).sum()
    kept = torch.stack([keep_probability(logits[unit.name], "hard-concrete").sum() for unit in run.masks.units])
    density = kept.sum() / sum(logit.numel() for logit in logits.values())  # every head masks equally many weights
    (density + 0.7 * kept_loss / 8 - 1.3 * capped / 8).backward()

    trainer._train_step(run)

    for name, logit in run.masks.logits.items():
        torch.testing.assert_close(logit.grad, logits[name].grad, rtol=1e-4, atol=1e-6)
    shortfall = float((full + 0.9 * (caps - full)).sum() - capped.detach()) / 8
    assert float(run.multipliers[1]) == pytest.approx(max(0.0, 1.3 + 0.1 * shortfall), rel=1e-4)
    assert run.metrics["complement_loss"] == pytest.approx(float(capped.detach()) / 8, rel=1e-4)
