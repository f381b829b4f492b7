"""Step 5 of CONTRIBUTING.md#adapters: the plugin is found through its entry point and passes the conformance kit."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from modmask_lens_opt import OptAdapter
from transformers import OPTConfig, OPTForCausalLM

from modmask_lens.adapters import adapter_for, installed_adapters
from modmask_lens.testing import CHECKS, applicable_checks, run_conformance
from modmask_lens.testing.tiny_models import boot_tiny

torch.set_num_threads(1)


def tiny_opt(directory):
    config = OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=40,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
    )
    return boot_tiny(OPTForCausalLM(config), directory)


def test_the_entry_point_registers_the_adapter(tmp_path):
    assert installed_adapters()["opt"] is OptAdapter
    assert isinstance(adapter_for(tiny_opt(tmp_path)), OptAdapter)


@pytest.fixture(scope="module")
def opt_bridge(tmp_path_factory):
    return tiny_opt(tmp_path_factory.mktemp("opt"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_opt_passes_the_conformance_check(check, opt_bridge):
    assert check in applicable_checks(opt_bridge)
    [result] = run_conformance(opt_bridge, checks=[check])
    assert result.passed, str(result)
