"""Straight-through Gumbel-sigmoid mask samples (Csordás et al. 2021, ``framework/layers/gumbel_sigmoid.py``)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class _StraightThroughGumbelSigmoid(torch.autograd.Function):
    """Forward: the hard sample ``1[sigmoid((l + noise) / tau) > 0.5]``; backward: through the soft sigmoid.

    Equivalent to Csordás's ``hard + soft - soft.detach()`` but keeps one saved tensor instead of the autograd graph
    of five elementwise ops, which matters because the mask is as large as the model.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
        # logit(u) of u ~ U(0, 1) is Logistic(0, 1) noise, the difference of two Gumbels.
        scores = torch.logit(uniform).add_(logits)
        if temperature != 1.0:
            scores.div_(temperature)
        hard = (scores > 0).to(logits.dtype)
        soft = scores.sigmoid_()
        ctx.save_for_backward(soft.mul_(1.0 - soft).div_(temperature))  # d soft / d logits
        return hard

    @staticmethod
    def backward(ctx, grad_hard: Tensor) -> tuple[Tensor, None, None]:
        (soft_derivative,) = ctx.saved_tensors
        return grad_hard * soft_derivative, None, None


def sample_hard_mask(
    logits: Float[Tensor, "*shape"], temperature: float = 1.0, generator: torch.Generator | None = None
) -> Float[Tensor, "*shape"]:
    """One hard mask sample (values 0.0 / 1.0) whose gradient flows to ``logits`` through the soft sigmoid.

    Args:
        logits: mask logits, any shape.
        temperature: tau of the Gumbel-sigmoid (Csordás: 1).
        generator: source of the logistic noise, for reproducible samples.

    Returns:
        A tensor of ``logits``'s shape and dtype: 1.0 where ``logits + noise > 0``.

    Example:
        >>> logits = torch.full((3,), 2.0, requires_grad=True)
        >>> sample_hard_mask(logits, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3])
    """
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    return _StraightThroughGumbelSigmoid.apply(logits, uniform, temperature)
