"""The checkpoint folder's lock: one run at a time writes to it, across processes, and a killed holder frees it.

The lock is an ``flock`` on ``.lock``, taken in one system call (``LOCK_EX | LOCK_NB``), so two processes cannot both
hold it; the kernel drops it with the process that held it, so a ``.lock`` file left behind is no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modmask_lens.core.checkpoint import LOCK_FILE, Checkpointer, CheckpointInUse

HOLD_THE_LOCK = """
import sys
from modmask_lens.core.checkpoint import Checkpointer
with Checkpointer(sys.argv[1], "test/checkpoint").locked():
    print("held", flush=True)
    sys.stdin.read()
"""
"""A second process: holds the lock of the checkpoint ``argv[1]`` until its stdin closes."""


def _holder(path: Path) -> subprocess.Popen:
    """A process that holds ``path``'s lock (returned once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_process_is_refused_while_the_first_holds_the_lock_and_takes_it_after(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoint.safetensors", "test/checkpoint")
    holder = _holder(checkpointer.path)
    try:
        refused = pytest.raises(CheckpointInUse, match=f"another run \\(process {holder.pid}\\) .*; wait for it")
        with refused, checkpointer.locked():
            pass
    finally:
        holder.communicate("")
    with checkpointer.locked():
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoint.safetensors", "test/checkpoint")
    holder = _holder(checkpointer.path)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert (tmp_path / LOCK_FILE).read_text() == str(holder.pid)  # the file stays; its lock went with the process
    with checkpointer.locked():
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


def test_a_second_acquire_in_the_same_process_is_refused(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoint.safetensors", "test/checkpoint")
    refused = pytest.raises(CheckpointInUse, match="give this run another output folder")
    with checkpointer.locked(), refused, Checkpointer(checkpointer.path, "test/checkpoint").locked():
        pass
