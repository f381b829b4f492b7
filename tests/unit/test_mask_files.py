"""Mask files round-trip exactly and refuse other models, truncation and tampering."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import boot_gpt2, boot_native
from safetensors import safe_open
from safetensors.torch import save_file
from transformer_lens.model_bridge import TransformerBridge
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
    Gemma2Config,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MptConfig,
    MptForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
)

from modmask_lens import MaskConfig, MaskFileError, MaskSet, ModelMismatch, load_masks, masked, save_masks
from modmask_lens.core.checkpoint import (
    CHECKSUM_FIELD,
    METADATA_KEY,
    content_sha256,
)
from modmask_lens.masks.identity import model_differences
from modmask_lens.masks.model_config import FIELDS_ADDED_LATER, ModelConfigUnchecked, comparable_models, model_config
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny, tiny_bridge


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


def _same_weights_other_config(source, target, **changes) -> TransformerBridge:
    """The model saved in ``source``, copied to ``target`` with its config.json's ``changes``, booted again: the same
    weights, another computation."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | changes))
    return TransformerBridge.boot_transformers(str(target), device="cpu")


def test_a_mask_is_refused_on_the_same_weights_under_another_activation_and_norm_eps(tmp_path, tokens):
    """The weights hash alone let a mask trained on a gelu_new GPT-2 load onto the same weights run with relu and
    layer-norm eps 0.1, a model whose logits differ."""
    trained_on = boot_gpt2(tmp_path / "gelu")
    other = _same_weights_other_config(tmp_path / "gelu", tmp_path / "relu", activation_function="relu")
    assert not torch.allclose(trained_on(tokens), other(tokens))
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "jump.safetensors")
    with pytest.raises(ModelMismatch, match=r"config \(act_fn: gelu_new in the mask, relu here\) differ"):
        load_masks(path, other)
    eps = _same_weights_other_config(tmp_path / "gelu", tmp_path / "eps", layer_norm_epsilon=0.1)
    with pytest.raises(ModelMismatch, match=r"config \(eps: 1e-05 in the mask, 0.1 here\) differ"):
        load_masks(path, eps)
    assert load_masks(path, trained_on).origin.model["config"]["act_fn"] == "gelu_new"


