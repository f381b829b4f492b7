"""Exact match of a model on a subtask, with a binary mask applied or without one.

An example counts only if every answer token (and the EOS) is the argmax under teacher forcing, which equals greedy
decoding reproducing the answer exactly. Analyses, the faithful readout and the training history all measure it here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.scoring import score_answers
from modmask_lens.masks.apply import masked
from modmask_lens.masks.binary import BinaryMask


def exact_match(bridge: Bridge, data: SubtaskData, mask: BinaryMask | None = None, batch_size: int = 256) -> float:
    """Fraction of ``data``'s examples whose whole answer is right, with ``mask`` applied (or the full model)."""
    return sum(_correct_by_batch(bridge, data, mask, batch_size)) / len(data)


def reaches_exact_match(
    bridge: Bridge, data: SubtaskData, mask: BinaryMask | None, target: float, batch_size: int = 256
) -> bool:
    """Whether :func:`exact_match` is at least ``target``; stops at the first batch after which it cannot be."""
    correct = 0
    for start, batch_correct in zip(range(0, len(data), batch_size), _correct_by_batch(bridge, data, mask, batch_size)):
        correct += batch_correct
        unseen = len(data) - min(start + batch_size, len(data))
        if (correct + unseen) / len(data) < target:  # even if every unseen example were right
            return False
    return correct / len(data) >= target


def _correct_by_batch(bridge: Bridge, data: SubtaskData, mask: BinaryMask | None, batch_size: int) -> Iterator[int]:
    """The count of exactly right examples in each batch of ``data``, in order."""
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(data)))
            input_ids, labels = data.batch(indices)
            if mask is None:
                logits = bridge(input_ids)
            else:
                with masked(bridge, mask, check_weights=False):
                    logits = bridge(input_ids)
            yield score_answers(logits, labels).n_correct
