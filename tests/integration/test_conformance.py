"""The conformance kit passes on every built-in adapter, from Python and from the command line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import ClassVar

import pytest
import torch
from conftest import boot_native
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertLMHeadModel,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    ModernBertDecoderConfig,
    ModernBertDecoderForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from modmask_lens import CSORDAS_MASKS, CSORDAS_TRAINING, SubtaskData, adapter_for, train_masks
from modmask_lens.adapters import DerivedAdapter, registry
from modmask_lens.testing import CHECKS, applicable_checks, check_head_mask, conformance, run_conformance
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

GPT_STYLE = {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 40, "n_positions": 32}
FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(**GPT_STYLE)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **TINY_HF_SIZES)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(num_key_value_heads=2, **TINY_HF_SIZES)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **TINY_HF_SIZES)),
    "gemma": lambda: GemmaForCausalLM(GemmaConfig(num_key_value_heads=1, head_dim=8, **TINY_HF_SIZES)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**TINY_HF_SIZES)),
    "gptj": lambda: GPTJForCausalLM(GPTJConfig(rotary_dim=4, n_inner=64, **GPT_STYLE)),
    "phi": lambda: PhiForCausalLM(PhiConfig(**TINY_HF_SIZES)),
    "opt": lambda: OPTForCausalLM(
        OPTConfig(
            ffn_dim=64, word_embed_proj_dim=32, **{k: v for k, v in TINY_HF_SIZES.items() if k != "intermediate_size"}
        )
    ),
    "modernbert_decoder": lambda: ModernBertDecoderForCausalLM(
        ModernBertDecoderConfig(
            pad_token_id=1, bos_token_id=3, eos_token_id=2, cls_token_id=3, sep_token_id=2, **TINY_HF_SIZES
        )
    ),
    "bert": lambda: BertForMaskedLM(BertConfig(**TINY_HF_SIZES)),
    "bert_lm_head": lambda: BertLMHeadModel(BertConfig(is_decoder=True, **TINY_HF_SIZES)),
}
"""Tiny random models of the families the issue names; Gemma has multi-query attention (one key/value head);
ModernBERT-decoder's ``Wi`` holds each neuron's input and gate rows in two concatenated halves."""
HAND_WRITTEN = {"bert": "bert", "bert_lm_head": "bert", "opt": "opt"}
"""Families with a hand-written adapter (OPT's is the example plugin, when installed); the rest are derived."""


@pytest.fixture(scope="module")
def family_bridge(tmp_path_factory):
    """A tiny booted model of each family, built once per module."""
    bridges = {}

    def bridge_of(family: str):
        if family not in bridges:
            bridges[family] = boot_tiny(FAMILIES[family](), tmp_path_factory.mktemp(family))
        return bridges[family]

    return bridge_of


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_without_a_hand_written_adapter_gets_the_derived_one(family, family_bridge):
    hand_written = HAND_WRITTEN.get(family)
    expected = hand_written if hand_written in registry.installed_adapters() else DerivedAdapter.name
    assert adapter_for(family_bridge(family)).name == expected


def test_the_derived_adapter_reads_head_axes_from_transformer_lens_conversions(family_bridge):
    """Llama's conversions say ``(n h) m`` for q/k/v and ``m (n h)`` for o; GPT-2's say ``(n h) m`` for o (Conv1D)."""
    llama = DerivedAdapter.for_bridge(family_bridge("llama")).head_axes
    assert {key.split(".")[3]: axis for key, axis in llama.items()} == {"q": 0, "k": 0, "v": 0, "o": 1}
    gpt2 = DerivedAdapter.for_bridge(family_bridge("gpt2"))
    assert gpt2.head_axes == {"blocks.{i}.attn.o.weight": 0}
    specs = {spec.key: spec for spec in gpt2.tensor_specs(family_bridge("gpt2"))}
    assert specs["blocks.1.attn.o.weight"].layout == "conv1d" and specs["blocks.1.attn.o.weight"].unit_axis == 0
    assert specs["blocks.1.mlp.in.weight"].layout == "conv1d" and specs["blocks.1.mlp.in.weight"].unit_axis == 1


def test_parallel_blocks_read_ln1_in_front_of_the_mlp(family_bridge):
    gptj, llama = (DerivedAdapter.for_bridge(family_bridge(family)) for family in ("gptj", "llama"))
    assert gptj.parallel_blocks and gptj.reader_norm("mlp", 1) == ("ln1.w", 1)
    assert not llama.parallel_blocks and llama.reader_norm("mlp", 1) == ("ln2.w", 1)


def test_the_derived_adapter_gives_the_same_specs_as_the_hand_written_opt_plugin(family_bridge):
    """The example plugin's OPT adapter is hand-written; TransformerLens's map gives the same tensors."""
    plugin = registry.installed_adapters().get("opt")
    if plugin is None:
        pytest.skip("the example plugin plugins/modmask-lens-opt is not installed in this environment")
    bridge = family_bridge("opt")
    assert DerivedAdapter.for_bridge(bridge).tensor_specs(bridge) == plugin().tensor_specs(bridge)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_passes_the_check(family, check, family_bridge):
    [result] = run_conformance(family_bridge(family), checks=[check])
    assert result.passed, str(result)


@pytest.fixture(scope="module")
def native_bridge_of():
    bridges = {gqa: boot_native(gqa=gqa) for gqa in (False, True)}
    return bridges.__getitem__


@pytest.mark.parametrize("check", [name for name in CHECKS if name != "hf_export_reloads"])
@pytest.mark.parametrize("gqa", [False, True])
def test_native_models_pass_the_check(gqa, check, native_bridge_of):
    bridge = native_bridge_of(gqa)
    assert check in applicable_checks(bridge)
    [result] = run_conformance(bridge, checks=[check])
    assert result.passed, str(result)


def test_command_line_kit_prints_one_line_per_check_and_exits_zero(tmp_path):
    boot_tiny(FAMILIES["gpt2"](), tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "modmask_lens.testing", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert len(lines) == len(CHECKS) and all(line.startswith("PASS") for line in lines)


class OutputHeadsOnWrongAxis(DerivedAdapter):
    """A broken adapter: W_O's heads placed on its output features instead of its input features."""

    architectures = ("LlamaForCausalLM",)

    def _unit_layout(self, role, layout, dims, shape):
        unit, axis, width = super()._unit_layout(role, layout, dims, shape)
        return (unit, 1 - axis, width) if role == "W_O" else (unit, axis, width)


def test_kit_reports_an_adapter_that_places_heads_wrongly(tmp_path, monkeypatch):
    bridge = boot_tiny(FAMILIES["llama"](), tmp_path)
    monkeypatch.setattr(registry, "_BUILT_IN", (OutputHeadsOnWrongAxis,))
    results = {result.name: result for result in run_conformance(bridge)}
    assert not results["head_off_equals_zeroed_hook_z"].passed
    failure = str(results["unit_slices_equal_tl_views"])
    expected = "FAIL LlamaForCausalLM unit_slices_equal_tl_views: blocks.0.attn.o.weight (32, 32) head 0"
    assert failure.startswith(expected) and "\n" not in failure
    assert results["all_ones_bit_identical"].passed


class LayerOneWritersUnread(DerivedAdapter):
    """An adapter that leaves layer 1's attention and MLP writers out of the mask targets (a walk-through found the
    kit passing it: it turned off units in the first and last layers only)."""

    architectures = ("LlamaForCausalLM",)
    unread_keys = ("blocks.1.attn.o.weight", "blocks.1.mlp.out.weight")


def test_kit_reports_an_adapter_that_leaves_a_middle_layer_unmasked(tmp_path, monkeypatch):
    bridge = boot_tiny(
        LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **TINY_HF_SIZES | {"num_hidden_layers": 3})), tmp_path
    )
    monkeypatch.setattr(registry, "_BUILT_IN", (LayerOneWritersUnread,))
    checks = ["head_off_equals_zeroed_hook_z", "neuron_off_equals_zeroed_hook_post"]
    heads, neurons = run_conformance(bridge, checks=checks)
    assert str(heads).startswith(
        "FAIL LlamaForCausalLM head_off_equals_zeroed_hook_z: layers [1] have heads (blocks.L.attn.hook_z) but the "
        "mask has no head unit there"
    )
    assert "layers [1] have neurons (blocks.L.mlp.hook_post)" in str(neurons) and "StopIteration" not in str(neurons)


