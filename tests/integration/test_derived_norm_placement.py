"""The derived adapter reads pre- or post-norm blocks from the order in which the bridge's forward pass enters block
0's ``ln1`` and ``attn``: TransformerLens's map does not say it (RoBERTa's post-attention norm sits in its ``ln1``
slot)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
    OPTConfig,
    OPTForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from modmask_lens.adapters import DerivedAdapter, adapter_for
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

OPT_SIZES = {k: v for k, v in TINY_HF_SIZES.items() if k != "intermediate_size"} | {"ffn_dim": 64}
MODELS = {
    "roberta": (lambda: RobertaForMaskedLM(RobertaConfig(**TINY_HF_SIZES)), "post"),
    "gpt1": (lambda: OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=40)), "post"),
    "opt": (lambda: OPTForCausalLM(OPTConfig(word_embed_proj_dim=32, **OPT_SIZES)), "pre"),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **TINY_HF_SIZES)), "pre"),
    "gptj_parallel": (
        lambda: GPTJForCausalLM(GPTJConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=40, rotary_dim=4, n_inner=64)),
        "pre",
    ),
}
"""Post-norm: RoBERTa (the norm inside its attention module) and GPT-1; pre-norm: OPT, Llama, and GPT-J's parallel
block. (OPT-350m's post-norm ``do_layer_norm_before=False`` boots but its forward pass fails in TransformerLens 4.3:
it has no final norm, which the bridge expects.)"""


@pytest.mark.parametrize("family", sorted(MODELS))
def test_norm_placement_is_read_from_the_forward_pass_and_leaves_the_model_as_it_was(family, tmp_path):
    build, expected = MODELS[family]
    bridge = boot_tiny(build(), tmp_path)
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = bridge(tokens)
    hooks_before = [len(module._forward_pre_hooks) for module in bridge.modules()]
    adapter = DerivedAdapter.for_bridge(bridge)
    assert adapter.norm_placement == expected
    with torch.no_grad():
        assert torch.equal(bridge(tokens), before)
    assert [len(module._forward_pre_hooks) for module in bridge.modules()] == hooks_before


def test_a_post_norm_family_puts_the_norm_each_reader_reads_through(tmp_path):
    """In post-norm blocks the heads of block 1 read block 0's output norm (``ln2``) and the MLP reads ``ln1``."""
    bridge = boot_tiny(MODELS["roberta"][0](), tmp_path)
    adapter = adapter_for(bridge)
    assert adapter.reader_norm("head", 1) == ("ln2.w", 0)
    assert adapter.reader_norm("mlp", 1) == ("ln1.w", 1)
