"""Writing a file or a folder atomically: a temporary one of the writing process beside it, synced to the disk,
then a rename.

Every file modmask-lens writes (mask files and checkpoints, zoo cards, tables, reports, pictures) goes through
:func:`replace_atomically`, and every model folder (``save_pretrained``: exported masked models, the zoo's and the
plants' models; the compiled tracr programs) through :func:`replace_folder_atomically`, so that a reader, a killed
process or a crashed machine finds the old file or folder or the whole new one under its name, never a half-written
one that looks complete.
What a killed write leaves beside it (``NAME.PID.tmp``, ``NAME.PID.old``) is named so that
:func:`is_write_leftover` tells it apart, and every listing of model folders skips it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

_LEFTOVER_NAME = re.compile(r".+\.[0-9]+\.(tmp|old)")
"""``NAME.PID.tmp`` (a write killed before its rename) or ``NAME.PID.old`` (a folder write killed between its two)."""


def is_write_leftover(path: str | Path) -> bool:
    """Whether ``path`` is named as what a killed write leaves beside its destination: the temporary file or folder
    ``NAME.PID.tmp`` of :func:`replace_atomically` and :func:`replace_folder_atomically`, or the old folder
    ``NAME.PID.old`` that the latter had renamed away when it was killed. Such a folder may hold a whole
    ``card.json`` (a write killed after it, or the old model itself), so listings of model folders (the zoo's, the
    plants', the tracr programs') skip every path this names; a model is never given such a name.

    Example:
        >>> [is_write_leftover(name) for name in ("scan", "scan.4242.tmp", "scan.4242.old", "scan.v2.old")]
        [False, True, True, False]
    """
    return _LEFTOVER_NAME.fullmatch(Path(path).name) is not None


def replace_atomically(path: str | Path, write_temporary: Callable[[Path], object]) -> Path:
    """Call ``write_temporary`` on a temporary file beside ``path``, then put that file in its place; returns the path.

    The temporary file (``NAME.PID.tmp``) is named after the writing process, so two writers never share one, and
    sits in ``path``'s folder, which must exist, so that the rename stays on one filesystem. An exception (in the
    write too) removes it and leaves ``path`` as it was; a process killed during the write leaves ``path`` as it was
    plus the stray temporary file, which readers ignore. The file gets the permissions of any file the process
    creates (``0o666`` less the umask), whatever the old file had.

    A machine that crashes leaves the old file or the whole new one too: the temporary file is fsynced before the
    rename (a filesystem may otherwise commit the rename before the data, leaving an empty file under ``path``), and
    the folder after it (so that the rename itself is on disk), where the filesystem syncs folders.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> path = replace_atomically(folder / "ids.bin", lambda temporary: temporary.write_bytes(b"\\x01\\x02"))
        >>> path.read_bytes()
        b'\\x01\\x02'
    """
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write_temporary(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def replace_folder_atomically(
    path: str | Path, write_temporary: Callable[[Path], object], marker: str = "config.json"
) -> Path:
    """Call ``write_temporary`` on an empty temporary folder beside ``path``, then put that folder in its place;
    returns the path.

    For what writes a whole folder at once (``save_pretrained``): a process killed halfway through would otherwise
    leave a folder that looks like a model (``config.json`` there) with its weights truncated or missing. The
    temporary folder (``NAME.PID.tmp``) is named after the writing process and sits in ``path``'s folder (created if
    missing). An exception (in the write too) removes it and leaves ``path`` as it was; a killed process leaves
    ``path`` as it was plus the stray temporary folder, which a later write of the same process id replaces.

    A ``path`` that is a symbolic link (to a model folder elsewhere) is written where it points: the folder it
    resolves to is the one replaced, its temporary and old folders beside it, and the link stays as it was, as
    ``save_pretrained`` into the link wrote through it.

    An existing folder at ``path`` is replaced whole (files the new one lacks go), and only if it is empty or holds
    ``marker`` (a model folder), so that a mistaken path never deletes a folder of other files. It is renamed to
    ``NAME.PID.old``, the new folder renamed to ``path``, and the old one deleted; if the second rename fails, the
    old folder is renamed back. A process killed between the two renames (a moment) leaves no folder under
    ``path`` and the old one as ``NAME.PID.old``: never a half-written one. Every file and folder written is fsynced
    before the renames, and ``path``'s folder after them, as :func:`replace_atomically` does for one file.

    Raises:
        FileExistsError: ``path`` is a file, or a folder that is not empty and lacks ``marker``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "model"
        >>> _ = replace_folder_atomically(folder, lambda temporary: (temporary / "config.json").write_text("{}"))
        >>> sorted(file.name for file in folder.iterdir())
        ['config.json']
    """
    path = Path(os.path.realpath(path))
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / marker).exists()):
        raise FileExistsError(
            f"{path} exists and is not a folder this writes (no {marker} there), so it is not replaced; "
            "give a new or empty folder, or delete it first"
        )
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f"{path.name}.{os.getpid()}.old")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed process that had this id
    temporary.mkdir()
    try:
        write_temporary(temporary)
        for written in sorted(temporary.rglob("*"), reverse=True):  # files before the folders that hold them
            if written.is_dir():
                _fsync_folder(written)
            else:
                _fsync(written)
        _fsync_folder(temporary)
        if os.path.lexists(path):
            shutil.rmtree(old, ignore_errors=True)  # left by a killed process that had this id
            os.replace(path, old)
            try:
                os.replace(temporary, path)
            except BaseException:
                os.replace(old, path)
                raise
        else:
            os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(path.parent)
    return path


def write_bytes_atomically(path: str | Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` through :func:`replace_atomically`; returns the path.

    Example:
        >>> import tempfile
        >>> write_bytes_atomically(Path(tempfile.mkdtemp()) / "picture.png", b"\\x89PNG").read_bytes()
        b'\\x89PNG'
    """
    return replace_atomically(path, lambda temporary: temporary.write_bytes(content))


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 through :func:`replace_atomically` (line ends as given); returns the path.

    A table goes in as its CSV text: ``write_text_atomically(path, frame.to_csv(index=False))``.

    Example:
        >>> import tempfile
        >>> write_text_atomically(Path(tempfile.mkdtemp()) / "card.md", "# Zoo model\\n").read_text()
        '# Zoo model\\n'
    """
    return write_bytes_atomically(path, text.encode("utf-8"))


def _fsync(path: Path, flags: int = 0) -> None:
    """Flush ``path`` (a file, or a folder with ``os.O_DIRECTORY``) to the disk."""
    descriptor = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to the disk, where the filesystem syncs folders."""
    try:
        _fsync(folder, os.O_DIRECTORY)
    except OSError as error:
        # EINVAL: a filesystem that cannot sync a folder (fsync(2)); the files' data is on the disk all the same
        if error.errno != errno.EINVAL:
            raise


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
