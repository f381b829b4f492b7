"""The conformance kit passes on every built-in adapter, from Python and from the command line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import boot_native
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from modmask_lens import CSORDAS_MASKS, CSORDAS_TRAINING, SubtaskData, adapter_for, train_masks
from modmask_lens.adapters import registry
from modmask_lens.adapters.llama import LlamaAdapter
from modmask_lens.testing import CHECKS, applicable_checks, check_head_mask, run_conformance
from modmask_lens.testing.tiny_models import boot_tiny

SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 40,
    "max_position_embeddings": 32,
}
FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=32)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **SIZES)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **SIZES)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**SIZES)),
    "bert": lambda: BertForMaskedLM(BertConfig(**SIZES)),
}
EXPECTED_ADAPTER = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama", "gpt_neox": "gpt_neox", "bert": "bert"}


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
def test_each_family_gets_its_built_in_adapter(family, family_bridge):
    assert adapter_for(family_bridge(family)).name == EXPECTED_ADAPTER[family]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_built_in_adapter_passes_the_check(family, check, family_bridge):
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


class OutputHeadsOnWrongAxis(LlamaAdapter):
    """A broken adapter: W_O's heads placed on its output features instead of its input features."""

    def _unit_layout(self, role, layout, dims):
        unit, axis, width = super()._unit_layout(role, layout, dims)
        return (unit, 1 - axis, width) if role == "W_O" else (unit, axis, width)


def test_kit_reports_an_adapter_that_places_heads_wrongly(tmp_path, monkeypatch):
    bridge = boot_tiny(FAMILIES["llama"](), tmp_path)
    monkeypatch.setattr(registry, "_BUILT_IN", (OutputHeadsOnWrongAxis,))
    results = {result.name: result for result in run_conformance(bridge)}
    assert not results["head_off_equals_zeroed_hook_z"].passed
    assert not results["unit_slices_equal_tl_views"].passed
    assert results["all_ones_bit_identical"].passed


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
        dataclasses.replace(CSORDAS_MASKS, granularity="head"),
        config,
        progress=False,
    )["gqa"]
    heads = masks.binary().kept_fraction(by="head")
    queries = heads[heads.role == "W_Q"]
    assert 0 < queries.kept.astype(bool).sum() < len(queries), "the test needs some heads kept and some dropped"
    assert check_head_mask(bridge, masks, tokens[:4]) is None
