"""Masks on fp16 and bf16 bridges: float32 logits, products in the model's dtype, the model untouched, and a mask
refused on a copy of its model in another dtype with a message that names both."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, assert_unchanged, boot_native, state_snapshot

from modmask_lens import MaskConfig, MaskSet, SubtaskData, TrainConfig, masked, train_masks
from modmask_lens.masks.identity import ModelMismatch


def subtask() -> SubtaskData:
    input_ids = torch.randint(0, VOCAB, (16, 6), generator=torch.Generator().manual_seed(0))
    return SubtaskData("copy", input_ids, input_ids.clone())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_masks_train_and_apply_on_a_half_precision_bridge(dtype, sampler):
    bridge = boot_native().to(dtype)
    snapshot = state_snapshot(bridge)
    config = MaskConfig(sampler=sampler, init_logit=0.5)
    masks = train_masks(bridge, subtask(), config, TrainConfig(steps=3, batch_size=8, lr=0.1), progress=False)["copy"]

    assert all(logit.dtype == torch.float32 and bool(logit.isfinite().all()) for logit in masks.logits.values())
    assert any(not torch.equal(logit, torch.full_like(logit, 0.5)) for logit in masks.logits.values())
    assert all(row["loss"] == row["loss"] for row in masks.history)  # not NaN
    with masked(bridge, masks):
        output = bridge(subtask().input_ids[:2])
    assert output.dtype == dtype and bool(output.isfinite().all())
    assert_unchanged(bridge, snapshot)


def test_a_float32_mask_is_refused_on_a_bfloat16_copy_naming_both_dtypes():
    masks = MaskSet.for_bridge(boot_native())
    with pytest.raises(ModelMismatch, match=r"float32 model .* holds bfloat16 weights"):
        masks.check_model(boot_native().to(torch.bfloat16))
