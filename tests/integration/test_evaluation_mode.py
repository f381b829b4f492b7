"""Every evaluation reads the model in eval mode, whatever mode the caller left it in, and leaves that mode."""

from __future__ import annotations

import torch
from conftest import VOCAB

from modmask_lens import MaskConfig, MaskSet, SubtaskData
from modmask_lens.groundtruth.evaluation import masked_logits
from modmask_lens.masks.evaluation import exact_match, objective_metric, reaches_exact_match
from modmask_lens.masks.objectives import KLDivergence
from modmask_lens.viz.attention_patterns import attention_patterns


def test_evaluations_ignore_dropout_left_on_and_restore_the_callers_mode(gpt2_bridge):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (32, 6), generator=generator)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = gpt2_bridge(input_ids)[:, -2].argmax(-1)  # the full model's own answers: exact match 1.0
    data = SubtaskData("own", input_ids, labels)
    mask = MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="head")).binary()

    def evaluations() -> list:
        return [
            exact_match(gpt2_bridge, data),
            exact_match(gpt2_bridge, data, mask),
            reaches_exact_match(gpt2_bridge, data, None, 1.0),
            objective_metric(gpt2_bridge, data, KLDivergence(), mask),
            masked_logits(gpt2_bridge, data),
            attention_patterns(gpt2_bridge, input_ids[0], {"heads": mask}).patterns,
        ]

    expected = evaluations()
    assert expected[0] == 1.0 and expected[2]
    dropout = [module for module in gpt2_bridge.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropout, "the tiny GPT-2 has no dropout module to test with"
    gpt2_bridge.train()
    for module in dropout:  # dropout that would change every forward in training mode
        module.p = 0.5
    for measured, wanted in zip(evaluations(), expected):
        if isinstance(wanted, dict):
            assert measured.keys() == wanted.keys()
            for name in wanted:
                assert torch.equal(measured[name], wanted[name])
        elif isinstance(wanted, torch.Tensor):
            assert torch.equal(measured, wanted)
        else:
            assert measured == wanted
    assert all(module.training for module in gpt2_bridge.modules())
