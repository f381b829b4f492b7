"""Where head masks find each head's ``hook_z``, and the sampler the default ``MaskConfig(sampler="auto")`` resolves
to on a model: ``bernoulli`` on heads with a ``hook_z``, ``hard-concrete`` everywhere else."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from modmask_lens import MaskConfig, MaskSet, SubtaskData, TrainConfig
from modmask_lens.masks.head_outputs import HeadOutput, head_outputs
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.mask_set import units_for
from modmask_lens.masks.training import MaskTrainer
from modmask_lens.testing.tiny_models import tiny_bridge


@pytest.mark.parametrize(
    ("settings", "sampler"),
    [
        ({"granularity": "head"}, "bernoulli"),
        ({"granularity": "head", "head_mask": "qkvo"}, "bernoulli"),
        ({"granularity": "head", "roles": ("W_O", "W_V")}, "bernoulli"),
        ({"granularity": "head", "roles": ("W_Q", "W_K")}, "hard-concrete"),  # no W_O: heads are not removed at z
        ({"granularity": "head", "sampler": "hard-concrete"}, "hard-concrete"),
        ({"granularity": "head", "sampler": "gumbel-sigmoid"}, "gumbel-sigmoid"),
        ({"granularity": "neuron"}, "hard-concrete"),
        ({"granularity": "weight"}, "hard-concrete"),
        ({"granularity": "matrix"}, "hard-concrete"),
        ({"granularity": "weight", "sampler": "gumbel-sigmoid"}, "gumbel-sigmoid"),
    ],
)
def test_the_default_sampler_resolves_per_granularity_and_a_named_one_stays(settings, sampler):
    """And the default initial logit with it: 0.01 for Bernoulli heads, 3.0 for the pathwise samplers; either way a
    fresh mask's readout keeps every unit."""
    config = MaskConfig(**settings)
    mask = MaskSet.for_bridge(tiny_bridge(), config)
    init_logit = 0.01 if sampler == "bernoulli" else 3.0
    assert mask.config == dataclasses.replace(config, sampler=sampler, init_logit=init_logit)
    assert all(torch.equal(logit, torch.full_like(logit, init_logit)) for logit in mask.logits.values())
    assert (mask.binary().kept_fraction(by="all")["kept_fraction"] == 1.0).all()
    named = MaskSet.for_bridge(tiny_bridge(), dataclasses.replace(config, init_logit=1.5))
    assert named.config.init_logit == 1.5


def test_a_mask_set_holds_a_resolved_initial_logit_never_none():
    bridge = tiny_bridge()
    config = MaskConfig(granularity="neuron", sampler="hard-concrete")
    with pytest.raises(ValueError, match="not None"):
        MaskSet("mask", config, units_for(bridge, config), {}, MaskOrigin.of(bridge))


def test_every_head_is_found_at_the_hook_z_of_the_layer_that_writes_it():
    bridge = tiny_bridge()
    units = units_for(bridge, MaskConfig(granularity="head"))
    n_heads = bridge.cfg.n_heads
    assert head_outputs(bridge, units) == [
        HeadOutput(f"blocks.{layer}.attn.hook_z", layer * n_heads, n_heads, bridge.cfg.d_head)
        for layer in range(bridge.cfg.n_layers)
    ]


def test_heads_without_a_hook_z_train_with_hard_concrete_and_refuse_an_explicit_bernoulli(monkeypatch):
    bridge = tiny_bridge()
    units = units_for(bridge, MaskConfig(granularity="head"))
    hooks = {name: hook for name, hook in bridge.hook_dict.items() if not name.endswith("hook_z")}
    monkeypatch.setattr(type(bridge), "hook_dict", property(lambda self: hooks))  # a family without hook_z
    with pytest.raises(ValueError, match=r"\(blocks.0.attn has no hook_z\)"):
        head_outputs(bridge, units)
    fallback = MaskSet.for_bridge(bridge, MaskConfig(granularity="head")).config
    assert (fallback.sampler, fallback.init_logit) == ("hard-concrete", 3.0)
    with pytest.raises(ValueError, match="sampler='hard-concrete'"):
        MaskSet.for_bridge(bridge, MaskConfig(granularity="head", sampler="bernoulli"))


def test_a_mask_set_holds_a_resolved_sampler_never_auto():
    bridge = tiny_bridge()
    units = units_for(bridge, MaskConfig(granularity="head"))
    with pytest.raises(ValueError, match="MaskSet.for_bridge"):
        MaskSet("mask", MaskConfig(granularity="head"), units, {}, MaskOrigin.of(bridge))


@pytest.mark.parametrize(("granularity", "sampler"), [("head", "bernoulli"), ("neuron", "hard-concrete")])
def test_a_runs_fingerprint_records_the_resolved_sampler(granularity, sampler):
    """So a checkpoint of the same run (the sampler named) resumes, and one trained under the earlier head default
    (hard concrete) is refused as another run instead of resuming under another estimator."""
    bridge = tiny_bridge()
    data = SubtaskData("copy", torch.tensor([[1, 2, 2], [3, 4, 4]]), torch.tensor([[-100, -100, 2], [-100, -100, 4]]))
    trainer = MaskTrainer(bridge, [data], MaskConfig(granularity=granularity), TrainConfig(steps=1), progress=False)
    assert trainer.runs[0].masks.fingerprint["mask_config"]["sampler"] == sampler
