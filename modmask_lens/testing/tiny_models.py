"""Tiny random models for examples and conformance tests: a TransformerLens-native bridge, or a Hugging Face model
saved with a word-level tokenizer and booted offline."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformer_lens.model_bridge import TransformerBridge
from transformers import BertTokenizer, PreTrainedTokenizerFast

from modmask_lens.core.booting import boot_transformers
from modmask_lens.core.random import seeded

SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "bos_token": "<bos>",
    "mask_token": "<mask>",
    "cls_token": "<bos>",
    "sep_token": "<eos>",
}


def placeholder_word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A whitespace tokenizer over ``<unk> <pad> <eos> <bos> <mask> w5 w6 ...`` (``vocab_size`` tokens)."""
    words = ["<unk>", "<pad>", "<eos>", "<bos>", "<mask>"] + [f"w{index}" for index in range(5, vocab_size)]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def placeholder_bert_tokenizer(vocab_size: int) -> BertTokenizer:
    """A BERT tokenizer over ``[PAD] [UNK] [CLS] [SEP] [MASK] w5 w6 ...`` (``vocab_size`` tokens), with BERT's own
    special-token template (``[CLS] text [SEP]``, pairs ``[CLS] a [SEP] b [SEP]``).

    >>> placeholder_bert_tokenizer(40)("w5 w6")["input_ids"]
    [2, 5, 6, 3]
    """
    words = BERT_SPECIAL_TOKENS + [f"w{index}" for index in range(5, vocab_size)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, do_lower_case=False)


def save_tiny(model: nn.Module, directory: str | Path, seed: int = 0, noise: float = 0.05, tokenizer=None) -> None:
    """Perturb every parameter of ``model`` (so zero-initialised biases and unit norm gains matter) and save it as
    safetensors with a word-level tokenizer (or ``tokenizer``) to ``directory``; a model without a vocabulary (a
    vision or spectrogram encoder, which TransformerLens boots without a tokenizer) gets none."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
    model.save_pretrained(directory)
    vocab_size = getattr(model.config.get_text_config(), "vocab_size", None)  # a multimodal one: its text config's
    if tokenizer is None and vocab_size is None:
        return
    (tokenizer or placeholder_word_tokenizer(vocab_size)).save_pretrained(directory)


def boot_tiny(
    model: nn.Module, directory: str | Path, seed: int = 0, noise: float = 0.05, tokenizer=None
) -> TransformerBridge:
    """:func:`save_tiny`, then boot ``directory`` with ``TransformerBridge.boot_transformers``."""
    save_tiny(model, directory, seed, noise, tokenizer)
    return boot_transformers(str(directory), device="cpu")


TINY_HF_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 40,
    "max_position_embeddings": 32,
}
"""Hugging Face config fields of the tiny models of the conformance, encoder and objective tests (most families'
config classes take these names), e.g. ``BertConfig(**TINY_HF_SIZES)``."""

TINY_NATIVE_CONFIG = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "n_ctx": 16, "d_vocab": 40}
"""The dimensions of the tiny TransformerLens-native models of the examples and tests."""


def tiny_bridge(seed: int = 0) -> TransformerBridge:
    """A 2-layer TransformerLens-native bridge (``d_model`` 32, 4 heads, ``d_mlp`` 64, vocabulary 40, context 16),
    initialised from ``seed`` without touching torch's global generator: the model of the docstring examples.

    >>> bridge = tiny_bridge()
    >>> bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_vocab
    (2, 4, 40)
    """
    with seeded(seed):
        return TransformerBridge.boot_native(TINY_NATIVE_CONFIG | {"normalization_type": "LN", "act_fn": "gelu"})
