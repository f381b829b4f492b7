"""Mask samples from logits: straight-through Gumbel-sigmoid (Csordás et al. 2021,
``framework/layers/gumbel_sigmoid.py``) and hard concrete (Louizos, Welling & Kingma 2018, the L0 relaxation that
Edge Pruning uses).

Both keep an element with a probability that grows with its logit, and both read out deterministically as
``logit > 0``. They differ in the gradient: straight-through passes the soft sigmoid's derivative through a hard 0/1
sample, while hard concrete samples values in [0, 1] (exactly 0 or 1 with positive probability) and differentiates
through them, so a pruned unit whose removal hurts still receives a gradient back towards being kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.core.profiling import profiled


class UniformNoise:
    """Seeded U(0, 1) noise for mask samples, drawn as random 32-bit words whose top 24 bits are the uniform value
    (:func:`uniform_from_bits`), so that a fused kernel can read 4 bytes per element and turn them into noise itself.

    On CPU the words are numpy's PCG64 output (about twice as fast as torch's mt19937; the noise is as large as the
    model, so this is a visible share of a mask step), and the uniform values equal numpy's own float32 draws from
    the same seed bit for bit (the first draw of a stream; after a draw of odd size numpy would use the unused half
    of its last 64-bit word, which this drops); on other devices the words come from ``torch.randint`` with a
    generator seeded alike.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._numpy = np.random.default_rng(seed)
        self._torch: torch.Generator | None = None

    @classmethod
    def fresh(cls) -> UniformNoise:
        """A stream with a random seed (from torch's global generator, so ``torch.manual_seed`` fixes it)."""
        return cls(int(torch.randint(2**62, ())))

    def substream(self, index: int) -> UniformNoise:
        """An independent stream, the ``index``-th child of this one (e.g. one per mask unit, so that any unit's
        noise can be drawn on its own, in any order)."""
        words = np.random.SeedSequence((self.seed, index)).generate_state(2, dtype=np.uint32)
        return UniformNoise((int(words[0]) << 31) ^ int(words[1]))

    def bits_like(self, tensor: Tensor) -> Int[Tensor, "*shape"]:
        """Random 32-bit words (int32) of ``tensor``'s shape, on its device."""
        with profiled("modmask.noise"):
            if tensor.device.type == "cpu":
                count = tensor.numel()
                words = self._numpy.bit_generator.random_raw((count + 1) // 2).view(np.int32)[:count]
                return torch.from_numpy(words).view(tensor.shape)
            if self._torch is None:
                self._torch = torch.Generator(device=tensor.device).manual_seed(self.seed)
            drawn = torch.randint(2**24, tensor.shape, generator=self._torch, device=tensor.device, dtype=torch.int32)
            return drawn << 8

    def like(self, tensor: Tensor) -> Tensor:
        """Noise of ``tensor``'s shape, dtype and device (:meth:`bits_like` as uniform values)."""
        uniform = uniform_from_bits(self.bits_like(tensor))
        return uniform.to(tensor.dtype)


def uniform_from_bits(bits: Tensor) -> Tensor:
    """U(0, 1) values (float32, multiples of 2^-24 in [0, 1)) from the top 24 bits of random int32 words, as numpy
    makes its float32 draws. Takes and returns tensors of any one shape; annotated ``Tensor`` because the fused
    kernels (masks/products.py) call it while being compiled, where the tests' runtime shape checks cannot follow."""
    return ((bits >> 8) & 0xFFFFFF).to(torch.float32) * 2.0**-24


class _StraightThroughGumbelSigmoid(torch.autograd.Function):
    """Forward: the hard sample ``1[sigmoid((l + noise) / tau) > 0.5]``; backward: through the soft sigmoid.

    Equivalent to Csordás's ``hard + soft - soft.detach()`` but keeps one saved tensor instead of the autograd graph
    of several elementwise ops, which matters because the mask is as large as the model.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
        # logit(u) of u ~ U(0, 1) is Logistic(0, 1) noise, the difference of two Gumbels.
        scores = torch.logit(uniform).add_(logits)
        if temperature != 1.0:
            scores.div_(temperature)
        hard = scores.sign().clamp_(min=0.0)  # 1.0 where scores > 0; cheaper than (scores > 0).float()
        soft = scores.sigmoid_()
        ctx.save_for_backward(soft.sub_(soft * soft).div_(temperature))  # d soft / d logits = s (1 - s) / tau
        return hard

    @staticmethod
    def backward(ctx, grad_hard: Tensor) -> tuple[Tensor, None, None]:
        (soft_derivative,) = ctx.saved_tensors
        return grad_hard * soft_derivative, None, None


def sample_hard_mask(
    logits: Float[Tensor, "*shape"], temperature: float = 1.0, noise: UniformNoise | None = None
) -> Float[Tensor, "*shape"]:
    """One hard mask sample (values 0.0 / 1.0) whose gradient flows to ``logits`` through the soft sigmoid.

    Args:
        logits: mask logits, any shape.
        temperature: tau of the Gumbel-sigmoid (Csordás: 1).
        noise: source of the uniform noise, for reproducible samples (default: unseeded).

    Returns:
        A tensor of ``logits``'s shape and dtype: 1.0 where ``(logits + logistic noise) / tau > 0``.

    Raises:
        ValueError: ``temperature`` is not a finite number > 0 (:func:`check_temperature`).

    Example:
        >>> logits = torch.full((3,), 2.0, requires_grad=True)
        >>> sample_hard_mask(logits, noise=UniformNoise(0)).shape
        torch.Size([3])
    """
    check_temperature(temperature)
    uniform = (noise or UniformNoise.fresh()).like(logits)
    return _StraightThroughGumbelSigmoid.apply(logits, uniform, temperature)


def check_temperature(temperature: float) -> None:
    """Refuse a Gumbel-sigmoid tau that is not a finite number > 0: at tau < 0 a sample keeps each element with
    probability ``1 - sigmoid(l)`` instead of ``sigmoid(l)`` (the sign of ``(l + noise) / tau`` flips), and at 0 the
    straight-through gradient ``s (1 - s) / tau`` is NaN.

    Raises:
        ValueError: naming the temperature and the usual value.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature {temperature} must be a finite number > 0 (the Gumbel-sigmoid's tau; Csordás use 1)"
        )


HARD_CONCRETE_STRETCH = (-0.1, 1.1)
"""(gamma, zeta) of Louizos et al.: the sigmoid is stretched to this interval, then clipped to [0, 1]."""
HARD_CONCRETE_TEMPERATURE = 2 / 3
"""beta of Louizos et al. (their default), used when a mask config's sampler is ``hard-concrete``."""


def sample_hard_concrete(logits: Float[Tensor, "*shape"], noise: UniformNoise | None = None) -> Float[Tensor, "*shape"]:
    """One hard-concrete sample in [0, 1] with ``logits`` as log-alpha (Louizos et al. 2018, eq. 10), differentiable.

    ``min(1, max(0, sigmoid((logit(u) + log_alpha) / beta) * (zeta - gamma) + gamma))`` for u ~ U(0, 1).

    Example:
        >>> sample = sample_hard_concrete(torch.full((3,), 2.0), noise=UniformNoise(0))
        >>> bool(((sample >= 0) & (sample <= 1)).all())
        True
    """
    gamma, zeta = HARD_CONCRETE_STRETCH
    uniform = (noise or UniformNoise.fresh()).like(logits)
    # Autograd through every op: the reference the fused training path (masks/products.py) is tested against.
    soft = torch.sigmoid((torch.logit(uniform) + logits) / HARD_CONCRETE_TEMPERATURE)
    return (soft * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def sample_mask(
    logits: Float[Tensor, "*shape"], sampler: str, temperature: float = 1.0, noise: UniformNoise | None = None
) -> Float[Tensor, "*shape"]:
    """One sample by ``sampler``: :func:`sample_hard_concrete` or :func:`sample_hard_mask` (``temperature`` is the
    Gumbel-sigmoid's tau; hard concrete uses its own beta)."""
    if sampler == "hard-concrete":
        return sample_hard_concrete(logits, noise)
    return sample_hard_mask(logits, temperature, noise)


def keep_probability(logits: Float[Tensor, "*shape"], sampler: str) -> Float[Tensor, "*shape"]:
    """Probability that a sample keeps each element (is nonzero): ``sigmoid(l)`` for Gumbel-sigmoid,
    ``sigmoid(l - beta * log(-gamma / zeta))`` for hard concrete (Louizos et al. 2018, eq. 12)."""
    if sampler == "hard-concrete":
        gamma, zeta = HARD_CONCRETE_STRETCH
        return torch.sigmoid(logits - HARD_CONCRETE_TEMPERATURE * math.log(-gamma / zeta))
    return torch.sigmoid(logits)
