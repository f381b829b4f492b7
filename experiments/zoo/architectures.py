"""Fresh Hugging Face causal LMs for the zoo, built from an :class:`~experiments.zoo.recipes.Architecture`."""

from __future__ import annotations

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from experiments.zoo.recipes import Architecture


def build_model(architecture: Architecture, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A randomly initialised model of ``architecture`` whose vocabulary and special ids match ``tokenizer``."""
    special_ids = {
        "bos_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    d_mlp = architecture.d_mlp or 4 * architecture.d_model
    if architecture.family == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=architecture.n_positions,
            n_embd=architecture.d_model,
            n_layer=architecture.n_layers,
            n_head=architecture.n_heads,
            n_inner=d_mlp,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            **special_ids,
        )
        return GPT2LMHeadModel(config)
    if architecture.family == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=architecture.n_positions,
            hidden_size=architecture.d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=architecture.n_layers,
            num_attention_heads=architecture.n_heads,
            num_key_value_heads=architecture.n_key_value_heads or architecture.n_heads,
            tie_word_embeddings=True,
            **special_ids,
        )
        return LlamaForCausalLM(config)
    raise ValueError(f"unknown architecture family {architecture.family!r}; use 'gpt2' or 'llama'")
