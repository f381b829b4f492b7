"""A mask's metric and loss under any objective (masks/evaluation.py): refused for a mask of another model."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_native

import modmask_lens as mm
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.masks.evaluation import objective_loss
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
