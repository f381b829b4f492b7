"""The exact gradient of Bernoulli masks, unit by unit: the local-expectation estimator (Titsias & Lázaro-Gredilla
2015, "Local Expectation Gradients for Black Box Variational Inference").

A mask whose units are kept independently with probability ``p_i = sigmoid(logit_i)`` has the expected loss
``E[L(z)]``, whose gradient is, for each unit i,

    d E[L] / d logit_i = p_i (1 - p_i) E_z[L(z with z_i = 1) - L(z with z_i = 0)],

the cost of removing unit i from the sampled rest of the mask, times the sigmoid's derivative. One sample z of the
other units gives an unbiased estimate of it, at the price of one extra forward per unit (each unit flipped in turn)
and no backward. That is affordable when the units are few (the heads of a model: tens to a few hundred), never for
neurons or weights.

Straight-through Gumbel-sigmoid and hard-concrete gradients are the loss's slope at the sample instead. At
initialisation nearly every head is kept, so they measure each head's slope at "fully on", which on a model near its
loss floor says little about what removing the head costs (docs/concepts.md#head-masks measures both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import Batch
from modmask_lens.core.functional import call_with_parameters
from modmask_lens.masks.apply import masked_parameters
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import Objective, Reference, Score, model_outputs
from modmask_lens.masks.sampling import UniformNoise, sample_mask


def local_expectation_step(
    bridge: Bridge,
    mask_set: MaskSet,
    objective: Objective,
    batch: Batch,
    reference: Reference | None,
    noise: UniformNoise,
    weight: float,
    chunk: int = 0,
    n_chunks: int = 1,
) -> Score:
    """Score one Bernoulli mask sample on ``batch`` and add ``weight`` times each logit's local-expectation gradient
    of the objective's loss sum to the logit's ``.grad``.

    The sample is the one :meth:`MaskSet.sample` draws from ``noise`` (a Gumbel-sigmoid sample is 0 or 1, kept with
    probability ``sigmoid(logit)``). When a training step splits its batch into ``n_chunks`` chunks of random
    examples, each with its own sample, chunk ``chunk`` estimates only the logits whose index (in model order) is
    ``chunk`` modulo ``n_chunks``, scaled by ``n_chunks``: unbiased for the whole batch's gradient, at ``1 /
    n_chunks`` of the cost. Costs ``1 + number of logits / n_chunks`` forwards of ``batch``, under ``no_grad``.

    Args:
        bridge: the frozen model.
        mask_set: its logits receive the gradient.
        objective: scores the masked model's outputs (its loss sum is the L above).
        batch: the examples the sample runs on.
        reference: the full model's reference on ``batch``, when the objective compares with it.
        noise: the sample's noise (unit i reads ``noise.substream(i)``, as :meth:`MaskSet.sample`).
        weight: the factor of the loss sum in the trained loss (e.g. ``1 / answer tokens``).
        chunk: this batch's index among the step's chunks.
        n_chunks: the step's chunks (mask samples).

    Returns:
        The sampled mask's score (no autograd graph).
    """
    with torch.no_grad():
        drawn = {
            unit.name: sample_mask(mask_set.logits[unit.name].detach(), "gumbel-sigmoid", 1.0, noise.substream(index))
            for index, unit in enumerate(mask_set.units)
        }

        def loss_sum(values: dict[str, Tensor]) -> Score:
            masks = {
                member.path: unit.expand(values[unit.name], member)
                for unit in mask_set.units
                for member in unit.members
            }
            outputs = call_with_parameters(
                bridge, masked_parameters(bridge, masks), model_outputs, bridge, batch, objective.hook_names
            )
            return objective.score(outputs, reference, batch)

        sampled = loss_sum(drawn)
        first_index = 0  # of the unit's first logit, in model order
        for unit in mask_set.units:
            logits = mask_set.logits[unit.name]
            removal_cost = torch.zeros_like(logits)  # L(unit off) - L(unit on), per logit; 0 where not estimated
            flat_cost, flat_drawn = removal_cost.view(-1), drawn[unit.name].view(-1)
            for index in range((chunk - first_index) % n_chunks, flat_drawn.numel(), n_chunks):
                flipped = flat_drawn.clone()
                flipped[index] = 1.0 - flipped[index]
                flipped_loss = loss_sum({**drawn, unit.name: flipped.view_as(logits)}).loss_sum
                kept = bool(flat_drawn[index])
                flat_cost[index] = (flipped_loss - sampled.loss_sum) if kept else (sampled.loss_sum - flipped_loss)
            first_index += flat_drawn.numel()
            keep = torch.sigmoid(logits.detach())
            gradient = -weight * n_chunks * keep * (1 - keep) * removal_cost
            logits.grad = gradient if logits.grad is None else logits.grad + gradient
    return Score(sampled.loss_sum.detach(), sampled.metric_sum)
