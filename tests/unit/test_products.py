"""The fused training products (masks/products.py) against straightforward references: the same samples and the
same logit gradients as autograd through the formulas, for both samplers, also on fp16/bf16 weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.products import _FORWARDS, _FusedKernel, sample_product
from modmask_lens.masks.sampling import UniformNoise, uniform_from_bits
from modmask_lens.testing.tiny_models import tiny_bridge


def reference_sample(logits: torch.Tensor, uniform: torch.Tensor, sampler: str, temperature: float) -> torch.Tensor:
    """Csordás's ``hard + soft - soft.detach()`` and Louizos et al.'s eq. 10, autograd through every op."""
    noise = torch.log(uniform) - torch.log1p(-uniform)  # Logistic(0, 1)
    if sampler == "hard-concrete":
        soft = torch.sigmoid((logits + noise) / (2 / 3))
        return torch.clamp(soft * 1.2 - 0.1, 0.0, 1.0)
    soft = torch.sigmoid((logits + noise) / temperature)
    return (soft > 0.5).float() + soft - soft.detach()


@pytest.mark.parametrize(
    ("sampler", "temperature"), [("gumbel-sigmoid", 1.0), ("gumbel-sigmoid", 0.5), ("hard-concrete", 1.0)]
)
def test_product_and_logit_gradient_equal_the_reference(sampler, temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.empty(64, 33).uniform_(-4, 4, generator=generator)
    weight = torch.randn(64, 33, generator=generator)
    upstream = torch.randn(64, 33, generator=generator)

    ours_logits = logits.clone().requires_grad_(True)
    ours = sample_product(ours_logits, weight, sampler, temperature, UniformNoise(7))
    (ours * upstream).sum().backward()

    reference_logits = logits.clone().requires_grad_(True)
    uniform = UniformNoise(7).like(logits)  # the same draws
    reference = weight * reference_sample(reference_logits, uniform, sampler, temperature)
    (reference * upstream).sum().backward()

    torch.testing.assert_close(ours, reference.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_logits.grad, reference_logits.grad, rtol=1e-4, atol=1e-6)
    assert ours_logits.grad.abs().sum() > 0


def test_each_call_samples_at_its_own_temperature():
    """Temperatures one after another in one process, each call against the reference at its own: a kernel compiled
    at one temperature once computed wrong odds at the next (the float left symbolic), and below tau = 1/3 the
    clamped product form flipped samples."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, generator=generator) * 8
    weight = torch.randn(4096, generator=generator)
    upstream = torch.randn(4096, generator=generator)
    for temperature in (1.0, 0.5, 1 / 3, 0.05, 1.0):
        ours_logits = logits.clone().requires_grad_(True)
        ours = sample_product(ours_logits, weight, "gumbel-sigmoid", temperature, UniformNoise(3))
        (ours * upstream).sum().backward()
        reference_logits = logits.clone().requires_grad_(True)
        uniform = UniformNoise(3).like(logits)
        reference = weight * reference_sample(reference_logits, uniform, "gumbel-sigmoid", temperature)
        (reference * upstream).sum().backward()
        torch.testing.assert_close(ours, reference.detach(), rtol=1e-6, atol=1e-6, msg=f"tau {temperature}")
        torch.testing.assert_close(ours_logits.grad, reference_logits.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_keep_frequency_of_the_product_is_the_samplers(sampler):
    logits = torch.tensor([-2.0, 0.0, 2.0]).repeat(20000, 1)
    kept = (sample_product(logits, torch.ones_like(logits), sampler, 1.0, UniformNoise(1)) != 0).float().mean(dim=0)
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    shift = beta * torch.logit(torch.tensor(-gamma / (zeta - gamma))) if sampler == "hard-concrete" else 0.0
    torch.testing.assert_close(kept, torch.sigmoid(torch.tensor([-2.0, 0.0, 2.0]) - shift), atol=0.01, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_half_precision_weights_give_products_in_their_dtype_and_float32_gradients(dtype, sampler):
    generator = torch.Generator().manual_seed(1)
    logits = torch.empty(32, 16).uniform_(-3, 3, generator=generator).requires_grad_(True)
    weight = torch.randn(32, 16, generator=generator)
    product = sample_product(logits, weight.to(dtype), sampler, 1.0, UniformNoise(2))
    product.float().sum().backward()
    assert product.dtype == dtype and logits.grad.dtype == torch.float32

    full_logits = logits.detach().clone().requires_grad_(True)
    full = sample_product(full_logits, weight.to(dtype).float(), sampler, 1.0, UniformNoise(2))
    full.sum().backward()
    torch.testing.assert_close(product.float(), full.detach(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(logits.grad, full_logits.grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("granularity", ["weight", "neuron", "head"])
@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_mask_set_products_equal_weights_times_the_sample(granularity, sampler):
    bridge = tiny_bridge()
    config = MaskConfig(granularity=granularity, sampler=sampler, init_logit=0.5)
    ours, reference = MaskSet.for_bridge(bridge, config), MaskSet.for_bridge(bridge, config)
    weights = {member.path: bridge.get_parameter(member.path).detach() for member in ours.members}
    upstream = {
        path: torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) for path, weight in weights.items()
    }

    products = ours.sample_products(weights, 1.0, UniformNoise(11))
    sum((products[path] * upstream[path]).sum() for path in weights).backward()
    sample = reference.sample(1.0, UniformNoise(11))
    sum((weights[path] * sample[path] * upstream[path]).sum() for path in weights).backward()

    for path, weight in weights.items():
        torch.testing.assert_close(products[path], (weight * sample[path]).detach())
    for name in ours.logits:
        torch.testing.assert_close(ours.logits[name].grad, reference.logits[name].grad, rtol=1e-4, atol=1e-6)


def test_noise_is_numpys_float32_stream():
    drawn = UniformNoise(3).like(torch.empty(5, 7))
    expected = torch.from_numpy(np.random.default_rng(3).random((5, 7), dtype=np.float32))
    assert torch.equal(drawn, expected)


@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_extreme_logits_and_noise_give_finite_samples_and_gradients(sampler):
    """u = 0 (all-zero words), the largest u, and logits far beyond the kernels' clamp: the sample is the
    reference's and nothing is NaN."""
    bits = torch.tensor([0, -1, 0, -1, 1 << 8, -256], dtype=torch.int32)
    logits = torch.tensor([200.0, -200.0, -200.0, 200.0, 0.0, 0.0])
    arguments = (logits, torch.ones(6), bits) + ((1.0,) if sampler == "gumbel-sigmoid" else ())
    product, derivative = _FORWARDS[sampler](*arguments)
    uniform = uniform_from_bits(bits)
    expected = reference_sample(logits, uniform, sampler, 1.0).detach()
    torch.testing.assert_close(product, expected)
    assert torch.isfinite(derivative).all()


def test_a_kernel_that_does_not_compile_runs_eagerly_and_warns_once(monkeypatch):
    monkeypatch.setattr(_FusedKernel, "warned", False)
    kernel = _FusedKernel(lambda x: x * 2)

    def failing_compile(x):
        raise RuntimeError("no C++ compiler\nsecond line")

    kernel.compiled = failing_compile
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler\)"):
        assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))
        other_kernel = _FusedKernel(lambda x: x * 3)  # a second kernel failing alike (the backward) stays quiet
        other_kernel.compiled = failing_compile
        assert torch.equal(other_kernel(torch.ones(2)), torch.full((2,), 3.0))


def test_an_error_the_eager_kernel_raises_too_is_raised_and_the_kernel_stays_compiled(monkeypatch):
    monkeypatch.setattr(_FusedKernel, "warned", False)
    kernel = _FusedKernel(lambda x, y: x + y)

    def failing_compile(x, y):
        raise RuntimeError("compiled run failed")

    kernel.compiled = failing_compile
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="must match the size"):
            kernel(torch.ones(3), torch.ones(2))
    assert kernel.compiles
