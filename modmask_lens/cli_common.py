"""What every ``modmask-lens`` command shares: its error reporting, its preparation (threads, progress bars) and
the cheap checks of output folders and input files. A module of its own so that the command modules (``cli``,
``cli_groundtruth``) import it and not each other, which lets ``python -m modmask_lens.cli`` run."""

from __future__ import annotations

import atexit
import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import typer

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FloatingPointError, OSError)
"""What bad input raises (ModelMismatch, MaskFileError, UnsupportedArchitecture, NonFiniteLoss, a missing file, an
unknown hook name ...): reported as one ``error: ...`` line and exit code 1; anything else is a bug and keeps its
traceback."""

INTERRUPTED_EXIT_CODE = 130  # what a shell reports for a process stopped by SIGINT

_options = {"debug": False, "threads": 1}  # set from the global options by main_options at every invocation


class _Typer(typer.Typer):
    """A Typer whose commands report :data:`KNOWN_ERRORS` as one line (a traceback with ``--debug``)."""

    def command(self, *args, **kwargs) -> Callable:
        register = super().command(*args, **kwargs)
        return lambda function: register(_reporting_known_errors(function))


def _reporting_known_errors(function: Callable) -> Callable:
    @functools.wraps(function)
    def run(*args, **kwargs):
        _prepare_run()
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt as interrupt:
            if _options["debug"]:
                raise
            typer.echo(f"error: {interrupt or 'interrupted'}", err=True)
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from interrupt
        except (MemoryError, RuntimeError) as error:
            if _options["debug"] or not _out_of_memory(error):
                raise
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            typer.echo(
                f"error: out of memory ({first_line}); lower --batch-size (examples per step) or raise --n-samples "
                "(the batch runs in n-samples slices)",
                err=True,
            )
            raise typer.Exit(1) from error
        except KNOWN_ERRORS as error:
            if _options["debug"]:
                raise
            # KeyError's str() is the repr of its message; print the message itself
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from error

    return run


def _out_of_memory(error: BaseException) -> bool:
    """Is ``error`` a failed allocation (torch's CPU or CUDA allocator, or Python's)?"""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _prepare_run() -> None:
    """What every command does first: the thread count, and no third-party progress bars (ours stay)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by huggingface_hub and transformers
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import torch
    import transformers

    torch.set_num_threads(_options["threads"])
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False"):
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" (set before the import above or not)
    if os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] not in ("0", "false", "False"):
        datasets.disable_progress_bars()  # "Filter", "Map"


def check_writable(folder: Path, option: str) -> None:
    """Raise ``OSError`` naming ``option`` unless ``folder`` exists or can be made, and takes a new file. Folders it
    makes are removed when the process ends if nothing was written into them (a command that fails after this
    check, on a bad task name say, leaves no empty folders behind)."""
    made = [parent for parent in [folder, *folder.parents] if not parent.exists()]
    if made:
        atexit.register(_remove_if_empty, made)  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OSError(f"cannot write to {folder} ({error.strerror or error}); choose another {option}") from error


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote there), or already gone
            return


def names_folder(name: str) -> bool:
    """Does ``name``, a path as the user typed it, name a folder: an existing one, or any ending with a path
    separator (``out/``)? :class:`~pathlib.Path` drops the separator, which turns ``out/`` into the file ``out``."""
    return name.endswith(("/", os.sep)) or Path(name).is_dir()


def file_to_write(name: str, option: str, kind: str, example: str) -> Path:
    """``name`` (the value of ``option``) as the path of the ``kind`` file (HTML, Markdown) a command writes; raises
    ``ValueError`` if it :func:`names_folder`, suggesting the file ``example`` inside it."""
    if names_folder(name):
        raise ValueError(f"{option} {name} is a folder; name the {kind} file to write, e.g. {Path(name) / example}")
    return Path(name)


def check_files(paths: list[Path], option: str) -> None:
    """Raise ``OSError`` / ``ValueError`` unless every path is an existing file (not a folder), each given once (a
    file named twice, by any two spellings of its path, would be read as two masks that agree on every weight)."""
    for index, path in enumerate(paths):
        if path.is_dir():
            raise ValueError(
                f"{option} {path} is a folder; pass the files in it, e.g. {option} {path}/NAME.safetensors"
            )
        if not path.is_file():
            raise FileNotFoundError(f"{option} {path}: no such file")
        earlier = next((other for other in paths[:index] if path.samefile(other)), None)
        if earlier is not None:
            raise ValueError(f"{option} {path} is the file {earlier} given again; pass each file once")
