"""A mask that covers tied embeddings unties them in the export, and the reloaded model must compute the masked
bridge's logits. Switch Transformers scales the decoder output by ``d_model ** -0.5`` only while its embeddings are
tied, so the export folds that scale into the unembedding. Florence-2's language model ties its encoder's and
decoder's ``embed_tokens`` to ``shared`` by its own (nested) config, so the export unties that config too."""

from __future__ import annotations

import torch
from conftest import tiny_switch
from transformers import Florence2Config, Florence2ForConditionalGeneration

from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import boot_tiny


def test_a_masked_switch_transformer_exports_untied_and_reloads_with_the_masked_logits(tmp_path):
    bridge = tiny_switch(tmp_path)
    assert bridge.original_model.config.tie_word_embeddings
    (result,) = run_conformance(bridge, checks=["hf_export_reloads"])
    assert result.passed, str(result)


TINY_FLORENCE2 = Florence2Config(
    text_config={
        "vocab_size": 64,
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
    },
    vision_config={
        "depths": [1, 1, 1, 1],
        "embed_dim": [8, 8, 16, 32],
        "num_heads": [1, 1, 2, 4],
        "num_groups": [1, 1, 2, 4],
        "window_size": 2,
        "projection_dim": 32,
    },
    image_token_id=63,
)


def test_a_masked_florence2_unties_its_language_models_nested_embedding_tie_and_reloads_with_the_masked_logits(
    tmp_path,
):
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(TINY_FLORENCE2)
    language_model = model.model.language_model
    assert model.config.text_config.tie_word_embeddings
    assert language_model.encoder.embed_tokens.weight is language_model.shared.weight
    bridge = boot_tiny(model, tmp_path)
    (result,) = run_conformance(bridge, checks=["hf_export_reloads"])
    assert result.passed, str(result)
