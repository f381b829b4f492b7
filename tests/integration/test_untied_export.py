"""Switch Transformers scales the decoder output by ``d_model ** -0.5`` only while its embeddings are tied; a mask
that covers the embeddings unties them in the export, which must fold that scale into the unembedding so the
reloaded model computes the masked bridge's logits."""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

from modmask_lens.testing import run_conformance
from modmask_lens.testing.tiny_models import save_tiny

TINY_SWITCH = SwitchTransformersConfig(
    vocab_size=40,
    d_model=32,
    d_ff=64,
    d_kv=8,
    num_heads=4,
    num_layers=2,
    num_decoder_layers=2,
    num_experts=4,
    num_sparse_encoder_layers=1,
    num_sparse_decoder_layers=1,
    decoder_start_token_id=2,
    pad_token_id=0,
    eos_token_id=2,
)


def test_a_masked_switch_transformer_exports_untied_and_reloads_with_the_masked_logits(tmp_path):
    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(TINY_SWITCH)
    assert model.config.tie_word_embeddings
    save_tiny(model, tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # Switch's TransformerLens adapter reads only this
    (tmp_path / "model.safetensors").unlink()
    bridge = TransformerBridge.boot_transformers(str(tmp_path), device="cpu")
    (result,) = run_conformance(bridge, checks=["hf_export_reloads"])
    assert result.passed, str(result)
