"""Which norm gains the forward pass reads as ``1 + w``: the probe against each transformers module's own arithmetic,
checked another way (a gain of -1 silences an offset norm and negates a plain one)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.muse_glimmer.modeling_muse_glimmer import MuseGlimmerRMSNorm, MuseGlimmerTextCenteredRMSNorm
from transformers.models.nemotron.modeling_nemotron import NemotronLayerNorm1P
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNorm

from modmask_lens.adapters.norms import gain_is_offset

NORMS = {
    "gemma": (lambda: GemmaRMSNorm(8), True),
    "qwen3_next": (lambda: Qwen3NextRMSNorm(8), True),
    "nemotron_layernorm1p": (lambda: NemotronLayerNorm1P(8), True),
    "gemma3n": (lambda: Gemma3nRMSNorm(8), False),  # TransformerLens's cfg.rmsnorm_uses_offset says True
    "muse_glimmer_block": (lambda: MuseGlimmerTextCenteredRMSNorm(8), True),  # ... and False for these two
    "muse_glimmer_final": (lambda: MuseGlimmerRMSNorm(8), False),
    "llama": (lambda: LlamaRMSNorm(8), False),
    "layernorm": (lambda: nn.LayerNorm(8), False),
}


def silenced_by_minus_one(norm: nn.Module) -> bool:
    """Does the norm output nothing but its bias once its gain is -1 (1 + w = 0), rather than the negated input?"""
    probe = copy.deepcopy(norm)
    with torch.no_grad():
        probe.weight.fill_(-1.0)
        if getattr(probe, "bias", None) is not None:
            probe.bias.zero_()
        output = probe(torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1)))
    return bool(output.abs().amax() == 0)


@pytest.mark.parametrize("family", sorted(NORMS))
def test_a_gain_reads_as_offset_exactly_where_the_module_scales_by_one_plus_w(family):
    build, offset = NORMS[family]
    norm = build()
    model = nn.Sequential(nn.Sequential(norm))  # a norm two modules deep, as in a block
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert silenced_by_minus_one(norm) == offset
    assert gain_is_offset(model, "0.0.weight") == offset
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())


@pytest.mark.parametrize("family", sorted(NORMS))
def test_hooks_on_the_norm_neither_fire_during_the_probe_nor_sway_it(family):
    """A forward hook that shifts the norm's output (read as ``1 + w`` by a probe that ran it) and a pre-hook that
    refuses the probe's input (read as ``w``) stay on the module, unrun."""
    build, offset = NORMS[family]
    norm = build()
    model = nn.Sequential(nn.Sequential(norm))
    calls = []

    def shift(module, args, output):
        calls.append("shift")
        return output + 1.0

    def refuse(module, args):
        calls.append("refuse")
        raise RuntimeError("not the model's own input")

    shifting = norm.register_forward_hook(shift)
    assert gain_is_offset(model, "0.0.weight") == offset
    shifting.remove()
    refusing = norm.register_forward_pre_hook(refuse)
    assert gain_is_offset(nn.Sequential(nn.Sequential(copy.deepcopy(norm))), "0.0.weight") == offset
    assert calls == []
    with pytest.raises(RuntimeError, match="not the model's own input"):
        norm(torch.zeros(1, 2, 8))
    refusing.remove()
