"""A model's metric on a subtask, with a binary mask applied or without one: exact match, or the metric of any
objective (:mod:`modmask_lens.masks.objectives`).

An example counts only if every answer token (and the EOS) is the argmax under teacher forcing, which equals greedy
decoding reproducing the answer exactly. Analyses, the faithful readout and the training history all measure it here.
"""

from __future__ import annotations

import torch

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.scoring import score_answers
from modmask_lens.masks.apply import masked, masked_call
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.objectives import AnswerCrossEntropy, Objective, model_outputs


def exact_match(bridge: Bridge, data: SubtaskData, mask: BinaryMask | None = None, batch_size: int = 256) -> float:
    """Fraction of ``data``'s examples whose whole answer is right, with ``mask`` applied (or the full model)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(data)))
            input_ids, labels = data.batch(indices)
            if mask is None:
                logits = bridge(input_ids)
            else:
                with masked(bridge, mask, check_weights=False):
                    logits = bridge(input_ids)
            correct += score_answers(logits, labels).n_correct
    return correct / len(data)


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
    if type(objective) is AnswerCrossEntropy and data.label_shift == 1 and data.attention_mask is None:
        return exact_match(bridge, data, mask, batch_size)
    objective.check(data)
    metric_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.examples(torch.arange(start, min(start + batch_size, len(data))))
            full = model_outputs(bridge, batch, objective.hook_names) if objective.compares or mask is None else None
            reference = objective.reference(full, batch) if objective.compares else None
            outputs = (
                full
                if mask is None
                else masked_call(bridge, mask.weight_masks(), model_outputs, bridge, batch, objective.hook_names)
            )
            metric_sum += objective.score(outputs, reference, batch).metric_sum
    return metric_sum / len(data)
