"""Names of models are checked before any model loads, as the Hugging Face hub itself reads its settings."""

from __future__ import annotations

import pytest
import torch

from modmask_lens.loading import check_model_name

UNCACHED_HUB_ID = "modmask-lens-tests/no-such-model"


@pytest.mark.parametrize("setting", ["off", "no", "FALSE", "0"])
def test_a_hub_id_is_accepted_where_the_hub_reads_its_offline_setting_as_off(monkeypatch, setting):
    """huggingface_hub is offline only for 1/ON/YES/TRUE; 'off', 'no' and 'FALSE' were read as offline, and a
    valid hub id was refused before loading ("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")."""
    monkeypatch.setenv("HF_HUB_OFFLINE", setting)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    check_model_name(UNCACHED_HUB_ID)


def test_transformers_offline_refuses_an_uncached_hub_id_before_loading(monkeypatch):
    """TRANSFORMERS_OFFLINE=1 keeps the hub offline when HF_HUB_OFFLINE is unset; the check let the name through."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache, and TRANSFORMERS_OFFLINE is set"):
        check_model_name(UNCACHED_HUB_ID)


def test_hf_hub_offline_refuses_an_uncached_hub_id_in_any_spelling(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"):
        check_model_name(UNCACHED_HUB_ID)


def test_a_model_folder_under_the_home_directory_loads_by_its_tilde_path(tmp_path, monkeypatch):
    """check_model_name accepts ``~/model`` (it expands the home directory); load_bridge then handed the unexpanded
    name to transformers, which read it as a hub id and raised OSError ("Repo id must use alphanumeric chars")."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modmask_lens.loading import load_bridge
    from modmask_lens.testing.tiny_models import placeholder_word_tokenizer, save_tiny

    monkeypatch.setenv("HOME", str(tmp_path))
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=40, n_positions=32))
    save_tiny(model, tmp_path / "tiny", tokenizer=placeholder_word_tokenizer(40))
    bridge, tokenizer = load_bridge("~/tiny")
    assert tokenizer.vocab_size == 40
    tokens = torch.tensor([[5, 6, 7]])
    saved = GPT2LMHeadModel.from_pretrained(tmp_path / "tiny")
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), saved(tokens).logits)