class UnknownFamilyRole(DerivedAdapter):
    architectures = ("LlamaForCausalLM",)
    family_roles: ClassVar[dict[str, str]] = {"blocks.1.attn.o.weight": "W_O_mine"}


class LayerKeyedFamilyRole(DerivedAdapter):
    architectures = ("LlamaForCausalLM",)
    family_roles: ClassVar[dict[str, str]] = {"blocks.1.ln1.weight": "attn_in_norm.w"}


def test_family_roles_must_be_maskable_and_take_their_block_s_layer(tmp_path, monkeypatch):
    bridge = boot_tiny(FAMILIES["llama"](), tmp_path)
    monkeypatch.setattr(registry, "_BUILT_IN", (UnknownFamilyRole,))
    with pytest.raises(ValueError, match="role 'W_O_mine', which no parameter kind holds"):
        adapter_for(bridge).tensor_specs(bridge)
    monkeypatch.setattr(registry, "_BUILT_IN", (LayerKeyedFamilyRole,))
    [spec] = [spec for spec in adapter_for(bridge).tensor_specs(bridge) if spec.role == "attn_in_norm.w"]
    assert (spec.key, spec.layer, spec.kind) == ("blocks.1.ln1.weight", 1, "norm")


class MatricesOfUnknownLayout(DerivedAdapter):
    """An adapter that cannot tell how any attention matrix is stored (as for a family TransformerLens gives no
    rearrange pattern and an unknown module type)."""

    architectures = ("GPTJForCausalLM",)

    def stored_layout(self, key, module):
        return "unknown" if ".attn." in key else super().stored_layout(key, module)


