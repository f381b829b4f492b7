"""Booting never changes the Python environment: TransformerLens's on-the-fly ``pip install torchvision`` is refused."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from transformer_lens.model_bridge.sources import transformers as transformers_source

from modmask_lens.core.booting import installs_refused


def test_the_torchvision_install_is_refused_inside_and_restored_after(monkeypatch):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: nothing would be installed")

    def no_installs(*args, **kwargs):
        raise AssertionError(f"tried to run {args}")

    monkeypatch.setattr(subprocess, "check_call", no_installs)
    installing = transformers_source.helpers._ensure_torchvision
    with pytest.raises(RuntimeError, match="boot failed"), installs_refused():
        with pytest.warns(UserWarning, match="does not let TransformerLens pip-install it"):
            assert transformers_source.helpers._ensure_torchvision() is False
        raise RuntimeError("boot failed")
    assert transformers_source.helpers._ensure_torchvision is installing
    with pytest.raises(AssertionError, match="pip"):  # outside the block TransformerLens's own helper installs
        installing()
