"""Names of models are checked before any model loads, as the Hugging Face hub itself reads its settings."""

from __future__ import annotations

import pytest

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
