"""Writing a file atomically: a temporary file of the writing process beside it, synced to the disk, then a rename.

Every file modmask-lens writes (mask files and checkpoints, zoo cards, tables, reports, pictures) goes through
:func:`replace_atomically`, so that a reader, a killed process or a crashed machine finds the old file or the whole
new one under its name, never a half-written file that looks complete.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


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
    try:
        _fsync(path.parent, os.O_DIRECTORY)
    except OSError as error:
        # EINVAL: a filesystem that cannot sync a folder (fsync(2)); the file's data is on the disk all the same
        if error.errno != errno.EINVAL:
            raise
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


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
