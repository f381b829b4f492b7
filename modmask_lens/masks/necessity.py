"""The necessity term of mask training: the model without a mask sample's units should fail the subtask.

The loss constraint alone asks a mask to be *sufficient*: the smallest set that keeps the subtask. Where several
sparse sets suffice (the entangled plants of the ground-truth suite, docs/finder-study.md) that need not be the set
the model uses. Necessity singles it out: removing the units a subtask uses breaks it, removing others does not.

For a mask sample ``m`` the trainer also runs the *complement*: every masked tensor of the inverted kinds
(:data:`~modmask_lens.masks.binary.INVERTED_KINDS`, linear weights; norm gains stay whole, as in
:meth:`BinaryMask.inverse`) times ``1 - m``. Its per-example loss ``l_i`` is capped at ``c_i``, what the example
loses with *every* masked unit removed (the *empty* model; at least the full model's loss ``f_i``), and the
constraint is

    sum_i min(l_i, c_i) >= sum_i (f_i + q (c_i - f_i))

with ``q`` = ``TrainConfig.complement_loss_fraction``: the complement must lose at least a fraction ``q`` of what
removing everything loses, example by example. The cap makes the term bounded: an example the complement already
fails as badly as the empty model gives no further reward, so no example's confidently wrong answer can pay for
another one still answered, and nothing is gained by breaking the model beyond "as if none of its masked units were
there". The target is reachable (``m = 1`` gives ``l_i = c_i``), and where the empty model is no worse than the full
one (a model at chance, as under the suite's null controls) the target is the full model's loss, which ``m = 0``
meets: the term then asks for nothing.

What it cannot tell apart: units every answer needs (the unembedding of the answer tokens, at weight granularity)
are in every sufficient mask and their removal breaks every subtask, so there the term is met by any sufficient mask
and adds nothing; it separates subtasks only among units that some subtasks do without (heads, neurons).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

from modmask_lens.core.data import Batch
from modmask_lens.core.functional import call_with_parameters
from modmask_lens.core.scoring import answer_losses
from modmask_lens.masks.apply import masked_parameters
from modmask_lens.masks.binary import INVERTED_KINDS
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.masks.objectives import model_outputs


def complement_masks(mask_set: MaskSet, sample: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``1 - sample`` on every masked tensor of :data:`INVERTED_KINDS` (bridge parameter path -> mask); tensors of
    other kinds are left out, so :func:`masked_parameters` keeps them whole.

    Args:
        mask_set: the masks ``sample`` was drawn from.
        sample: bridge parameter path -> mask sample (:meth:`MaskSet.sample`), differentiable in the logits.
    """
    return {member.path: 1 - sample[member.path] for member in mask_set.members if member.kind in INVERTED_KINDS}


def complement_losses(
    bridge: nn.Module, mask_set: MaskSet, sample: Mapping[str, Tensor], batch: Batch
) -> Float[Tensor, " batch"]:
    """Each example's answer cross-entropy (nats, summed over its answer tokens) under the complement of ``sample``,
    differentiable in the logits."""
    parameters = masked_parameters(bridge, complement_masks(mask_set, sample))
    outputs = call_with_parameters(bridge, parameters, model_outputs, bridge, batch)
    return answer_losses(outputs.logits, batch.labels.to(outputs.logits.device), batch.label_shift)


def empty_losses(bridge: nn.Module, mask_set: MaskSet, batch: Batch) -> Float[Tensor, " batch"]:
    """Each example's answer cross-entropy with every masked unit of :data:`INVERTED_KINDS` removed (the complement
    of an all-ones mask), without gradient."""
    device = next(iter(mask_set.logits.values())).device
    ones = {member.path: torch.ones((), device=device) for member in mask_set.members}
    with torch.no_grad():
        return complement_losses(bridge, mask_set, ones, batch)


def capped_loss_sum(losses: Float[Tensor, " batch"], caps: Float[Tensor, " batch"]) -> Tensor:
    """``sum_i min(losses_i, caps_i)``: the complement's loss, each example's counted only up to its cap."""
    return torch.minimum(losses, caps.to(losses.device)).sum()


def complement_caps(full_losses: Float[Tensor, " batch"], empty: Float[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """Each example's cap ``c_i = max(empty_i, full_i)``: no more than removing everything loses, and never below
    what the full model already loses."""
    return torch.maximum(empty, full_losses)


def necessity_target_sum(
    full_losses: Float[Tensor, " batch"], caps: Float[Tensor, " batch"], fraction: float
) -> Tensor:
    """``sum_i (f_i + fraction * (c_i - f_i))``: what the capped complement loss must reach."""
    return (full_losses + fraction * (caps - full_losses)).sum()
