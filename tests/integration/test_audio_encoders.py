"""Audio encoders (HuBERT, Wav2Vec2) read a float waveform: the kit feeds one long enough for the convolutional
feature extractor, and passes at every granularity; compatibility mode, which TransformerLens refuses for audio
encoders, is reported not applicable with TransformerLens's reason."""

from __future__ import annotations

import pytest
import torch
import transformers

from modmask_lens.adapters import UnsupportedArchitecture, waveform_samples
from modmask_lens.masks.config import GRANULARITIES
from modmask_lens.testing import run_conformance
from modmask_lens.testing.conformance import check_gradients, conformance_inputs
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny, tiny_bridge

AUDIO_SIZES = {**TINY_HF_SIZES, "conv_dim": (8,) * 7, "num_conv_pos_embeddings": 16}
"""The tiny text sizes, with 8 channels (not 512) in each of the 7 feature-extractor convolutions (kernels 10, 3, 3,
3, 3, 2, 2; strides 5, 2, 2, 2, 2, 2, 2: the default of both families)."""


@pytest.fixture(scope="module")
def audio_bridge(tmp_path_factory):
    bridges = {}

    def bridge_of(architecture: str):
        if architecture not in bridges:
            torch.manual_seed(0)
            family = architecture.removesuffix("ForCTC").removesuffix("Model")
            config = getattr(transformers, f"{family}Config")(**AUDIO_SIZES)
            model = getattr(transformers, architecture)(config)
            bridges[architecture] = boot_tiny(model, tmp_path_factory.mktemp(architecture))
        return bridges[architecture]

    return bridge_of


@pytest.mark.parametrize("frames", [1, 2, 8, 49])
def test_waveform_samples_is_the_shortest_input_giving_that_many_frames(frames, audio_bridge):
    """Against transformers' own count of the extractor's output frames (``_get_feat_extract_output_lengths``)."""
    bridge = audio_bridge("HubertModel")
    samples = waveform_samples(bridge, frames)
    frames_of = bridge.original_model._get_feat_extract_output_lengths
    assert int(frames_of(torch.tensor(samples))) == frames
    assert int(frames_of(torch.tensor(samples - 1))) == frames - 1


def test_the_kit_runs_an_audio_encoder_on_a_waveform_of_its_frames(audio_bridge):
    bridge = audio_bridge("HubertModel")
    waveform = conformance_inputs(bridge)
    assert waveform.dtype == torch.float32 and waveform.shape == (2, waveform_samples(bridge, 8))
    assert bridge(waveform).shape == (2, 8, 32)  # frames x d_model: a bare encoder returns its hidden states


def test_a_text_model_gets_token_ids_and_no_waveform_length():
    bridge = tiny_bridge()
    tokens = conformance_inputs(bridge)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 8) and int(tokens.max()) < bridge.cfg.d_vocab
    with pytest.raises(UnsupportedArchitecture, match="reads token ids"):
        waveform_samples(bridge, 8)


@pytest.mark.parametrize("architecture", ["HubertModel", "Wav2Vec2ForCTC"])
def test_every_check_passes_and_compatibility_mode_is_not_applicable(architecture, audio_bridge):
    bridge = audio_bridge(architecture)
    results = {result.name: result for result in run_conformance(bridge)}
    failed = [str(result) for result in results.values() if result.applies and not result.passed]
    assert not failed, failed
    compat = results.pop("compat_mode_bit_exact")
    assert not compat.applies and not compat.passed
    assert str(compat).startswith(f"N/A {architecture} compat_mode_bit_exact: {architecture}: TransformerLens does ")
    assert "not supported for audio encoder models" in compat.detail
    assert all(result.applies for result in results.values())
    assert "hf_export_reloads" in results  # the exported folder reloads with transformers and gives the same output


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_gradients_reach_only_the_mask_logits_at_every_granularity(granularity, audio_bridge):
    bridge = audio_bridge("Wav2Vec2Model")
    assert check_gradients(bridge, conformance_inputs(bridge), granularity) is None
