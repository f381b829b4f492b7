"""A model's metric on a subtask, with a binary mask applied or without one: exact match, or the metric of any
objective (:mod:`modmask_lens.masks.objectives`).

An example counts only if every answer token (and the EOS) is the argmax under teacher forcing, which equals greedy
decoding reproducing the answer exactly. Analyses, the faithful readout and the training history all measure it here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from modmask_lens.core.bridge import Bridge, eval_mode
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.scoring import check_batch_size, score_answers
from modmask_lens.masks.apply import masked, masked_call
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective, model_outputs


def exact_match(bridge: Bridge, data: SubtaskData, mask: BinaryMask | None = None, batch_size: int = 256) -> float:
    """Fraction of ``data``'s examples whose whole answer is right, with ``mask`` applied (or the full model), in
    eval mode whatever mode the caller left the model in. Encoder data is run with its attention mask and scored
    with its label shift (masked-LM answers at their own positions)."""
    check_batch_size(batch_size)
    with eval_mode(bridge):
        return sum(_correct_by_batch(bridge, data, mask, batch_size)) / len(data)


def reaches_exact_match(
    bridge: Bridge, data: SubtaskData, mask: BinaryMask | None, target: float, batch_size: int = 256
) -> bool:
    """Whether :func:`exact_match` is at least ``target``; stops at the first batch after which it cannot be."""
    check_batch_size(batch_size)
    correct = 0
    with eval_mode(bridge):
        batches = zip(range(0, len(data), batch_size), _correct_by_batch(bridge, data, mask, batch_size))
        for start, batch_correct in batches:
            correct += batch_correct
            unseen = len(data) - min(start + batch_size, len(data))
            if (correct + unseen) / len(data) < target:  # even if every unseen example were right
                return False
    return correct / len(data) >= target


def _correct_by_batch(bridge: Bridge, data: SubtaskData, mask: BinaryMask | None, batch_size: int) -> Iterator[int]:
    """The count of exactly right examples in each batch of ``data``, in order (``data`` checked to fit the model
    first: :meth:`SubtaskData.check_fits`)."""
    data.check_fits(bridge)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(data)))
            batch = data.examples(indices)
            if mask is None:
                logits = bridge(batch.input_ids, **batch.forward_kwargs())
            else:
                with masked(bridge, mask, check_weights=False):
                    logits = bridge(batch.input_ids, **batch.forward_kwargs())
            yield score_answers(logits, batch.labels, batch.label_shift).n_correct


def objective_metric(
    bridge: Bridge,
    data: SubtaskData,
    objective: Objective,
    mask: BinaryMask | None = None,
    batch_size: int = 256,
) -> float:
    """Mean of ``objective``'s metric over ``data``'s examples with ``mask`` applied (or the full model): exact
    match for :class:`AnswerCrossEntropy`, cosine for :class:`HiddenState`, probe accuracy for
    :class:`LinearProbe`, top-1 agreement for :class:`KLDivergence`.

    Example:
        >>> objective_metric(bridge, sports, HiddenState("blocks.5.hook_resid_post"), heads)  # doctest: +SKIP
        0.97
    """
    if _is_exact_match(objective, data):
        return exact_match(bridge, data, mask, batch_size)
    return _objective_sums(bridge, data, objective, mask, batch_size)[2] / len(data)


def objective_loss(
    bridge: Bridge,
    data: SubtaskData,
    objective: Objective,
    mask: BinaryMask | None = None,
    batch_size: int = 256,
) -> float:
    """``objective``'s loss over all of ``data`` with ``mask`` applied (or the full model), divided by the sum of
    the objective's :meth:`~modmask_lens.masks.objectives.Objective.normaliser` over the batches: for
    :class:`AnswerCrossEntropy`, nats per answer token.

    Raises:
        ValueError: when no position of ``data`` counts for the objective.

    Example:
        >>> objective_loss(bridge, sports, AnswerCrossEntropy(), heads)                 # doctest: +SKIP
        0.04
    """
    loss_sum, normaliser, _ = _objective_sums(bridge, data, objective, mask, batch_size)
    if normaliser == 0:
        raise ValueError(
            f"no position of {data.name!r} counts for the {objective.name} objective (its normaliser is 0 on every "
            "example), so it has no loss: check the data's answers (and foils)"
        )
    return loss_sum / normaliser


def _objective_sums(
    bridge: Bridge, data: SubtaskData, objective: Objective, mask: BinaryMask | None, batch_size: int
) -> tuple[float, int, float]:
    """``objective``'s loss, its normaliser and its metric, each summed over ``data``'s batches, with ``mask``
    applied or without one."""
    check_batch_size(batch_size)
    if mask is not None:
        mask.check_model(bridge, check_weights=False)  # as masked() checks it on the exact-match path
    data.check_fits(bridge, answers_scored=objective.scores_answers)
    objective.check(data)
    loss_sum, normaliser, metric_sum = 0.0, 0, 0.0
    with torch.no_grad(), eval_mode(bridge):
        for start in range(0, len(data), batch_size):
            batch = data.examples(torch.arange(start, min(start + batch_size, len(data))))
            full = model_outputs(bridge, batch, objective.hook_names) if objective.compares or mask is None else None
            reference = objective.reference(full, batch) if objective.compares else None
            outputs = (
                full
                if mask is None
                else masked_call(bridge, mask.weight_masks(), model_outputs, bridge, batch, objective.hook_names)
            )
            score = objective.score(outputs, reference, batch)
            loss_sum += float(score.loss_sum)
            normaliser += objective.normaliser(batch)
            metric_sum += score.metric_sum
    return loss_sum, normaliser, metric_sum


def reaches_metric(
    bridge: Bridge, data: SubtaskData, objective: Objective, mask: BinaryMask | None, target: float
) -> bool:
    """Whether :func:`objective_metric` is at least ``target`` (for exact match, stopping at the first batch after
    which it cannot be)."""
    if _is_exact_match(objective, data):
        return reaches_exact_match(bridge, data, mask, target)
    return objective_metric(bridge, data, objective, mask) >= target


def _is_exact_match(objective: Objective, data: SubtaskData) -> bool:
    """Whether ``objective``'s metric on ``data`` is plain exact match of causal answers (the fast path)."""
    return type(objective) is AnswerCrossEntropy and data.label_shift == 1 and data.attention_mask is None