def test_a_failure_is_one_line_naming_family_tensor_and_check_never_a_bare_shape_error(family_bridge, monkeypatch):
    """The issue saw ``RuntimeError: The size of tensor a (64) must match the size of tensor b (16)`` for GPT-J."""
    monkeypatch.setattr(registry, "_BUILT_IN", (MatricesOfUnknownLayout,))
    [result] = run_conformance(family_bridge("gptj"), checks=["unit_slices_equal_tl_views"])
    assert str(result) == (
        "FAIL GPTJForCausalLM unit_slices_equal_tl_views: blocks.0.attn.q.weight (32, 32): its adapter cannot tell "
        "how the matrix is stored, so bridge.W_Q[0] (4, 32, 8) is unplaced"
    )


def test_trained_gqa_head_mask_matches_zeroing_its_dropped_heads(tmp_path):
    """Task: reproduce the model's own greedy next tokens; the mask keeps the heads that matter for it."""
    bridge = boot_tiny(FAMILIES["llama"](), tmp_path, noise=0.3)
    tokens = torch.randint(5, 40, (64, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = bridge(tokens).argmax(dim=-1)
    labels = torch.full_like(tokens, -100)
    labels[:, 1:] = predicted[:, :-1]
    config = dataclasses.replace(CSORDAS_TRAINING, steps=60, batch_size=16, lr=0.1, beta=0.3)
    masks = train_masks(
        bridge,
        SubtaskData("gqa", tokens, labels),
        dataclasses.replace(CSORDAS_MASKS, granularity="head"),  # qkvo: key/value groups kept while a reader is kept
        config,
        progress=False,
    )["gqa"]
    heads = masks.binary().kept_fraction(by="head")
    queries = heads[heads.role == "W_Q"]
    assert 0 < queries.kept.astype(bool).sum() < len(queries), "the test needs some heads kept and some dropped"
    assert check_head_mask(bridge, masks, tokens[:4]) is None


def test_a_model_that_fails_unmasked_is_reported_as_such_by_every_check(family_bridge):
    """A model that fails in its own forward (as the tiny DeepSeek-V3 did with the generic sizes) is reported as such,
    not blaming a check; a GPT-2 that transformers runs outside TransformerLens makes it TransformerLens's."""
    bridge = family_bridge("gpt2")

    def broken(*args, **kwargs):
        raise RuntimeError("The size of tensor a (32) must match the size of tensor b (4)")

    bridge.forward = broken  # on the instance only, removed below
    try:
        results = run_conformance(bridge, checks=["all_ones_bit_identical", "head_off_equals_zeroed_hook_z"])
    finally:
        del bridge.forward
    assert [str(result) for result in results] == [
        f"FAIL GPT2LMHeadModel {name}: the unmasked model itself fails on these tokens, while transformers' own "
        "GPT2LMHeadModel runs them outside TransformerLens with the same weights: TransformerLens's (RuntimeError: "
        "The size of tensor a (32) must match the size of tensor b (4)); no mask is involved"
        for name in ("all_ones_bit_identical", "head_off_equals_zeroed_hook_z")
    ]


def test_the_whose_failure_clause_is_left_out_when_the_rebuilt_model_would_not_hold_the_same_weights(
    family_bridge, monkeypatch
):
    """The clause says "with the same weights" only when every tensor of the model rebuilt outside TransformerLens
    was loaded from the bridge's: here one is left out of the weights handed over, so the clause says nothing."""
    bridge = family_bridge("gpt2")
    handed_over = conformance.native_state_dict

    def one_tensor_short(model):
        state, extra = handed_over(model)
        state.pop("transformer.h.0.mlp.c_fc.weight")
        return state, extra

    def broken(*args, **kwargs):
        raise RuntimeError("The size of tensor a (32) must match the size of tensor b (4)")

    monkeypatch.setattr(conformance, "native_state_dict", one_tensor_short)
    bridge.forward = broken  # on the instance only, removed below
    try:
        [result] = run_conformance(bridge, checks=["all_ones_bit_identical"])
    finally:
        del bridge.forward
    assert str(result) == (
        "FAIL GPT2LMHeadModel all_ones_bit_identical: the unmasked model itself fails on these tokens (RuntimeError: "
        "The size of tensor a (32) must match the size of tensor b (4)); no mask is involved"
    )
    with pytest.raises(LookupError, match=r"not loaded \['transformer.h.0.mlp.c_fc.weight'\]"):
        conformance._outside_transformer_lens(bridge)


def test_compatibility_mode_failing_by_itself_is_reported_as_transformer_lens_own(family_bridge, monkeypatch):
    """TransformerLens 4.3's weight processing fails on a tiny Falcon-H1 with grouped-query attention (see the
    table)."""
    bridge = family_bridge("gpt2")

    def broken(self, *args, **kwargs):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (8)")

    monkeypatch.setattr(type(bridge), "enable_compatibility_mode", broken)
    [result] = run_conformance(bridge, checks=["compat_mode_bit_exact"])
    assert str(result) == (
        "FAIL GPT2LMHeadModel compat_mode_bit_exact: TransformerLens's compatibility mode itself fails here "
        "(RuntimeError: The size of tensor a (4) must match the size of tensor b (8)), and also without folded norms "
        "(RuntimeError: The size of tensor a (4) must match the size of tensor b (8)); no mask is involved"
    )


def _folding_fails(monkeypatch, bridge) -> None:
    """TransformerLens's compatibility mode failing in ``fold_layer_norm`` only, as it does on Falcon-H1."""
    enable = type(bridge).enable_compatibility_mode

    def folding_fails(self, *args, fold_ln: bool = True, **kwargs):
        if fold_ln:
            raise RuntimeError("The size of tensor a (16) must match the size of tensor b (32)")
        enable(self, *args, fold_ln=fold_ln, **kwargs)

    monkeypatch.setattr(type(bridge), "enable_compatibility_mode", folding_fails)


def test_compatibility_mode_failing_only_to_fold_norms_is_checked_without_folding(family_bridge, monkeypatch):
    """Where only the norm folding fails unmasked, the check runs without it; passing there is still N/A (the full
    mode cannot run), never a pass."""
    bridge = family_bridge("gpt2")
    _folding_fails(monkeypatch, bridge)
    [result] = run_conformance(bridge, checks=["compat_mode_bit_exact"])
    assert not result.applies and not result.passed
    assert result.detail == (
        "GPT2LMHeadModel: TransformerLens's compatibility mode fails here with no mask attached (RuntimeError: The "
        "size of tensor a (16) must match the size of tensor b (32)); without folded norms (fold_ln=False) an "
        "all-ones mask is bit-exact"
    )


def test_a_mask_failing_in_compatibility_mode_without_folding_fails_the_check(family_bridge, monkeypatch):
    bridge = family_bridge("gpt2")
    _folding_fails(monkeypatch, bridge)
    monkeypatch.setattr(conformance, "_all_ones_difference", lambda *args: "max difference 0.5")
    [result] = run_conformance(bridge, checks=["compat_mode_bit_exact"])
    assert str(result) == (
        "FAIL GPT2LMHeadModel compat_mode_bit_exact: compat mode: max difference 0.5 (with fold_ln=False: "
        "TransformerLens's full compatibility mode fails here unmasked)"
    )


def test_compatibility_mode_that_transformer_lens_declares_unsupported_is_not_applicable(family_bridge, monkeypatch):
    """VaultGemma's TransformerLens adapter sets ``supports_compatibility_mode = False`` (as audio encoders are
    refused): the check is reported N/A with TransformerLens's own reason, never as passed."""
    bridge = family_bridge("gpt2")
    monkeypatch.setattr(bridge.adapter, "supports_compatibility_mode", False)
    [result] = run_conformance(bridge, checks=["compat_mode_bit_exact"])
    assert not result.applies and not result.passed
    assert str(result).startswith(
        "N/A GPT2LMHeadModel compat_mode_bit_exact: GPT2LMHeadModel: TransformerLens does not support compatibility "
        "mode here (RuntimeError: GPT2ArchitectureAdapter does not support compatibility mode: "
    )
    assert not bridge.compatibility_mode  # refused on a copy; the bridge itself is untouched


class KeysMissingTheirComponents(DerivedAdapter):
    """A broken adapter: every tensor keyed one level below the component that holds it, so that no key names a
    component with a TransformerLens view."""

    architectures = ("LlamaForCausalLM",)

    def tensor_specs(self, bridge):
        return [
            dataclasses.replace(spec, key=spec.key.replace(".attn.", ".attn.moved.").replace(".mlp.", ".mlp.moved."))
            for spec in super().tensor_specs(bridge)
        ]


def test_views_no_tensor_reaches_fail_where_transformer_lens_exposes_views(family_bridge, monkeypatch):
    """The view check is N/A only for a model whose bridge exposes no ``W_Q`` ... ``W_out`` (JetMoE, NemotronH), not
    for an adapter whose keys miss the views TransformerLens has."""
    monkeypatch.setattr(registry, "_BUILT_IN", (KeysMissingTheirComponents,))
    [result] = run_conformance(family_bridge("llama"), checks=["unit_slices_equal_tl_views"])
    assert result.applies and not result.passed
    assert "TransformerLens exposes views at ['blocks.0.attn.W_Q'" in str(result)
