"""The expected density of a head mask counts a key/value group of grouped-query attention as kept when any of its
query heads is: a Monte Carlo count of sampled masks against :meth:`MaskSet.expected_density`."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_native

from modmask_lens import MaskConfig, MaskSet
from modmask_lens.masks.sampling import UniformNoise


@pytest.mark.parametrize("sampler", ["gumbel-sigmoid", "hard-concrete"])
def test_expected_density_of_grouped_query_qkvo_heads_matches_sampled_masks(sampler):
    bridge = boot_native(gqa=True)
    assert bridge.cfg.n_key_value_heads < bridge.cfg.n_heads
    config = MaskConfig(granularity="head", head_mask="qkvo", sampler=sampler, kinds=("linear",))
    masks = MaskSet.for_bridge(bridge, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for logits in masks.logits.values():
            logits.copy_(torch.randn(logits.shape, generator=generator) * 2)
    total = sum(member.numel for member in masks.members)
    samples = 1000
    kept = 0.0
    for seed in range(samples):
        sample = masks.sample(1.0, UniformNoise(seed))
        kept += sum(float((sample[m.path] > 0).float().expand(m.shape).sum()) for m in masks.members)
    monte_carlo = kept / samples / total
    assert float(masks.expected_density()) == pytest.approx(monte_carlo, abs=0.01)
