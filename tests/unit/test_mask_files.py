"""Mask files round-trip exactly and refuse other models, truncation and tampering."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import boot_gpt2, boot_native
from safetensors import safe_open
from safetensors.torch import save_file

from modmask_lens import MaskConfig, MaskFileError, MaskSet, ModelMismatch, load_masks, masked, save_masks
from modmask_lens.core.checkpoint import METADATA_KEY
from modmask_lens.testing.tiny_models import tiny_bridge


@pytest.fixture
def trained_like(gpt2_bridge):
    masks = MaskSet.for_bridge(gpt2_bridge, MaskConfig(granularity="weight"), name="jump")
    generator = torch.Generator().manual_seed(0)
    for logit in masks.logits.values():
        logit.data = torch.randn(logit.shape, generator=generator)
    return masks


def test_save_load_round_trip_is_exact(gpt2_bridge, trained_like, tmp_path, tokens):
    path = save_masks(trained_like, tmp_path / "jump.safetensors")
    loaded = load_masks(path, gpt2_bridge)
    assert loaded.name == "jump" and loaded.config == trained_like.config and loaded.origin == trained_like.origin
    for name, logit in trained_like.logits.items():
        assert torch.equal(loaded.logits[name], logit)
    with masked(gpt2_bridge, trained_like):
        expected = gpt2_bridge(tokens)
    with masked(gpt2_bridge, loaded):
        assert torch.equal(gpt2_bridge(tokens), expected)


def test_metadata_records_model_adapter_mode_and_version(trained_like, tmp_path):
    path = save_masks(trained_like, tmp_path / "jump.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    assert metadata["adapter"] == "transformer_lens" and metadata["processing_mode"] == "raw"
    assert metadata["mask_config"]["granularity"] == "weight" and metadata["name"] == "jump"
    assert len(metadata["model"]["weights_sha256"]) == 64 and metadata["library_version"]


@pytest.mark.parametrize("other", ["other_seed", "other_family", "other_shape"])
def test_loading_onto_another_model_fails_clearly(trained_like, tmp_path, other):
    path = save_masks(trained_like, tmp_path / "jump.safetensors")
    bridge = {
        "other_seed": lambda: boot_gpt2(tmp_path / "seed1", seed=1),
        "other_family": lambda: boot_native(),
        "other_shape": lambda: boot_gpt2(tmp_path / "deeper", n_layer=3),
    }[other]()
    with pytest.raises(ModelMismatch, match="another model|adapter"):
        load_masks(path, bridge)


def test_truncated_file_fails_clearly(gpt2_bridge, trained_like, tmp_path):
    path = save_masks(trained_like, tmp_path / "jump.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MaskFileError, match="truncated"):
        load_masks(path, gpt2_bridge)


def test_tampered_logit_shapes_fail_clearly(gpt2_bridge, trained_like, tmp_path):
    path = save_masks(trained_like, tmp_path / "jump.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    first = next(iter(tensors))
    tensors[first] = tensors[first][:1]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(MaskFileError, match="misshapen"):
        load_masks(path, gpt2_bridge)


def test_a_file_that_is_not_a_mask_file_is_refused(gpt2_bridge, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(MaskFileError, match="not written by modmask-lens"):
        load_masks(path, gpt2_bridge)


def test_applying_a_mask_after_the_weights_changed_fails(gpt2_bridge, trained_like):
    with torch.no_grad():
        gpt2_bridge.get_parameter("blocks.0.attn.q._original_component.weight")[0, 0] += 1.0
    with pytest.raises(ModelMismatch, match="weights_sha256"), masked(gpt2_bridge, trained_like):
        pass


def test_a_mask_made_with_a_replaced_hand_written_adapter_still_loads(trained_like, gpt2_bridge):
    """GPT-2 had a hand-written ``gpt2`` adapter before adapters were derived from TransformerLens's map."""
    import dataclasses

    dataclasses.replace(trained_like.origin, adapter="gpt2").check(gpt2_bridge, trained_like.members)
    with pytest.raises(ModelMismatch, match="made with the 'bert' adapter"):
        dataclasses.replace(trained_like.origin, adapter="bert").check(gpt2_bridge, trained_like.members)


def test_a_model_without_a_checkpoint_folder_hashes_its_weights_whatever_the_working_directory(tmp_path, monkeypatch):
    """A native bridge has no checkpoint folder: a ``.safetensors`` file in the working directory is not its
    checkpoint, so every tensor stays in the weights hash and a model with other weights is refused."""
    monkeypatch.chdir(tmp_path)
    save_file({"x": torch.zeros(1)}, "unrelated.safetensors")
    path = save_masks(MaskSet.for_bridge(tiny_bridge(seed=0), name="x"), tmp_path / "x.safetensors")
    assert "fresh_tensors" not in load_masks(path, tiny_bridge(seed=0)).origin.model
    with pytest.raises(ModelMismatch, match="weights_sha256"):
        load_masks(path, tiny_bridge(seed=1))


def test_loaded_logits_sit_on_the_device_of_the_model_they_are_loaded_onto(tmp_path, monkeypatch):
    """Files are read on the CPU; the logits stayed there for a model on another device, so a resumed GPU run drew
    its mask noise on the CPU, unlike the uninterrupted run whose fresh logits sit on the model's device. The meta
    device stands in for a GPU; its weights cannot be hashed, so the model check is skipped."""
    from modmask_lens.masks.identity import MaskOrigin

    bridge = tiny_bridge()
    save_masks(MaskSet.for_bridge(bridge, MaskConfig(granularity="head")), tmp_path / "m.safetensors")
    bridge.to("meta")
    monkeypatch.setattr(MaskOrigin, "check", lambda *arguments, **options: None)
    monkeypatch.setattr("modmask_lens.masks.io.verify_checksum", lambda *arguments: None)
    loaded = load_masks(tmp_path / "m.safetensors", bridge)
    assert {logit.device.type for logit in loaded.logits.values()} == {"meta"}
