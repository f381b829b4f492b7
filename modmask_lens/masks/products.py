"""Masked weights for training: ``weight * mask sample`` drawn and multiplied in one fused kernel per tensor.

Per-weight masks are as large as the model and a training step draws several samples. Through separate autograd
ops (noise, sampler, product) each sample keeps the 0/1 sample, the sampler's derivative and the product alive for
the backward, and costs about a dozen passes over model-sized tensors. Here one autograd function per tensor and
sample draws the uniform noise, then runs one elementwise kernel that computes the sample, the product and the
sample's derivative times the weight in a single pass (it keeps only that for the backward; the product itself is
kept by the matmul that reads it), and its backward is a second one-pass kernel:
``d loss / d logit = (d loss / d masked weight) * (weight * d sample / d logit)``.

The kernels are compiled with ``torch.compile`` (on CPU inductor writes one vectorised C++ loop for each; about
20 s the first time in a process, then cached on disk; again for each new rank, dtype or memory layout of the
weights and each new temperature). Where compiling fails (no C++ compiler, an unsupported platform) they run eagerly,
with the same results up to float rounding, and warn once; ``TORCH_COMPILE_DISABLE=1`` chooses that path. Eagerly
they are slower than the autograd functions they replaced: on one 768 x 3072 weight, forward and backward, 1 thread,
2.5x for hard concrete and 1.6x for Gumbel-sigmoid (compiled: 0.46x and 0.55x). ``benchmarks/bench_scaling.py
--unfused`` compares the compiled kernels with sampling first and multiplying through autograd.

Samples equal :func:`~modmask_lens.masks.sampling.sample_hard_mask` and
:func:`~modmask_lens.masks.sampling.sample_hard_concrete` given the same noise, and so do the gradients up to float
rounding (tests/unit/test_products.py compares them). The product is computed in the weight's dtype (fp16 and bf16
models), the sample and the logit gradient in the logits' (float32). Compiled, a hard-concrete product on fp16 or
bf16 weights is rounded once, not after the sample too as eagerly: about 8 % of its elements then differ by one unit
in the last place from the eager run's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from modmask_lens.core.profiling import profiled
from modmask_lens.masks.sampling import (
    HARD_CONCRETE_STRETCH,
    HARD_CONCRETE_TEMPERATURE,
    UniformNoise,
    check_temperature,
    sample_mask,
    uniform_from_bits,
)
from modmask_lens.masks.units import MaskUnit


class _FusedKernel:
    """An elementwise function of tensors of one shape, compiled on first use (with dynamic sizes: one compiled
    kernel serves every tensor of a rank, dtype and layout, at one temperature); run eagerly (warning once) where
    compiling fails.

    The kernels below take and return tensors of one shape (``*shape``, the masked weight's) and are annotated
    ``Tensor``, not with jaxtyping shapes: the runtime shape checks that the tests install cannot trace symbolic
    sizes, so a shape-annotated kernel would never compile under test."""

    warned = False
    """Whether a kernel of this process has warned (the forward and backward kernels fail alike: one warning)."""

    def __init__(self, function: Callable[..., tuple[Tensor, ...] | Tensor]):
        self.function = function
        self.compiled = torch.compile(function, dynamic=True)
        self.compiles = True

    def __call__(self, *arguments):
        if self.compiles:
            try:
                # Float arguments (the temperature) are compiled in as constants, one kernel per value: left
                # symbolic, torch 2.13's inductor reuses a kernel compiled for one temperature at another and
                # computes wrong odds. Each rank, dtype, layout and temperature is a kernel of its own, more than
                # dynamo's default limit of 8 in a process that trains several (past it, calls run eagerly).
                with torch._dynamo.config.patch(specialize_float=True, recompile_limit=64):
                    return self.compiled(*arguments)
            except Exception as error:  # noqa: BLE001 - told from an error of the inputs by the eager run below
                # An error the eager run raises too (bad inputs, out of memory) is raised from there and leaves the
                # kernel compiled; only what fails compiled alone switches to eager, for good and with a warning.
                result = self.function(*arguments)
                self.compiles = False
                if not _FusedKernel.warned:
                    _FusedKernel.warned = True
                    warnings.warn(
                        f"mask sampling runs unfused and slower: torch.compile failed ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); install a C++ compiler to fuse it, "
                        "or set TORCH_COMPILE_DISABLE=1 to run unfused without this warning",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                return result
        return self.function(*arguments)


def _noise_odds(bits: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """``exp(-(logits + logit(u)) / tau)`` for the uniform noise ``u`` in ``bits``: the soft sample is
    ``1 / (1 + odds)``, and it is kept where ``odds < 1``. At tau = 1 (Csordás's Gumbel-sigmoid) and tau = 2/3
    (hard concrete's beta) written as ``exp(-logits / tau) * r^(1 / tau)`` with ``r = (1 - u) / u``, without a
    logarithm (about twice as fast in the kernel as ``sigmoid((logits + logit(u)) / tau)``, equal up to float
    rounding); at other temperatures as ``exp((log(r) - logits) / tau)``.

    In the product form the logits enter clamped to ``|logits / tau| <= 50`` so that ``odds`` is never ``0 * inf``;
    as ``|logit(u) / tau| <= 25`` at these two temperatures, the sample is the same beyond that (every noise value
    but ``u = 0`` keeps or drops the element alike), and neither factor overflows. At smaller temperatures the
    clamp and the overflow of ``r^(1 / tau)`` would flip samples (at tau 0.1, 0.2 to 0.6 % of them for logits of
    standard deviation 5 to 60), hence the logarithm there."""
    uniform = uniform_from_bits(bits)
    ratio = (1 - uniform) / uniform  # exp(-logit(u)); inf where u = 0 (then the sample is 0, as with logit(0))
    exponent = 1 / temperature
    if exponent == 1.0:
        ratio_power = ratio
    elif exponent == 1.5:  # hard concrete's beta = 2/3
        ratio_power = ratio * torch.sqrt(ratio)
    else:
        return torch.exp((torch.log(ratio) - logits) / temperature)
    return torch.exp(-(logits / temperature).clamp(-50.0, 50.0)) * ratio_power


def _gumbel_sigmoid_forward(logits: Tensor, weight: Tensor, bits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``weight`` where ``(logits + logit(u)) / tau > 0`` else 0, and ``weight * d soft / d logits`` (float32) with
    ``d soft / d logits = s (1 - s) / tau`` of the soft sample ``s = sigmoid((logits + logit(u)) / tau)`` that the
    straight-through backward uses."""
    odds = _noise_odds(bits, logits, temperature)
    soft = 1 / (1 + odds)
    return weight * (odds < 1).to(weight.dtype), weight.to(soft.dtype) * (soft * (1 - soft) / temperature)


def _hard_concrete_forward(logits: Tensor, weight: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """``weight * clamp(sigmoid((logits + logit(u)) / beta) * (zeta - gamma) + gamma, 0, 1)`` and ``weight`` times
    the sample's derivative in the logits (float32): ``s (1 - s) (zeta - gamma) / beta`` inside [0, 1], 0 where the
    clamp cuts."""
    gamma, zeta = HARD_CONCRETE_STRETCH
    soft = 1 / (1 + _noise_odds(bits, logits, HARD_CONCRETE_TEMPERATURE))
    stretched = soft * (zeta - gamma) + gamma
    sample = stretched.clamp(0.0, 1.0)
    derivative = torch.where(stretched == sample, soft * (1 - soft) * ((zeta - gamma) / HARD_CONCRETE_TEMPERATURE), 0.0)
    return weight * sample.to(weight.dtype), weight.to(derivative.dtype) * derivative


def _logit_gradient(grad_masked: Tensor, weighted_derivative: Tensor) -> Tensor:
    """``(d loss / d masked weight) * weight * d sample / d logits``, in the weighted derivative's dtype (float32)."""
    return grad_masked.to(weighted_derivative.dtype) * weighted_derivative


_FORWARDS = {
    "gumbel-sigmoid": _FusedKernel(_gumbel_sigmoid_forward),
    "hard-concrete": _FusedKernel(_hard_concrete_forward),
}
_BACKWARD = _FusedKernel(_logit_gradient)


class _SampledProduct(torch.autograd.Function):
    """Forward: ``weight * sample`` of one mask sample (either sampler), by one fused kernel. Backward: the logit
    gradient by a second one (straight through the soft sigmoid for Gumbel-sigmoid, through the clamp, stretch and
    sigmoid for hard concrete)."""

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, noise: UniformNoise, sampler: str, temperature: float) -> Tensor:
        arguments = (logits, weight, noise.bits_like(logits))
        if sampler == "gumbel-sigmoid":
            arguments += (temperature,)
        with profiled("modmask.sampler"):
            masked, weighted_derivative = _FORWARDS[sampler](*arguments)
        ctx.save_for_backward(weighted_derivative)
        return masked

    @staticmethod
    def backward(ctx, grad_masked: Tensor) -> tuple[Tensor, None, None, None, None]:
        (weighted_derivative,) = ctx.saved_tensors
        with profiled("modmask.sampler"):
            grad_logits = _BACKWARD(grad_masked, weighted_derivative)
        return grad_logits, None, None, None, None


def sample_product(
    logits: Float[Tensor, "*shape"],
    weight: Float[Tensor, "*shape"],
    sampler: str,
    temperature: float,
    noise: UniformNoise,
) -> Float[Tensor, "*shape"]:
    """``weight * sample`` for one mask sample of per-element ``logits`` (same shape as ``weight``), differentiable
    in ``logits``.

    Args:
        logits: mask logits (float32), one per element of ``weight``.
        weight: the frozen weight (any float dtype; the product has its dtype).
        sampler: ``gumbel-sigmoid`` (straight-through, ``temperature`` is its tau) or ``hard-concrete`` (beta 2/3).
        temperature: the Gumbel-sigmoid's tau.
        noise: this sample's uniform noise, drawn as :func:`~modmask_lens.masks.sampling.sample_hard_mask` does.

    Raises:
        ValueError: a Gumbel-sigmoid ``temperature`` that is not a finite number > 0
            (:func:`~modmask_lens.masks.sampling.check_temperature`).

    Example:
        >>> logits = torch.full((2, 3), 2.0, requires_grad=True)
        >>> sample_product(logits, torch.ones(2, 3), "gumbel-sigmoid", 1.0, UniformNoise(0)).shape
        torch.Size([2, 3])
    """
    if sampler == "gumbel-sigmoid":
        check_temperature(temperature)
    return _SampledProduct.apply(logits, weight, noise, sampler, temperature)


def unit_products(
    unit: MaskUnit,
    logits: Float[Tensor, "*unit_shape"],
    weights: Mapping[str, Tensor],
    sampler: str,
    temperature: float,
    noise: UniformNoise,
) -> dict[str, Tensor]:
    """``weight * mask`` for every member of one unit (bridge parameter path -> product in the weight's dtype) from
    one sample of the unit's ``logits``: fused (:func:`sample_product`) for a per-element unit, else the sample
    (:func:`~modmask_lens.masks.sampling.sample_mask`, the same noise) expanded onto each member.

    Args:
        weights: bridge parameter path -> the frozen weight, for every member of ``unit``.
    """
    if unit.per_element:
        path = unit.members[0].path
        return {path: sample_product(logits, weights[path], sampler, temperature, noise)}
    unit_sample = sample_mask(logits, sampler, temperature, noise)
    return {
        member.path: weights[member.path] * unit.expand(unit_sample, member).to(weights[member.path].dtype)
        for member in unit.members
    }
