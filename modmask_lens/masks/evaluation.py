"""Exact match of a model on a subtask, with a binary mask applied or without one.

An example counts only if every answer token (and the EOS) is the argmax under teacher forcing, which equals greedy
decoding reproducing the answer exactly. Analyses, the faithful readout and the training history all measure it here.
"""

from __future__ import annotations

import torch

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.data import SubtaskData
from modmask_lens.core.scoring import score_answers
from modmask_lens.masks.apply import masked
from modmask_lens.masks.binary import BinaryMask


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