def _written_before(path, *fields: str) -> None:
    """Rewrite the mask file at ``path`` as modmask-lens wrote it before model records held ``config`` (no
    ``fields``) or the config's ``fields`` (the checksum recomputed, as that version wrote it over its own header)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    for field in fields:
        del metadata["model"]["config"][field]
    if not fields:
        del metadata["model"]["config"]
    del metadata[CHECKSUM_FIELD]
    metadata[CHECKSUM_FIELD] = content_sha256(tensors, metadata)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})


def test_a_mask_file_written_before_model_configs_loads_warning_that_the_config_went_unchecked(tmp_path):
    """Files written before the config was recorded still load (their weights and dimensions compared), with a
    warning that names the missing entry and the settings left unchecked; other weights are still refused."""
    bridge = boot_gpt2(tmp_path / "gelu")
    path = save_masks(MaskSet.for_bridge(bridge, name="jump"), tmp_path / "jump.safetensors")
    _written_before(path)
    with pytest.warns(ModelConfigUnchecked, match=r"records no model config \(the model's 'config' entry.*act_fn, "):
        loaded = load_masks(path, bridge)
    assert "config" not in loaded.origin.model
    with pytest.warns(ModelConfigUnchecked), pytest.raises(ModelMismatch, match="weights_sha256 differ"):
        load_masks(path, boot_gpt2(tmp_path / "seed1", seed=1))


def test_masks_of_one_model_combine_when_one_file_predates_model_configs(tmp_path):
    bridge = boot_gpt2(tmp_path / "gelu")
    old = save_masks(MaskSet.for_bridge(bridge, name="old"), tmp_path / "old.safetensors")
    _written_before(old)
    with pytest.warns(ModelConfigUnchecked):
        combined = load_masks(old, bridge).binary() & MaskSet.for_bridge(bridge, name="new").binary()
    assert combined.count == MaskSet.for_bridge(bridge).binary().count
    relu = _same_weights_other_config(tmp_path / "gelu", tmp_path / "relu", activation_function="relu")
    with pytest.raises(ValueError, match=r"config \(act_fn: gelu_new in 'new', relu in 'relu'\) differ"):
        _ = MaskSet.for_bridge(bridge, name="new").binary() & MaskSet.for_bridge(relu, name="relu").binary()


def test_the_recorded_config_is_the_same_from_either_transformers_layout_of_the_rotary_base(tmp_path):
    """transformers 5 keeps ``rope_theta`` inside ``rope_parameters``, 4 at the config's top level (``rope_scaling``
    None); the record is one, its numbers floats."""
    torch.manual_seed(0)
    config = LlamaConfig(
        **TINY_HF_SIZES, num_key_value_heads=2, rope_parameters={"rope_theta": 500000, "rope_type": "default"}
    )
    bridge = boot_tiny(LlamaForCausalLM(config), tmp_path / "llama")
    written_by_5 = model_config(bridge)
    hf_config = bridge.original_model.config
    hf_config.rope_parameters, hf_config.rope_theta = None, 500000
    assert model_config(bridge) == written_by_5
    assert written_by_5["rope_theta"] == 500000.0 and written_by_5["act_fn"] == "silu"


class _Transformers4Config(SimpleNamespace):
    """A Hugging Face config as transformers 4 lays one out (settings as attributes, no ``rope_parameters``)."""

    def get_text_config(self):
        return self


GEMMA3_SLIDING_LAYERS = TINY_HF_SIZES | {
    "num_key_value_heads": 2,
    "head_dim": 8,
    "layer_types": ["sliding_attention", "full_attention"],
    "sliding_window": 16,
    "query_pre_attn_scalar": 64,
}
"""A Gemma 3 text config whose layers take turns at sliding-window and full attention, each with its own rotary base
(the full-attention one scaled linearly by 8)."""


def _gemma3_written_by(transformers_major: int):
    """:data:`GEMMA3_SLIDING_LAYERS` as transformers 5 holds it (the rotary settings nested in ``rope_parameters`` by
    layer type) or as transformers 4 did (a global ``rope_theta``, ``rope_local_base_freq`` for the sliding layers,
    ``rope_scaling`` for the full-attention ones)."""
    legacy = {
        "rope_theta": 1000000,
        "rope_local_base_freq": 10000,
        "rope_scaling": {"rope_type": "linear", "factor": 8},
    }
    if transformers_major == 5:
        return Gemma3TextConfig(**GEMMA3_SLIDING_LAYERS, **legacy)  # converted as transformers 5 converts old files
    return _Transformers4Config(**GEMMA3_SLIDING_LAYERS, **legacy)


@pytest.fixture(scope="module")
def rotary_bridge(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(**TINY_HF_SIZES, num_key_value_heads=2)
    return boot_tiny(LlamaForCausalLM(config), tmp_path_factory.mktemp("llama"))


def test_a_model_with_a_rotary_base_per_layer_type_records_the_same_bases_under_either_transformers(
    rotary_bridge, monkeypatch
):
    """transformers 5 nests Gemma 3's rotary bases in ``rope_parameters`` by layer type; transformers 4 kept the
    full-attention one in ``rope_theta`` and the sliding one in ``rope_local_base_freq``. A file written under 4
    recorded the first alone and was refused under 5."""
    records = []
    for major in (4, 5):
        monkeypatch.setattr(rotary_bridge.original_model, "config", _gemma3_written_by(major))
        records.append(model_config(rotary_bridge))
    assert records[0]["rope_theta"] == records[1]["rope_theta"]
    assert records[1]["rope_theta"] == {"full_attention": 1000000.0, "sliding_attention": 10000.0}


def test_one_rotary_base_for_every_layer_type_records_as_one_number_also_in_files_that_listed_it_per_type(
    rotary_bridge, monkeypatch
):
    """Olmo 3's transformers 5 config lists one base per layer type where transformers 4 held one ``rope_theta``;
    files written under 5 before records collapsed equal bases list them per type, and still load."""
    monkeypatch.setattr(
        rotary_bridge.original_model,
        "config",
        Gemma3TextConfig(**GEMMA3_SLIDING_LAYERS, rope_theta=500000, rope_local_base_freq=500000),
    )
    written_by_5 = model_config(rotary_bridge)
    monkeypatch.setattr(rotary_bridge.original_model, "config", _Transformers4Config(rope_theta=500000))
    assert model_config(rotary_bridge)["rope_theta"] == written_by_5["rope_theta"] == 500000.0
    listed_per_type = {"config": written_by_5 | {"rope_theta": {"full_attention": 5e5, "sliding_attention": 5e5}}}
    first, second = comparable_models(listed_per_type, {"config": written_by_5}, "mask.safetensors")
    assert first == second


def test_rope_scaling_attention_scale_and_sliding_windows_are_recorded_alike_under_either_transformers(
    rotary_bridge, monkeypatch
):
    """Settings that change what the same weights compute beyond the first seven: the rotary scaling (transformers
    4's ``rope_scaling`` with the old key ``type``, 5's ``rope_parameters``; 5 fills a yarn scaling's original
    length in from ``max_position_embeddings``), an attention scale the config sets (Gemma's
    ``query_pre_attn_scalar``: scores divided by its square root) and sliding windows by layer."""
    records = []
    for major in (4, 5):
        monkeypatch.setattr(rotary_bridge.original_model, "config", _gemma3_written_by(major))
        records.append(model_config(rotary_bridge))
    assert records[0] == records[1]
    assert records[1]["rope_scaling"] == {
        "full_attention": {"factor": 8.0, "rope_type": "linear"},
        "sliding_attention": None,
    }
    assert records[1]["attn_scale"] == 8.0 and records[1]["sliding_window"] == [16.0, None]
    yarn = {"rope_theta": 500000, "rope_scaling": {"type": "yarn", "factor": 4}}
    monkeypatch.setattr(
        rotary_bridge.original_model,
        "config",
        _Transformers4Config(**yarn, max_position_embeddings=TINY_HF_SIZES["max_position_embeddings"]),
    )
    written_by_4 = model_config(rotary_bridge)
    monkeypatch.setattr(
        rotary_bridge.original_model, "config", LlamaConfig(**TINY_HF_SIZES, num_key_value_heads=2, **yarn)
    )
    assert model_config(rotary_bridge) == written_by_4
    assert written_by_4["rope_scaling"] == {
        "factor": 4.0,
        "original_max_position_embeddings": 32.0,
        "rope_type": "yarn",
    }
    assert written_by_4["attn_scale"] is None and written_by_4["sliding_window"] is None


GEMMA2_WINDOWS = TINY_HF_SIZES | {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 16}
"""A tiny Gemma 2 config: its layers take turns at sliding-window and full attention, the first sliding."""


def test_a_gemma_2_records_its_alternating_windows_alike_under_transformers_4_before_layer_types_and_5(
    rotary_bridge, monkeypatch
):
    """transformers 5 lists Gemma 2's layer types (filled in where config.json has none); transformers 4's releases
    before ``layer_types`` slid the even layers' windows and said so nowhere in the config. A mask written under
    one was refused under the other (``sliding_window``: 16.0 against [16.0, None])."""
    records = []
    for config in (Gemma2Config(**GEMMA2_WINDOWS), _Transformers4Config(model_type="gemma2", **GEMMA2_WINDOWS)):
        monkeypatch.setattr(rotary_bridge.original_model, "config", config)
        records.append(model_config(rotary_bridge))
    assert records[0]["sliding_window"] == records[1]["sliding_window"] == [16.0, None]


def test_a_qwen_2_records_its_windowed_layers_alike_under_transformers_4_before_layer_types_and_5(
    rotary_bridge, monkeypatch
):
    """Qwen 2's window serves the layers from ``max_window_layers`` on: transformers 5 lists them in its layer types,
    4's releases before them read ``max_window_layers`` in the attention. A mask written under one was refused under
    the other (``sliding_window``: 16.0 against [None, 16.0])."""
    windows = TINY_HF_SIZES | {"num_key_value_heads": 2, "use_sliding_window": True, "sliding_window": 16}
    records = []
    for config in (
        Qwen2Config(**windows, max_window_layers=1),
        _Transformers4Config(model_type="qwen2", **windows, max_window_layers=1),
    ):
        monkeypatch.setattr(rotary_bridge.original_model, "config", config)
        records.append(model_config(rotary_bridge))
    assert records[0]["sliding_window"] == records[1]["sliding_window"] == [None, 16.0]


def test_a_gemma_2_file_written_under_transformers_4_before_layer_types_loads_its_window_compared(
    rotary_bridge, monkeypatch
):
    """Records before the third group of later fields read a transformers 4 Gemma 2 config without layer types as one
    window for every layer: such a file loads on the same model, its window compared with the sliding layers' and
    the full-attention layers named unchecked; another window is still refused."""
    monkeypatch.setattr(rotary_bridge.original_model, "config", Gemma2Config(**GEMMA2_WINDOWS))
    current = {"config": model_config(rotary_bridge)}
    before_the_third_group = {
        key: value for key, value in current["config"].items() if key not in FIELDS_ADDED_LATER[2]
    }
    written_by_4 = {"config": before_the_third_group | {"sliding_window": 16.0}}
    with pytest.warns(ModelConfigUnchecked, match=r"without sliding_window of full-attention layers, lm_head_"):
        recorded, now = comparable_models(written_by_4, current, "mask.safetensors")
    assert model_differences(recorded, now) == []
    other_window = {"config": before_the_third_group | {"sliding_window": 8.0}}
    with pytest.warns(ModelConfigUnchecked, match="without lm_head_multiplier"):
        recorded, now = comparable_models(other_window, current, "mask.safetensors")
    assert model_differences(recorded, now) == ["config (sliding_window: 8.0 in the mask, [16.0, None] here)"]


def test_a_mask_is_refused_on_the_same_weights_under_another_rope_scaling_attention_scale_or_window(
    tmp_path, tokens, monkeypatch
):
    """The weights hash and the first seven settings let a mask load onto the same weights run with a rotary scaling
    (logits differ), another attention scale or other sliding windows."""
    torch.manual_seed(0)
    trained_on = boot_tiny(LlamaForCausalLM(LlamaConfig(**TINY_HF_SIZES, num_key_value_heads=2)), tmp_path / "base")
    scaled = _same_weights_other_config(
        tmp_path / "base",
        tmp_path / "scaled",
        rope_parameters={"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0},
    )
    assert not torch.allclose(trained_on(tokens), scaled(tokens))
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "jump.safetensors")
    with pytest.raises(
        ModelMismatch, match=r"rope_scaling: None in the mask, \{'factor': 4.0, 'rope_type': 'linear'\} here"
    ):
        load_masks(path, scaled)
    gemma = _gemma3_written_by(5)
    monkeypatch.setattr(trained_on.original_model, "config", gemma)
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "gemma.safetensors")
    monkeypatch.setattr(gemma, "query_pre_attn_scalar", 256)
    with pytest.raises(ModelMismatch, match=r"attn_scale: 8.0 in the mask, 16.0 here"):
        load_masks(path, trained_on)
    monkeypatch.setattr(gemma, "query_pre_attn_scalar", 64)
    monkeypatch.setattr(gemma, "layer_types", ["full_attention", "sliding_attention"])
    with pytest.raises(ModelMismatch, match=r"sliding_window: \[16.0, None\] in the mask, \[None, 16.0\] here"):
        load_masks(path, trained_on)


def test_the_share_of_rotated_dimensions_is_recorded_alike_under_either_transformers(rotary_bridge, monkeypatch):
    """transformers 5 keeps ``partial_rotary_factor`` among the rotary settings, 4 beside them (Phi's
    ``partial_rotary_factor``, GPT-NeoX's ``rotary_pct``); GPT-J's ``rotary_dim`` counts dimensions (4 of the tiny
    Llama's 8 per head)."""
    layouts = {
        0.5: [PhiConfig(**TINY_HF_SIZES, partial_rotary_factor=0.5), _Transformers4Config(partial_rotary_factor=0.5)],
        0.25: [GPTNeoXConfig(**TINY_HF_SIZES, rotary_pct=0.25), _Transformers4Config(rotary_pct=0.25)],
    }
    for share, configs in layouts.items():
        records = []
        for config in configs:
            monkeypatch.setattr(rotary_bridge.original_model, "config", config)
            records.append(model_config(rotary_bridge))
        assert records[0]["partial_rotary_factor"] == records[1]["partial_rotary_factor"] == share
    monkeypatch.setattr(rotary_bridge.original_model, "config", _Transformers4Config(rotary_dim=4))
    assert model_config(rotary_bridge)["partial_rotary_factor"] == 0.5
    monkeypatch.setattr(rotary_bridge.original_model, "config", _Transformers4Config(rope_theta=10000))
    assert model_config(rotary_bridge)["partial_rotary_factor"] == 1.0


def test_a_logit_scale_written_as_a_word_is_recorded_as_written(rotary_bridge, monkeypatch):
    """MPT's configs may hold ``logit_scale: "inv_sqrt_d_model"`` (for its remote code), where Cohere's is the number
    the logits are multiplied by: a word is recorded as written, not divided by."""
    monkeypatch.setattr(
        rotary_bridge.original_model, "config", _Transformers4Config(rope_theta=10000, logit_scale="inv_sqrt_d_model")
    )
    assert model_config(rotary_bridge)["logits_scaling"] == "inv_sqrt_d_model"
    monkeypatch.setattr(rotary_bridge.original_model, "config", _Transformers4Config(rope_theta=10000, logit_scale=4))
    assert model_config(rotary_bridge)["logits_scaling"] == 0.25


def _tiny_phi(directory) -> TransformerBridge:
    torch.manual_seed(0)
    return boot_tiny(PhiForCausalLM(PhiConfig(**TINY_HF_SIZES, partial_rotary_factor=0.5)), directory)


def _tiny_granite(directory) -> TransformerBridge:
    torch.manual_seed(0)
    return boot_tiny(GraniteForCausalLM(GraniteConfig(**TINY_HF_SIZES, num_key_value_heads=2)), directory)


def _tiny_cohere(directory) -> TransformerBridge:
    torch.manual_seed(0)
    return boot_tiny(CohereForCausalLM(CohereConfig(**TINY_HF_SIZES, num_key_value_heads=2)), directory)


def _tiny_gemma3_attending_in_full(directory) -> TransformerBridge:
    """A tiny Gemma 3 without sliding-window layers: under ``use_bidirectional_attention`` transformers halves the
    window of those, which the record of one with them already tells apart."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(**GEMMA3_SLIDING_LAYERS | {"layer_types": ["full_attention", "full_attention"]})
    return boot_tiny(Gemma3ForCausalLM(config), directory)


@pytest.mark.parametrize(
    ("boot", "changes", "refusal"),
    [
        (
            _tiny_phi,
            {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 1.0}},
            r"partial_rotary_factor: 0.5 in the mask, 1.0 here",
        ),
        (boot_gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx: False in the mask"),
        (boot_gpt2, {"scale_attn_weights": False}, r"scale_attn_weights: True in the mask, False here"),
        (_tiny_granite, {"embedding_multiplier": 12.0}, r"embedding_multiplier: 1.0 in the mask, 12.0 here"),
        (_tiny_granite, {"residual_multiplier": 0.22}, r"residual_multiplier: 1.0 in the mask, 0.22 here"),
        (_tiny_granite, {"logits_scaling": 8.0}, r"logits_scaling: 1.0 in the mask, 8.0 here"),
        (_tiny_cohere, {"logit_scale": 0.5}, r"logits_scaling: 16.0 in the mask, 2.0 here"),
        (
            _tiny_gemma3_attending_in_full,
            {"use_bidirectional_attention": True},
            "use_bidirectional_attention: False in the mask",
        ),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_a_mask_is_refused_on_the_same_weights_under_another_rotary_share_attention_scaling_multiplier_or_mask(
    tmp_path, tokens, boot, changes, refusal
):
    """The settings before let a mask load onto the same weights that rotate another share of each head (Phi's
    ``partial_rotary_factor``), scale attention scores otherwise (GPT-2's switches), scale embeddings, sub-layer
    outputs or logits otherwise (Granite's multipliers, Cohere's ``logit_scale``) or attend both ways (Gemma 3's
    ``use_bidirectional_attention``). Each changes the logits but GPT-2's ``scale_attn_weights``, which
    TransformerLens 4.3's bridge does not read (its attention always divides by the square root of the head
    dimension; Hugging Face's own forward divides by nothing): the record follows the model's definition."""
    trained_on = boot(tmp_path / "base")
    other = _same_weights_other_config(tmp_path / "base", tmp_path / "other", **changes)
    read_by_the_bridge = "scale_attn_weights" not in changes
    assert torch.allclose(trained_on(tokens), other(tokens)) != read_by_the_bridge
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "jump.safetensors")
    with pytest.raises(ModelMismatch, match=refusal):
        load_masks(path, other)
    load_masks(path, trained_on)


TINY_MPT = MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=40, max_seq_len=32, expansion_ratio=2)
"""A tiny MPT (ALiBi positions), whose ``attn_config`` a change must give whole: config.json holds it as one dict."""


def _tiny_falcon_h1(directory) -> TransformerBridge:
    torch.manual_seed(0)
    config = FalconH1Config(
        **TINY_HF_SIZES, num_key_value_heads=2, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_state=8, mamba_d_conv=2
    )
    return boot_tiny(FalconH1ForCausalLM(config), directory)


def _tiny_mpt(directory) -> TransformerBridge:
    torch.manual_seed(0)
    return boot_tiny(MptForCausalLM(TINY_MPT), directory)


def _tiny_llama(directory) -> TransformerBridge:
    torch.manual_seed(0)
    return boot_tiny(LlamaForCausalLM(LlamaConfig(**TINY_HF_SIZES, num_key_value_heads=2)), directory)


@pytest.mark.parametrize(
    ("boot", "changes", "refusal"),
    [
        (_tiny_falcon_h1, {"lm_head_multiplier": 0.5}, r"lm_head_multiplier: 1.0 in the mask, 0.5 here"),
        (_tiny_falcon_h1, {"key_multiplier": 3.0}, r"key_multiplier: 1.0 in the mask, 3.0 here"),
        (_tiny_falcon_h1, {"attention_in_multiplier": 2.0}, r"attention_in_multiplier: 1.0 in the mask, 2.0 here"),
        (_tiny_falcon_h1, {"attention_out_multiplier": 3.0}, r"attention_out_multiplier: 1.0 in the mask, 3.0"),
        (_tiny_falcon_h1, {"mlp_multipliers": [2.0, 0.5]}, r"mlp_multipliers: \[1.0, 1.0\] in the mask, \[2.0, 0.5\]"),
        (_tiny_falcon_h1, {"ssm_multipliers": [2.0, 1, 1, 1, 1]}, r"ssm_multipliers: \[1.0, 1.0, 1.0, 1.0, 1.0\] in"),
        (_tiny_falcon_h1, {"ssm_in_multiplier": 2.0}, r"ssm_in_multiplier: 1.0 in the mask, 2.0 here"),
        (_tiny_falcon_h1, {"ssm_out_multiplier": 3.0}, r"ssm_out_multiplier: 1.0 in the mask, 3.0 here"),
        (
            _tiny_mpt,
            {"attn_config": TINY_MPT.attn_config.to_dict() | {"softmax_scale": 0.1}},
            r"attn_scale: None in the mask, 10.0 here",
        ),
        (
            _tiny_mpt,
            {"attn_config": TINY_MPT.attn_config.to_dict() | {"clip_qkv": 0.05}},
            r"clip_qkv: None in the mask, 0.05 here",
        ),
        (_tiny_llama, {"is_causal": False}, r"is_causal: True in the mask, False here"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_a_mask_is_refused_on_the_same_weights_under_other_falcon_h1_multipliers_mpt_attention_or_causality(
    tmp_path, tokens, boot, changes, refusal
):
    """The settings before let a mask load onto the same weights under other Falcon H1 multipliers, MPT's
    ``softmax_scale`` or ``clip_qkv``, or ``is_causal`` off. Each changes the logits but ``is_causal``, which
    TransformerLens 4.3's bridge does not read (its attention masks the future whatever the config; Hugging Face's
    own forward lets every position attend to every other): the record follows the model's definition."""
    trained_on = boot(tmp_path / "base")
    other = _same_weights_other_config(tmp_path / "base", tmp_path / "other", **changes)
    read_by_the_bridge = "is_causal" not in changes
    assert torch.allclose(trained_on(tokens), other(tokens)) != read_by_the_bridge
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "jump.safetensors")
    with pytest.raises(ModelMismatch, match=refusal):
        load_masks(path, other)
    load_masks(path, trained_on)


ADDED_LATER = [field for group in FIELDS_ADDED_LATER for field in group]
"""Every field of the model config that the first records did not hold."""


def test_a_mask_file_written_before_rope_scaling_attention_scales_and_windows_were_recorded_loads_naming_them(
    tmp_path, rotary_bridge
):
    path = save_masks(MaskSet.for_bridge(rotary_bridge, name="jump"), tmp_path / "jump.safetensors")
    _written_before(path, *ADDED_LATER)
    with pytest.warns(
        ModelConfigUnchecked,
        match=r"without rope_scaling, attn_scale, sliding_window, partial_rotary_factor, scale_attn_weights, .*"
        r"use_bidirectional_attention, lm_head_multiplier, .*, is_causal \(written before",
    ):
        loaded = load_masks(path, rotary_bridge)
    assert not set(ADDED_LATER) & loaded.origin.model["config"].keys()


@pytest.mark.parametrize(
    ("group", "named", "changed"),
    [
        (
            1,
            (
                "partial_rotary_factor, scale_attn_weights, scale_attn_by_inverse_layer_idx, embedding_multiplier, "
                "residual_multiplier, logits_scaling, use_bidirectional_attention"
            ),
            (
                "rope_scaling",
                {"factor": 4.0, "rope_type": "linear"},
                "None in the mask, {'factor': 4.0, 'rope_type': 'linear'} here",
            ),
        ),
        (
            2,
            (
                "lm_head_multiplier, key_multiplier, attention_in_multiplier, attention_out_multiplier, "
                "mlp_multipliers, ssm_multipliers, ssm_in_multiplier, ssm_out_multiplier, clip_qkv, is_causal"
            ),
            ("partial_rotary_factor", 0.5, "1.0 in the mask, 0.5 here"),
        ),
    ],
    ids=["rotary-shares-attention-switches-multipliers", "falcon-h1-multipliers-mpt-clipping-causality"],
)
def test_a_mask_file_written_before_a_later_group_of_fields_loads_naming_them(
    tmp_path, rotary_bridge, group, named, changed
):
    """A record holding the earlier groups of later fields but not this one is compared on those (a change in an
    earlier group is still refused) and warns naming this group."""
    path = save_masks(MaskSet.for_bridge(rotary_bridge, name="jump"), tmp_path / "jump.safetensors")
    _written_before(path, *FIELDS_ADDED_LATER[group])
    with pytest.warns(ModelConfigUnchecked, match=rf"without {named} \(written before"):
        loaded = load_masks(path, rotary_bridge)
    assert not set(FIELDS_ADDED_LATER[group]) & loaded.origin.model["config"].keys()
    assert set(FIELDS_ADDED_LATER[group - 1]) <= loaded.origin.model["config"].keys()
    field, value, difference = changed
    changed_model = {"config": model_config(rotary_bridge) | {field: value}}
    with pytest.warns(ModelConfigUnchecked, match=f"without {FIELDS_ADDED_LATER[group][0]}"):
        recorded, now = comparable_models({"config": loaded.origin.model["config"]}, changed_model, "mask.safetensors")
    assert model_differences(recorded, now) == [f"config ({field}: {difference})"]


def test_a_file_written_under_transformers_4_before_bases_per_layer_type_loads_its_base_compared(
    rotary_bridge, monkeypatch
):
    """The first records read transformers 4's top-level rope_theta alone: Gemma 3's full-attention base (the
    sliding one unrecorded), none of ModernBERT's. Such a record is compared on that base, the others named as
    unchecked; another base is still refused."""
    monkeypatch.setattr(rotary_bridge.original_model, "config", _gemma3_written_by(4))
    current = {"config": model_config(rotary_bridge)}
    first_record = {key: value for key, value in current["config"].items() if key not in ADDED_LATER}
    written_by_4 = {"config": first_record | {"rope_theta": 1000000.0}}
    with pytest.warns(ModelConfigUnchecked, match=r"without rope_theta of sliding_attention layers, rope_scaling, "):
        recorded, now = comparable_models(written_by_4, current, "mask.safetensors")
    assert recorded == now
    modernbert_by_4 = {"config": first_record | {"rope_theta": None}}  # transformers 4's ModernBERT: no rope_theta
    with pytest.warns(ModelConfigUnchecked, match=r"without rope_theta of full_attention, sliding_attention layers"):
        recorded, now = comparable_models(modernbert_by_4, current, "mask.safetensors")
    assert recorded == now
    other_base = {"config": first_record | {"rope_theta": 500000.0}}
    with pytest.warns(ModelConfigUnchecked):
        recorded, now = comparable_models(other_base, current, "mask.safetensors")
    assert model_differences(recorded, now) == [
        "config (rope_theta: 500000.0 in the mask, {'full_attention': 1000000.0, 'sliding_attention': 10000.0} here)"
    ]


def test_a_mask_is_refused_on_the_same_weights_under_another_rotary_base(tmp_path, tokens):
    """TransformerLens's config of a Hugging Face Llama keeps rotary_base 10000 whatever the model's rope_theta: the
    base is read from the model's own config."""
    torch.manual_seed(0)
    config = LlamaConfig(**TINY_HF_SIZES, num_key_value_heads=2)
    trained_on = boot_tiny(LlamaForCausalLM(config), tmp_path / "base")
    other = _same_weights_other_config(
        tmp_path / "base", tmp_path / "other", rope_parameters={"rope_theta": 5000.0, "rope_type": "default"}
    )
    assert other.cfg.rotary_base == trained_on.cfg.rotary_base
    assert not torch.allclose(trained_on(tokens), other(tokens))
    path = save_masks(MaskSet.for_bridge(trained_on, name="jump"), tmp_path / "jump.safetensors")
    with pytest.raises(ModelMismatch, match=r"rope_theta: 10000.0 in the mask, 5000.0 here"):
        load_masks(path, other)
