"""A mask's metric and loss under any objective (masks/evaluation.py): what they refuse before any forward."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_native

import modmask_lens as mm
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.masks.evaluation import exact_match, objective_loss, reaches_exact_match
from modmask_lens.testing.tiny_models import tiny_bridge


@pytest.mark.parametrize(
    "objective", [mm.AnswerCrossEntropy(), mm.KLDivergence(), mm.HiddenState("blocks.1.hook_resid_post")]
)
def test_a_mask_of_another_model_is_refused_under_every_objective(objective):
    """A head mask of the grouped-query model fits the plain model's W_O; under the KL objective it was applied
    (metric 0.375 for its inverse), where exact match refused it."""
    bridge = tiny_bridge()
    input_ids = torch.randint(11, 40, (4, 5), generator=torch.Generator().manual_seed(0))
    data = mm.SubtaskData("copy", input_ids, torch.where(torch.arange(5) >= 3, input_ids, IGNORE_INDEX))
    other = ~mm.MaskSet.for_bridge(boot_native(gqa=True), mm.MaskConfig(granularity="head"), name="other").binary()
    with pytest.raises(mm.ModelMismatch, match="the mask is for another model"):
        mm.objective_metric(bridge, data, objective, other)
    with pytest.raises(mm.ModelMismatch, match="the mask is for another model"):
        objective_loss(bridge, data, objective, other)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_1_is_refused_not_scored_0(batch_size):
    """The model's own answers: exact match 1.0 at any batch size of at least 1. At -1 no batch ran: exact_match and
    the KL metric gave 0.0; at 0 range() raised 'arg 3 must not be zero'."""
    bridge = tiny_bridge()
    input_ids = torch.randint(11, 40, (4, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        input_ids[:, 4] = bridge(input_ids)[:, 3].argmax(-1)
    data = mm.SubtaskData("own", input_ids, torch.where(torch.arange(5) == 4, input_ids, IGNORE_INDEX))
    assert exact_match(bridge, data, batch_size=1) == 1.0
    for evaluate in (
        lambda: exact_match(bridge, data, batch_size=batch_size),
        lambda: reaches_exact_match(bridge, data, None, 1.0, batch_size=batch_size),
        lambda: mm.objective_metric(bridge, data, mm.KLDivergence(), batch_size=batch_size),
        lambda: objective_loss(bridge, data, mm.AnswerCrossEntropy(), batch_size=batch_size),
    ):
        with pytest.raises(ValueError, match=f"batch_size {batch_size} must be >= 1"):
            evaluate()
