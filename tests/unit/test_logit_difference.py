"""The logit difference reads each foil against the answer token at its position, and refuses foils it cannot."""

from __future__ import annotations

import pytest
import torch

import modmask_lens as mm
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.testing.tiny_models import tiny_bridge

ANSWER_POSITION = 4  # each example's one answer token; the logits at position 3 score it
FOIL_TOKENS = torch.tensor([10, 7, 8, 9])


@pytest.fixture(scope="module")
def bridge():
    return tiny_bridge()


def subtask_with_foils(foil_position: int, foiled_examples: slice = slice(None)) -> mm.SubtaskData:
    input_ids = torch.randint(11, 40, (4, 5), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(5) == ANSWER_POSITION, input_ids, IGNORE_INDEX)
    foils = torch.full_like(labels, IGNORE_INDEX)
    foils[foiled_examples, foil_position] = FOIL_TOKENS[foiled_examples]
    return mm.SubtaskData("copy", input_ids, labels, foils=foils)


def test_foils_at_their_answers_score_the_answer_against_the_foil(bridge):
    data = subtask_with_foils(ANSWER_POSITION)
    with torch.no_grad():
        logits = bridge(data.input_ids)[:, ANSWER_POSITION - 1]
    rows = torch.arange(len(data))
    difference = logits[rows, data.input_ids[:, ANSWER_POSITION]] - logits[rows, FOIL_TOKENS]
    assert mm.objective_metric(bridge, data, mm.LogitDifference()) == float((difference > 0).float().mean())


def test_foils_before_their_answers_are_refused_not_read_against_token_0():
    """A foil one position early (where the logits sit) was compared with the logit of token 0: the metric was 0.5
    on this data, whatever the answers' logits. The data now refuse it when built."""
    with pytest.raises(ValueError, match="example 0 has a foil at position 3, where its label is -100"):
        subtask_with_foils(ANSWER_POSITION - 1)


def test_examples_without_a_foil_are_refused_not_counted_as_won(bridge):
    """Only example 0 has a foil, and its answer loses to it; the metric was 0.75 (the three unfoiled examples counted
    as won)."""
    data = subtask_with_foils(ANSWER_POSITION, slice(0, 1))
    with torch.no_grad():
        logits = bridge(data.input_ids)[0, ANSWER_POSITION - 1]
    assert logits[data.input_ids[0, ANSWER_POSITION]] < logits[FOIL_TOKENS[0]]
    with pytest.raises(ValueError, match=r"examples \[1, 2, 3\] \(3 in all\) have no foil"):
        mm.objective_metric(bridge, data, mm.LogitDifference())
