"""Families whose checkpoint fuses q/k/v into one tensor that the bridge splits into copies (BLOOM, Falcon, CodeGen,
MPT, GPT-NeoX): a baked mask exports to the Hugging Face layout and reloads with the masked model's logits, with no
hand-written adapter. The place of every copied element is traced from TransformerLens's own split."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    CodeGenConfig,
    CodeGenForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MptConfig,
    MptForCausalLM,
)

from modmask_lens import export_masked_model
from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.export import split_sources
from modmask_lens.masks.mask_set import MaskSet
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import ALL_KINDS
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

FALCON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 40}
FUSED_FAMILIES = {
    "bloom": lambda: BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=40)),
    "falcon_multi_query": lambda: FalconForCausalLM(FalconConfig(multi_query=True, **FALCON)),
    "falcon_interleaved": lambda: FalconForCausalLM(FalconConfig(multi_query=False, **FALCON)),
    "codegen": lambda: CodeGenForCausalLM(
        CodeGenConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=40, n_positions=32, rotary_dim=4, n_inner=64)
    ),
    "mpt": lambda: MptForCausalLM(MptConfig(d_model=32, n_layers=2, n_heads=4, vocab_size=40, max_seq_len=32)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**TINY_HF_SIZES)),
}
"""Each fused layout TransformerLens 4.3 splits: per-head interleaved (BLOOM, Falcon without multi-query, GPT-NeoX),
concatenated with one key/value head (multi-query Falcon), CodeGen's four partitions ordered q, v, k, and MPT's plain
concatenation. (Falcon's new decoder architecture, grouped key/value heads, does not boot in TransformerLens 4.3: its
adapter reads ``new_decoder_architecture`` from a config that lacks it and splits with multi-query sizes.)"""


@pytest.fixture(scope="module")
def fused_bridge(tmp_path_factory):
    bridges = {}

    def bridge_of(family: str):
        if family not in bridges:
            bridges[family] = boot_tiny(FUSED_FAMILIES[family](), tmp_path_factory.mktemp(family))
        return bridges[family]

    return bridge_of


@pytest.mark.parametrize("family", sorted(FUSED_FAMILIES))
def test_a_masked_fused_qkv_model_exports_and_reloads_with_the_masked_logits(family, fused_bridge):
    """The kit's check: random per-weight masks on every tensor, exported, reloaded by ``transformers`` alone, give the
    masked bridge's logits (within 1e-5)."""
    bridge = fused_bridge(family)
    assert adapter_for(bridge).name == "transformer_lens"
    [result] = run_conformance(bridge, checks=["hf_export_reloads"])
    assert result.passed, str(result)


def test_bloom_queries_are_traced_to_their_rows_of_the_per_head_interleaved_fused_tensor(fused_bridge):
    """BLOOM's ``query_key_value`` rows run [q of head 0, k of head 0, v of head 0, q of head 1, ...] (d_head rows
    each): query row ``h * d_head + r`` is fused row ``h * 3 * d_head + r``; keys are ``d_head`` rows further on."""
    bridge = fused_bridge("bloom")
    n_heads, d_head, d_model = bridge.cfg.n_heads, bridge.cfg.d_head, bridge.cfg.d_model
    sources = split_sources(bridge, "blocks.1.attn", "transformer.h.1.self_attention")
    for part, offset in (("q", 0), ("k", d_head)):
        [source] = sources[f"{part}.weight"]
        assert source.name == "transformer.h.1.self_attention.query_key_value.weight"
        rows = torch.arange(n_heads * d_head)
        fused_rows = rows // d_head * 3 * d_head + rows % d_head + offset
        expected = (fused_rows[:, None] * d_model + torch.arange(d_model)).reshape(-1)
        assert torch.equal(source.indices[source.positions.argsort()], expected)


@pytest.mark.parametrize(
    ("scale", "error"),
    [
        (0.5, "blocks.0.attn: TransformerLens's split_qkv_matrix does not just select fused elements"),
        (2.0, "blocks.0.attn: the traced q/k/v split does not reproduce the bridge's copies"),
    ],
)
def test_a_split_that_computes_instead_of_selecting_is_refused_with_one_clear_error(
    scale, error, fused_bridge, tmp_path
):
    """A declared split that scales its copies cannot be inverted by writing elements back: the export refuses rather
    than write a wrong checkpoint, and the model is left as it was. Halving makes traced indices fractional; doubling
    keeps them whole but points at elements whose values are not the copies'."""
    bridge = fused_bridge("mpt")
    attention = bridge.get_submodule("blocks.0.attn")
    split = attention.split_qkv_matrix

    def scaling_split(original):
        q, k, v = split(original)
        q.weight = torch.nn.Parameter(q.weight * scale)
        return q, k, v

    before = {name: tensor.clone() for name, tensor in bridge.state_dict().items()}
    mask = MaskSet.for_bridge(bridge, ALL_KINDS)
    attention.split_qkv_matrix = scaling_split
    try:
        with pytest.raises(LookupError, match=error):
            export_masked_model(bridge, mask, tmp_path)
    finally:
        attention.split_qkv_matrix = split
    assert all(torch.equal(tensor, before[name]) for name, tensor in bridge.state_dict().items())
