"""The hidden-state and probe objectives read a per-head activation (``hook_z``, ``[batch, pos, head, d_head]``) as
one vector per position, its heads concatenated."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modmask_lens as mm
from modmask_lens.core.encoding import IGNORE_INDEX
from modmask_lens.masks.evaluation import objective_loss
from modmask_lens.testing.tiny_models import tiny_bridge

HOOK_Z = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def setting():
    """The tiny model, 4 causal examples (answers at positions 3 and 4: every position is real), each with a
    class, and a random head mask."""
    bridge = tiny_bridge()
    input_ids = torch.randint(11, 40, (4, 5), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(5) >= 3, input_ids, IGNORE_INDEX)
    data = mm.SubtaskData("copy", input_ids, labels, classes=torch.tensor([0, 1, 0, 1]))
    masks = mm.MaskSet.for_bridge(bridge, mm.MaskConfig(granularity="head"), name="random")
    generator = torch.Generator().manual_seed(1)
    mask = masks.binary_from(
        {name: torch.rand(logit.shape, generator=generator) > 0.5 for name, logit in masks.logits.items()}
    )
    return bridge, data, mask


def concatenated_z(bridge, input_ids, mask=None):
    """``[batch, pos, head * d_head]``: hook_z of a cached run, heads side by side."""
    with torch.no_grad():
        if mask is None:
            _, cache = bridge.run_with_cache(input_ids)
        else:
            with mm.masked(bridge, mask):
                _, cache = bridge.run_with_cache(input_ids)
    z = cache[HOOK_Z]
    return z.reshape(*z.shape[:2], -1)


def test_hidden_state_at_hook_z_is_the_cosine_of_the_heads_concatenated(setting):
    """Both pools raised 'The size of tensor a (4) must match the size of tensor b (5)' (4 heads, 5 positions)."""
    bridge, data, mask = setting
    full, kept = concatenated_z(bridge, data.input_ids), concatenated_z(bridge, data.input_ids, mask)
    pooled = F.cosine_similarity(kept.mean(1), full.mean(1), dim=-1).mean()
    per_token = F.cosine_similarity(kept, full, dim=-1).mean()
    assert mm.objective_metric(bridge, data, mm.HiddenState(HOOK_Z), mask) == pytest.approx(float(pooled), rel=1e-5)
    none = mm.HiddenState(HOOK_Z, pool="none")
    assert mm.objective_metric(bridge, data, none, mask) == pytest.approx(float(per_token), rel=1e-5)
    assert mm.objective_metric(bridge, data, none) == pytest.approx(1.0, rel=1e-6)


def test_a_linear_probe_at_hook_z_reads_the_heads_concatenated(setting):
    bridge, data, mask = setting
    weight = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    probe = mm.LinearProbe(HOOK_Z, weight, torch.zeros(2), pool="last")
    logits = concatenated_z(bridge, data.input_ids, mask)[:, -1] @ weight.T
    expected = F.cross_entropy(logits, data.classes)
    assert objective_loss(bridge, data, probe, mask) == pytest.approx(float(expected), rel=1e-5)
