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

    commands = []

    def recorded(command, *args, **kwargs):
        commands.append(command)
        raise OSError("not run in this test")

    monkeypatch.setattr(subprocess, "check_call", recorded)
    installing = transformers_source.helpers._ensure_torchvision
    with pytest.raises(RuntimeError, match="boot failed"), installs_refused():
        with pytest.warns(UserWarning, match="does not let TransformerLens pip-install it"):
            assert transformers_source.helpers._ensure_torchvision() is False
        raise RuntimeError("boot failed")
    assert commands == []
    assert transformers_source.helpers._ensure_torchvision is installing
    installing()  # outside the block TransformerLens's own helper tries to install (here the install fails)
    assert "install" in commands[0] and "torchvision" in commands[0]
