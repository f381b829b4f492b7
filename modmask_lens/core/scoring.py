"""Scoring answers: the answer-token cross-entropy and exact match, the one implementation every method uses; and
KL(full || masked) of two output distributions (:func:`kl_divergences`), which the KL objective and the ground-truth
suite both read.

An example counts as correct only if every answer token and the EOS have the largest logit at their gold prefix
(Csordás et al. 2021: "an item counts as correct only if every digit/token is right"). Teacher-forced exact match
equals greedy exact match: greedy decoding reproduces the answer exactly iff the argmax at every gold prefix is gold.
The one exception is a tie for the largest logit, which counts wrong: greedy decoding would emit the lowest tied id,
and a masked model that writes equal logits (a compiled tracr program whose output path a mask removed) would score
wherever that id happens to be the answer (a third of one program's examples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from modmask_lens.core.encoding import IGNORE_INDEX


def aligned(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"], label_shift: int = 1
) -> tuple[Float[Tensor, "batch scored_pos vocab"], Int[Tensor, "batch scored_pos"]]:
    """Logits and the labels they are scored against: ``logits[:, t]`` with ``labels[:, t + label_shift]`` (1 for
    causal next-token labels, 0 for masked-LM labels at their own position)."""
    if label_shift == 0:
        return logits, labels
    return logits[:, :-label_shift], labels[:, label_shift:]


def answer_correct(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"], label_shift: int = 1
) -> Bool[Tensor, " batch"]:
    """Per example: does the answer token have the largest logit, above every other token's, at every scored
    position (``labels`` not :data:`IGNORE_INDEX`)? A tie for the largest counts wrong (module docstring).

    ``labels`` are aligned with the inputs (Hugging Face convention): ``logits[:, t]`` is scored against
    ``labels[:, t + 1]`` (``labels[:, t]`` with ``label_shift=0``, for masked-LM subtasks).

    >>> import torch
    >>> answer_correct(torch.tensor([[[0.0, 1.0, 1.0], [2.0, 0.0, 0.0]]]), torch.tensor([[-100, 1]])).tolist()
    [False]
    """
    predicted_logits, targets = aligned(logits, labels, label_shift)
    top = predicted_logits.topk(2, dim=-1)  # the largest and the runner-up: no copy of the logits
    alone_on_top = (top.indices[..., 0] == targets) & (top.values[..., 0] > top.values[..., 1])
    return (alone_on_top | (targets == IGNORE_INDEX)).all(dim=1)


@dataclass(frozen=True)
class AnswerScore:
    """Summed answer-token cross-entropy and exact-match counts of a batch (sums, so chunks add up)."""

    loss_sum: Tensor
    n_tokens: int
    n_correct: int
    n_examples: int


def score_answers(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"], label_shift: int = 1
) -> AnswerScore:
    """Cross-entropy summed over answer tokens, and how many examples have every answer token right.

    Args:
        logits: model output, ``[batch, pos, vocab]``.
        labels: ``[batch, pos]`` as in :class:`SubtaskData`.
        label_shift: 1 for causal labels, 0 for masked-LM labels (:attr:`SubtaskData.label_shift`).
    """
    predicted_logits, targets = aligned(logits, labels, label_shift)
    scored = targets != IGNORE_INDEX
    loss_sum = F.cross_entropy(
        predicted_logits.reshape(-1, predicted_logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    correct = answer_correct(logits, labels, label_shift)
    return AnswerScore(loss_sum, int(scored.sum()), int(correct.sum()), labels.shape[0])


def answer_losses(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"], label_shift: int = 1
) -> Float[Tensor, " batch"]:
    """Each example's answer-token cross-entropy, summed over its answer tokens (nats)."""
    predicted_logits, targets = aligned(logits, labels, label_shift)
    token_losses = F.cross_entropy(
        predicted_logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return token_losses.sum(dim=1)


def kl_divergences(
    full_log_probs: Float[Tensor, "*position vocab"], masked_log_probs: Float[Tensor, "*position vocab"]
) -> Float[Tensor, "*position"]:
    """KL(full || masked) in nats at each position: the sum over the vocabulary of p (log p - log q), p the full
    model's probabilities and q the masked model's. A token the full model gives probability 0 (a logit of -inf, as
    a model that masks tokens writes; or one that underflows) contributes 0, as p log p -> 0: written out, it is
    0 * -inf (and -inf - -inf where the masked model masks it too), which is NaN. A token only the masked model
    gives probability 0 makes the divergence +inf, as it is.

    Example:
        >>> full = torch.tensor([[0.0, 0.0, float("-inf")]]).log_softmax(-1)
        >>> kl_divergences(full, torch.tensor([[0.0, 0.0, 0.0]]).log_softmax(-1))
        tensor([0.4055])
    """
    full_probs = full_log_probs.exp()
    log_ratios = torch.where(full_probs > 0, full_log_probs - masked_log_probs, 0.0)
    return (full_probs * log_ratios).sum(dim=-1)


def check_batch_size(batch_size: int) -> None:
    """Raise ``ValueError`` unless ``batch_size`` (examples per forward pass of an evaluation) is at least 1: below 1
    ``range(0, examples, batch_size)`` runs no batch, and the data would score as if it held no example."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1 (examples per forward pass)")
