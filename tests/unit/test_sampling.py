"""The straight-through Gumbel-sigmoid sampler against Csordás's formula, computed independently."""

from __future__ import annotations

import pytest
import torch

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.masks.products import sample_product
from modmask_lens.masks.sampling import (
    UniformNoise,
    _StraightThroughGumbelSigmoid,
    keep_probability,
    sample_hard_concrete,
    sample_hard_mask,
)
from modmask_lens.testing.tiny_models import tiny_bridge


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_and_gradient_equal_csordas_reference(temperature):
    logits = torch.linspace(-4, 4, 101)
    uniform = torch.rand(101, generator=torch.Generator().manual_seed(0)).clamp(1e-6, 1 - 1e-6)
    ours_logits = logits.clone().requires_grad_(True)
    ours = _StraightThroughGumbelSigmoid.apply(ours_logits, uniform, temperature)
    weights = torch.randn(101, generator=torch.Generator().manual_seed(1))  # not the global generator: order-free
    (ours * weights).sum().backward()

    reference_logits = logits.clone().requires_grad_(True)
    noise = torch.log(uniform) - torch.log(1 - uniform)  # Logistic(0, 1)
    soft = torch.sigmoid((reference_logits + noise) / temperature)
    reference = (soft > 0.5).float() + soft - soft.detach()
    (reference * weights).sum().backward()

    assert torch.equal(ours, (soft > 0.5).float())
    torch.testing.assert_close(ours_logits.grad, reference_logits.grad, rtol=1e-5, atol=1e-6)  # float32 rounding


def test_keep_frequency_is_sigmoid_of_the_logit():
    logits = torch.tensor([-2.0, 0.0, 2.0]).repeat(20000, 1)
    kept = sample_hard_mask(logits, noise=UniformNoise(0)).mean(dim=0)
    torch.testing.assert_close(kept, torch.sigmoid(torch.tensor([-2.0, 0.0, 2.0])), atol=0.01, rtol=0)


def test_same_seed_same_sample():
    logits = torch.zeros(1000)
    assert torch.equal(sample_hard_mask(logits, noise=UniformNoise(5)), sample_hard_mask(logits, noise=UniformNoise(5)))
    assert not torch.equal(
        sample_hard_mask(logits, noise=UniformNoise(5)), sample_hard_mask(logits, noise=UniformNoise(6))
    )


def test_hard_concrete_keep_and_full_probabilities_match_louizos_closed_forms():
    # z > 0 iff sigmoid((logit(u) + l) / beta) > -gamma / (zeta - gamma);
    # z = 1 iff it is >= (1 - gamma) / (zeta - gamma).
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    values = torch.tensor([-2.0, 0.0, 2.0])
    samples = sample_hard_concrete(values.repeat(40000, 1), noise=UniformNoise(3))
    nonzero = torch.sigmoid(values - beta * torch.logit(torch.tensor(-gamma / (zeta - gamma))))
    one = torch.sigmoid(values - beta * torch.logit(torch.tensor((1 - gamma) / (zeta - gamma))))
    torch.testing.assert_close((samples > 0).float().mean(dim=0), nonzero, atol=0.01, rtol=0)
    torch.testing.assert_close((samples == 1).float().mean(dim=0), one, atol=0.01, rtol=0)
    torch.testing.assert_close(keep_probability(values, "hard-concrete"), nonzero)
    assert bool(((samples >= 0) & (samples <= 1)).all())


def test_hard_concrete_passes_gradient_where_the_sample_lies_inside_zero_one():
    logits = torch.zeros(2000, requires_grad=True)
    samples = sample_hard_concrete(logits, noise=UniformNoise(4))
    samples.sum().backward()
    inside = (samples > 0) & (samples < 1)
    assert bool((logits.grad[inside] > 0).all()) and bool((logits.grad[~inside] == 0).all())
    assert inside.float().mean() > 0.5


@pytest.mark.parametrize("temperature", [-1.0, 0.0, float("inf"), float("nan")])
def test_a_temperature_not_finite_and_positive_is_refused_by_every_gumbel_sigmoid_sample(temperature):
    """Such a tau used to be taken silently: at -1 the samples of logit 2 kept 0.12 of the elements (1 - sigmoid(2))
    instead of 0.88, the sign of ``(l + noise) / tau`` flipped; at 0 the straight-through gradient was NaN; at inf
    nothing was kept."""
    logits = torch.full((1000,), 2.0, requires_grad=True)
    refused = f"temperature {temperature} must be a finite number > 0"
    with pytest.raises(ValueError, match=refused):
        sample_hard_mask(logits, temperature, UniformNoise(0))
    with pytest.raises(ValueError, match=refused):
        sample_product(logits, torch.ones(1000), "gumbel-sigmoid", temperature, UniformNoise(0))
    mask = MaskSet.for_bridge(tiny_bridge(), MaskConfig(granularity="neuron", sampler="gumbel-sigmoid"))
    with pytest.raises(ValueError, match=refused):
        mask.sample(temperature, UniformNoise(0))
