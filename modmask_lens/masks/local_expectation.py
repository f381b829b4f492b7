"""The exact gradient of Bernoulli masks, unit by unit: the local-expectation estimator (Titsias & Lázaro-Gredilla
2015, "Local Expectation Gradients for Black Box Variational Inference").

A mask whose units are kept independently with probability ``p_i = sigmoid(logit_i)`` has the expected loss
``E[L(z)]``, whose gradient is, for each unit i,

    d E[L] / d logit_i = p_i (1 - p_i) E_z[L(z with z_i = 1) - L(z with z_i = 0)],

the cost of removing unit i from the sampled rest of the mask, times the sigmoid's derivative. One sample z of the
other units gives an unbiased estimate of it, at the price of one extra copy of the examples per unit (each unit
flipped in turn), run as one batch, and no backward. That is affordable when the units are few (the heads of a
model: tens to a few hundred), never for neurons or weights.

Straight-through Gumbel-sigmoid and hard-concrete gradients are the loss's slope at the sample instead. At
initialisation nearly every head is kept, so they measure each head's slope at "fully on", which on a model near its
loss floor says little about what removing the head costs (docs/concepts.md#head-masks measures both).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import Batch
from modmask_lens.masks.head_outputs import HeadOutput, head_outputs
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import Objective, Outputs, Reference, Score, model_outputs
from modmask_lens.masks.sampling import UniformNoise, sample_mask

VARIANT_EXAMPLES = 1024
"""At most this many examples (mask variants times the chunk's examples) per forward of the flipped variants."""


def local_expectation_step(
    bridge: Bridge,
    mask_set: MaskSet,
    objective: Objective,
    batch: Batch,
    reference: Reference | None,
    noise: UniformNoise,
    weight: float,
    estimated: Int[Tensor, " estimated"] | None = None,
    scale: float = 1.0,
) -> Score:
    """Score one Bernoulli head-mask sample on ``batch`` and add ``weight`` times each logit's local-expectation
    gradient of the objective's loss sum to the logit's ``.grad``.

    The sample is the one :meth:`MaskSet.sample` draws from ``noise`` (a Gumbel-sigmoid sample is 0 or 1, kept with
    probability ``sigmoid(logit)``). Only the logits ``estimated`` (indices in model order; default all) get a
    gradient, each scaled by ``scale``: a training step that estimates a random share of the heads, split among its
    chunks (:func:`heads_to_estimate`), stays unbiased for the whole batch's gradient at that share of the cost. A
    head is removed by zeroing its ``hook_z`` (the same as zeroing its ``W_O`` slice, and with it its
    ``W_Q``/``W_K``/``W_V`` slices: a head that writes nothing), so the sample and its flipped variants run as one
    batch of ``1 + len(estimated)`` copies of ``batch`` (in forwards of at most :data:`VARIANT_EXAMPLES` examples),
    under ``no_grad``.

    Args:
        bridge: the frozen model.
        mask_set: a head mask (``granularity="head"``) whose logits receive the gradient.
        objective: scores the masked model's outputs (its loss sum is the L above).
        batch: the examples the sample runs on.
        reference: the full model's reference on ``batch``, when the objective compares with it.
        noise: the sample's noise (unit i reads ``noise.substream(i)``, as :meth:`MaskSet.sample`).
        weight: the factor of the loss sum in the trained loss (e.g. ``1 / answer tokens``).
        estimated: the logits (indices in model order) this call estimates; ``None``: all of them.
        scale: each estimate's factor (1 / the probability that the step estimates a given logit on this batch).

    Returns:
        The sampled mask's score (no autograd graph).
    """
    logits = torch.cat([mask_set.logits[unit.name].detach().flatten() for unit in mask_set.units])
    drawn = torch.cat(
        [
            sample_mask(mask_set.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, noise.substream(index)).flatten()
            for index, unit in enumerate(mask_set.units)
        ]
    )
    if estimated is None:
        estimated = torch.arange(logits.numel())
    estimated = estimated.to(logits.device)
    variants = drawn.expand(1 + estimated.numel(), -1).clone()  # the sample, then each estimated head flipped
    variants[torch.arange(1, variants.shape[0]), estimated] = 1.0 - drawn[estimated]
    sampled, losses = _variant_losses(bridge, mask_set, objective, batch, reference, variants)
    flipped = losses[1:]
    removal_cost = torch.where(drawn[estimated] > 0, flipped - losses[0], losses[0] - flipped)
    keep = torch.sigmoid(logits[estimated])
    gradient = torch.zeros_like(logits)
    gradient[estimated] = -weight * scale * keep * (1 - keep) * removal_cost
    offset = 0
    for unit in mask_set.units:
        own = mask_set.logits[unit.name]
        part = gradient[offset : offset + own.numel()].view_as(own)
        own.grad = part if own.grad is None else own.grad + part
        offset += own.numel()
    return sampled


def heads_to_estimate(
    n_heads: int, per_step: int | None, chunk_sizes: list[int], generator: torch.Generator
) -> tuple[list[Int[Tensor, " estimated"]], list[float]]:
    """Which heads each chunk of a step estimates (chunk k holds ``chunk_sizes[k]`` of the batch's examples), and each
    chunk's factor that keeps the estimates unbiased for the whole batch's gradient.

    ``drawn = min(per_step, n_heads)`` heads (every head when ``per_step`` is ``None``) are drawn without replacement
    from ``generator`` and dealt to the chunks in a random order of the chunks, so each chunk estimates about
    ``drawn / n_chunks`` heads on its own examples and sample, and no chunk is favoured when ``drawn`` is not a
    multiple of the chunks. A head is then estimated in chunk k with probability ``drawn / (n_heads * n_chunks)``,
    and chunk k's estimate is the gradient of chunk k's own loss sum; every chunk's factor is the inverse of that
    probability, ``n_chunks * n_heads / drawn``, so the sum over chunks is unbiased for the whole batch's gradient
    whatever the chunks' sizes. A step of a Bernoulli
    head mask costs about ``1 + drawn / n_chunks`` forwards of its batch (no backward), so bounding ``per_step``
    bounds the cost whatever the number of heads.

    >>> chunks, scales = heads_to_estimate(6, 4, [2, 2], torch.Generator().manual_seed(0))
    >>> sorted(torch.cat(chunks).tolist()) == sorted(set(torch.cat(chunks).tolist())), len(torch.cat(chunks)), scales
    (True, 4, [3.0, 3.0])
    """
    n_chunks = len(chunk_sizes)
    drawn = n_heads if per_step is None else min(per_step, n_heads)
    order = torch.randperm(n_heads, generator=generator)[:drawn]
    chunk_order = torch.randperm(n_chunks, generator=generator)
    dealt = [order[position::n_chunks] for position in range(n_chunks)]  # the k-th chunk in chunk_order gets dealt[k]
    chunks = [dealt[int(position)] for position in torch.argsort(chunk_order)]
    share = n_heads / max(drawn, 1)
    # Chunk k's estimate of a head is the gradient of chunk k's own loss sum; the head lands in chunk k with
    # probability drawn / (n_heads * n_chunks), so the factor n_chunks * n_heads / drawn makes the sum over chunks an
    # unbiased estimate of the whole batch's gradient, whatever the chunks' sizes (a factor batch / size would weight
    # each chunk's examples by the inverse of its size: unbiased over random batches only, not for this batch).
    return chunks, [share * n_chunks for _ in chunk_sizes]


def _variant_losses(
    bridge: Bridge,
    mask_set: MaskSet,
    objective: Objective,
    batch: Batch,
    reference: Reference | None,
    variants: Float[Tensor, "variant head"],
) -> tuple[Score, Float[Tensor, " variant"]]:
    """The objective's score of the first variant and the loss sum of every variant: ``batch`` run once per variant
    with each head's ``hook_z`` slice times its gate (heads in model order: the mask units' logits, concatenated;
    located by :func:`~modmask_lens.masks.head_outputs.head_outputs`).

    Raises:
        ValueError: (before any forward) the objective reads a ``hook_z`` that the gates scale
            (:func:`_check_objective_reads_no_gated_hook`)."""
    heads = head_outputs(bridge, mask_set.units)
    _check_objective_reads_no_gated_hook(bridge, heads, objective)
    per_forward = max(1, VARIANT_EXAMPLES // len(batch))
    losses, first = [], None
    with torch.no_grad():
        for group in variants.split(per_forward):
            copies = group.shape[0]
            repeated = _repeat(batch, copies)
            gates = group.repeat_interleave(len(batch), dim=0)  # [copy * example, head]
            hooks = [
                (head.hook, _gate_hook(gates[:, head.first_logit : head.first_logit + head.heads], head))
                for head in heads
            ]
            with bridge.hooks(fwd_hooks=hooks):  # the model's own weights, read under no_grad: never changed
                outputs = model_outputs(bridge, repeated, objective.hook_names)
            for copy in range(copies):
                rows = slice(copy * len(batch), (copy + 1) * len(batch))
                # Scored in float32: a removal cost is the difference of two loss sums, which a half-precision sum
                # (a bf16 sum of 246 is a multiple of 1) would round away
                logits = outputs.logits[rows].float()
                part = Outputs(logits, {name: value[rows] for name, value in outputs.activations.items()})
                score = objective.score(part, reference, batch)
                first = score if first is None else first
                losses.append(score.loss_sum)
    return first, torch.stack(losses)


def _check_objective_reads_no_gated_hook(bridge: Bridge, heads: list[HeadOutput], objective: Objective) -> None:
    """Refuse an objective that reads a ``hook_z`` the gates scale (under any of its names): the gates remove a head
    by zeroing its slice of that hook, where the mask as evaluated, on the weights, does not (on ``W_O`` alone it
    leaves ``hook_z`` unchanged; on ``W_Q``/``W_K``/``W_V`` too a value bias or a key/value group kept for another
    head still writes there), so the gradient would not be the evaluated mask's."""
    gated = {id(bridge.hook_dict[head.hook]): head.hook for head in heads}
    for name in objective.hook_names:
        hook = bridge.hook_dict.get(name)
        if hook is not None and id(hook) in gated:
            raise ValueError(
                f"the objective reads {name}, where sampler 'bernoulli' removes heads by zeroing their slices of "
                f"{gated[id(hook)]}, which the trained mask, applied to the weights, does not do: read a hook after "
                "the attention output (e.g. the block's hook_resid_post), or train this mask with "
                "sampler='hard-concrete'"
            )


def _gate_hook(gate: Float[Tensor, "example head"], head: HeadOutput):
    """A forward hook that multiplies each head's slice of ``hook_z`` (its :attr:`HeadOutput.width` entries of the
    flattened per-position features, whatever head split TransformerLens gives the hook) by ``gate`` per example."""

    def hook(z: Tensor, hook) -> Tensor:
        features = z[0, 0].numel()
        if features != head.heads * head.width:
            raise ValueError(
                f"{head.hook} has {features} features per position where the mask's W_O reads {head.heads} heads of "
                f"{head.width}: this family's heads are not laid out as its adapter says; train its head masks with "
                "sampler='hard-concrete'"
            )
        # 0/1 gates in the model's dtype: a float32 gate would turn a half-precision z into float32, which W_O's
        # half-precision matmul then refuses
        per_feature = gate.to(z.dtype).repeat_interleave(head.width, dim=1)  # [example, heads * width]
        return (z.reshape(*z.shape[:2], -1) * per_feature[:, None, :]).reshape(z.shape)

    return hook


def _repeat(batch: Batch, copies: int) -> Batch:
    """``copies`` copies of ``batch``, one after another along the example axis."""
    return dataclasses.replace(
        batch,
        **{
            name: value.repeat(copies, *[1] * (value.dim() - 1))
            for name, value in vars(batch).items()
            if isinstance(value, Tensor)
        },
    )
