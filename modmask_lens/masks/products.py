"""Masked weights for training: ``weight * mask sample`` drawn and multiplied in one autograd function per tensor.

Per-weight masks are as large as the model and a training step draws several samples. Through separate autograd
ops (noise, sampler, product) each sample keeps the 0/1 sample, the sampler's derivative and the product alive for
the backward, and costs about a dozen passes over model-sized tensors. The functions here draw the sample and
multiply in one forward, keep only the sampler's soft value for the backward (the product itself is kept by the
matmul that reads it, as before), and compute the logit gradient directly:
``d loss / d logit = (d loss / d masked weight) * weight * d sample / d logit``.

Samples equal :func:`~modmask_lens.masks.sampling.sample_hard_mask` and
:func:`~modmask_lens.masks.sampling.sample_hard_concrete` given the same noise, and so do the gradients up to float
rounding (tests/unit/test_products.py compares them). The product is computed in the weight's dtype (fp16 and bf16
models), the sample and the logit gradient in the logits' (float32).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from modmask_lens.core.profiling import profiled
from modmask_lens.masks.sampling import (
    HARD_CONCRETE_STRETCH,
    HARD_CONCRETE_TEMPERATURE,
    UniformNoise,
    logistic_scores,
    sample_mask,
)
from modmask_lens.masks.units import MaskUnit


class _GumbelSigmoidProduct(torch.autograd.Function):
    """Forward: ``weight`` where ``(logits + logistic noise) / tau > 0``, else 0. Backward: straight through the
    soft sigmoid, ``grad * weight * s (1 - s) / tau`` with ``s = sigmoid((logits + noise) / tau)``."""

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, noise: UniformNoise, temperature: float) -> Tensor:
        scores = logistic_scores(logits, noise)
        with profiled("modmask.sampler"):
            if temperature != 1.0:
                scores.div_(temperature)
            kept = scores > 0
        with profiled("modmask.product"):
            masked = weight * kept  # several times faster than torch.where on CPU; the weight's dtype
        with profiled("modmask.sampler"):
            ctx.save_for_backward(weight, scores.sigmoid_())
        ctx.temperature = temperature
        return masked

    @staticmethod
    def backward(ctx, grad_masked: Tensor) -> tuple[Tensor, None, None, None]:
        weight, soft = ctx.saved_tensors
        with profiled("modmask.product"):
            grad_sample = (grad_masked * weight).to(soft.dtype)
        with profiled("modmask.sampler"):  # in place: grad * s * (1 - s)
            grad_logits = torch.ops.aten.sigmoid_backward.grad_input(grad_sample, soft, grad_input=grad_sample)
            if ctx.temperature != 1.0:
                grad_logits.div_(ctx.temperature)
        return grad_logits, None, None, None


class _HardConcreteProduct(torch.autograd.Function):
    """Forward: ``weight * clamp(sigmoid((logits + noise) / beta) * (zeta - gamma) + gamma, 0, 1)``. Backward:
    ``grad * weight * d sample / d logits``, where the derivative (through the clamp, the stretch and the sigmoid)
    is computed in the forward and kept instead of the soft sample: it costs the same memory and makes the backward
    two passes instead of eight."""

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, noise: UniformNoise) -> Tensor:
        scores = logistic_scores(logits, noise)
        gamma, zeta = HARD_CONCRETE_STRETCH
        with profiled("modmask.sampler"):
            soft = scores.div_(HARD_CONCRETE_TEMPERATURE).sigmoid_()
            stretched = soft.mul(zeta - gamma).add_(gamma)
            sample = stretched.clamp(0.0, 1.0)
            # d sample / d logits = s (1 - s) (zeta - gamma) / beta inside [0, 1], 0 where the clamp cuts.
            inside = (stretched == sample).to(soft.dtype).mul_((zeta - gamma) / HARD_CONCRETE_TEMPERATURE)
            sample_derivative = torch.ops.aten.sigmoid_backward(inside, soft)
        with profiled("modmask.product"):
            masked = weight * sample.to(weight.dtype)
        ctx.save_for_backward(weight, sample_derivative)
        return masked

    @staticmethod
    def backward(ctx, grad_masked: Tensor) -> tuple[Tensor, None, None]:
        weight, sample_derivative = ctx.saved_tensors
        with profiled("modmask.product"):
            grad_sample = (grad_masked * weight).to(sample_derivative.dtype)
        with profiled("modmask.sampler"):
            return grad_sample.mul_(sample_derivative), None, None


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

    Example:
        >>> logits = torch.full((2, 3), 2.0, requires_grad=True)
        >>> sample_product(logits, torch.ones(2, 3), "gumbel-sigmoid", 1.0, UniformNoise(0)).shape
        torch.Size([2, 3])
    """
    if sampler == "hard-concrete":
        return _HardConcreteProduct.apply(logits, weight, noise)
    return _GumbelSigmoidProduct.apply(logits, weight, noise, temperature)


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
    first, *others = unit.members
    if not others and unit.shape == first.shape:
        return {first.path: sample_product(logits, weights[first.path], sampler, temperature, noise)}
    unit_sample = sample_mask(logits, sampler, temperature, noise)
    return {
        member.path: weights[member.path] * unit.expand(unit_sample, member).to(weights[member.path].dtype)
        for member in unit.members
    }
