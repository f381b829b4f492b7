"""Answer-position outputs of a bridge under weight masks: exact-match accuracy and KL(full || masked)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor, nn

from modmask_lens.core.bridge import eval_mode
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.core.scoring import aligned, kl_divergences, score_answers
from modmask_lens.masks.apply import masked_call


def masked_logits(
    bridge: nn.Module, data: SubtaskData, weight_masks: Mapping[str, Tensor] | None = None
) -> Float[Tensor, "example pos vocab"]:
    """The bridge's logits on all of ``data`` (with its attention mask, where it has one) with ``weight_masks``
    (bridge path -> mask) applied, in eval mode; the model itself is never modified."""
    padding = {} if data.attention_mask is None else {"attention_mask": data.attention_mask}
    with torch.no_grad(), eval_mode(bridge):
        forward = type(bridge).forward.__get__(bridge)
        return masked_call(bridge, dict(weight_masks or {}), forward, data.input_ids, **padding)


def exact_match(logits: Float[Tensor, "example pos vocab"], data: SubtaskData) -> float:
    """Fraction of examples whose every answer token has the largest logit, above every other token's (scored with
    the data's label shift; :func:`~modmask_lens.core.scoring.answer_correct`: a tie is no answer)."""
    return score_answers(logits, data.labels, data.label_shift).n_correct / len(data)


def answer_log_probs(logits: Float[Tensor, "example pos vocab"], data: SubtaskData) -> Float[Tensor, "answer vocab"]:
    """Log-probabilities at the positions that predict an answer token (with the data's label shift), one row per
    answer token."""
    predicted, targets = aligned(logits, data.labels, data.label_shift)
    return predicted[targets != IGNORE_INDEX].log_softmax(dim=-1)


def kl_divergence(
    full: Float[Tensor, "example pos vocab"], masked: Float[Tensor, "example pos vocab"], data: SubtaskData
) -> float:
    """KL(full || masked) in nats, averaged over answer tokens (:func:`~modmask_lens.core.scoring.kl_divergences`)."""
    full_log_probs, masked_log_probs = answer_log_probs(full, data), answer_log_probs(masked, data)
    return float(kl_divergences(full_log_probs, masked_log_probs).mean())
