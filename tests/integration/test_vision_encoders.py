"""Encoders without a vocabulary that read no waveform: vision transformers (ViT, DeiT) read an image and the Audio
Spectrogram Transformer a spectrogram, both of a shape their config fixes. The kit feeds them one and passes at every
granularity; compatibility mode, whose weight processing TransformerLens built for a text embedding and
unembedding, is reported not applicable with TransformerLens's message."""

from __future__ import annotations

import pytest
import torch
import transformers

from modmask_lens.adapters import feature_shape, reads_image, reads_spectrogram, reads_waveform
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import conformance_inputs
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

pytestmark = pytest.mark.integration

SIZES = {
    "DeiTForImageClassification": {"image_size": 32, "patch_size": 16},
    "ViTModel": {"image_size": 32, "patch_size": 8},
    "ASTForAudioClassification": {"max_length": 36, "num_mel_bins": 26},
}
"""Tiny inputs: 4 and 16 patches of an image, 3 by 2 patches of a spectrogram (AST's patches of 16 every 10)."""
EXPECTED_INPUT = {
    "DeiTForImageClassification": (3, 32, 32),
    "ViTModel": (3, 32, 32),
    "ASTForAudioClassification": (36, 26),
}


@pytest.fixture(scope="module", params=list(SIZES))
def encoder(request, tmp_path_factory):
    architecture = request.param
    torch.manual_seed(0)
    config_class = getattr(transformers, architecture).config_class
    sizes = {name: value for name, value in TINY_HF_SIZES.items() if name not in ("vocab_size",)}
    model = getattr(transformers, architecture)(config_class(**sizes, **SIZES[architecture]))
    return architecture, boot_tiny(model, tmp_path_factory.mktemp(architecture))


def test_the_kit_feeds_the_input_the_config_fixes_and_the_bridge_computes_what_transformers_does(encoder):
    architecture, bridge = encoder
    inputs = conformance_inputs(bridge)
    assert inputs.dtype == torch.float32 and tuple(inputs.shape) == (2, *EXPECTED_INPUT[architecture])
    assert feature_shape(bridge, 8) == EXPECTED_INPUT[architecture]
    assert not reads_waveform(bridge)
    assert reads_spectrogram(bridge) == architecture.startswith("AST") != reads_image(bridge)
    with torch.no_grad():
        own = bridge.original_model(inputs)
        expected = own.logits if getattr(own, "logits", None) is not None else own.last_hidden_state
        torch.testing.assert_close(bridge(inputs), expected)


def test_every_check_passes_and_compatibility_mode_is_not_applicable(encoder):
    architecture, bridge = encoder
    results = {result.name: result for result in run_conformance(bridge)}
    failed = [str(result) for result in results.values() if result.applies and not result.passed]
    assert not failed, failed
    compat = results.pop("compat_mode_bit_exact")
    assert not compat.applies and not compat.passed
    assert str(compat).startswith(f"N/A {architecture} compat_mode_bit_exact: {architecture}: TransformerLens does ")
    assert all(result.applies for result in results.values())
    assert {"hf_export_reloads", "head_off_equals_zeroed_hook_z", "neuron_off_equals_zeroed_hook_post"} <= set(results)
