"""Atomic writes: a file is replaced whole or not at all, its data on the disk before the rename, the rename after."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from modmask_lens.core.atomic_files import replace_atomically, write_bytes_atomically, write_text_atomically


def test_a_text_write_reaches_the_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    """The order of :func:`write_safetensors_atomically`'s test in test_mask_files.py, for the writer of every other
    file (cards, tables, reports, pictures)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        kind = "folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        events.append((f"fsync {kind}", os.fstat(descriptor).st_ino))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("replace", os.stat(source).st_ino))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = write_text_atomically(tmp_path / "card.md", "# café\n")
    written, folder = os.stat(path).st_ino, os.stat(tmp_path).st_ino
    assert events == [("fsync file", written), ("replace", written), ("fsync folder", folder)]
    assert path.read_bytes() == "# café\n".encode()


def _fail_the_rename(monkeypatch):
    def replace(source, target):
        raise OSError(errno.EIO, "input/output error", str(target))

    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    _fail_the_rename(monkeypatch)
    with pytest.raises(OSError, match="input/output error"):
        write_text_atomically(path, "a,b\n3,4\n")
    assert path.read_text() == "a,b\n1,2\n"
    assert sorted(tmp_path.iterdir()) == [path]


def test_an_error_inside_the_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    path = write_bytes_atomically(tmp_path / "picture.png", b"old")

    def write_half_then_fail(temporary):
        temporary.write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_file_gets_the_permissions_the_process_umask_gives_whatever_the_old_one_had(umask, mode, tmp_path):
    path = tmp_path / "report.html"
    path.write_text("old")
    path.chmod(0o400)
    previous = os.umask(umask)
    try:
        write_text_atomically(path, "new")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode and path.read_text() == "new"


def test_a_folder_that_cannot_be_synced_is_written_all_the_same(tmp_path, monkeypatch):
    """fsync(2) gives EINVAL on a filesystem that cannot sync a folder; any other error is raised."""
    real_fsync = os.fsync
    folder_error = errno.EINVAL

    def fsync(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(folder_error, os.strerror(folder_error))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    assert write_text_atomically(tmp_path / "a.md", "a").read_text() == "a"
    folder_error = errno.EIO
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        write_text_atomically(tmp_path / "b.md", "b")
