"""Atomic writes: a file or a model folder is replaced whole or not at all, its data on the disk before the rename,
the rename after."""

from __future__ import annotations

import ast
import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modmask_lens.cli import app
from modmask_lens.core.atomic_files import (
    is_write_leftover,
    replace_atomically,
    replace_folder_atomically,
    write_bytes_atomically,
    write_text_atomically,
)
from modmask_lens.core.checkpoint import read_safetensors, write_safetensors_atomically
from modmask_lens.modularity.mlp import BimtMLP
from modmask_lens.viz.connectome import ConnectomeFrames
from modmask_lens.viz.html import write_page
from modmask_lens.viz.svg import SvgView, svg_document
from modmask_lens.zoo.cards import CARD_JSON, ModelCard, write_card

ATOMIC_WRITERS = {  # the file's name, a call that writes it, and what it reads back as
    "safetensors": (
        "mask.safetensors",
        lambda path: write_safetensors_atomically(path, {"x": torch.arange(3.0)}, {"format": "test"}),
        lambda path: read_safetensors(path, "test")[0]["x"].tolist() == [0.0, 1.0, 2.0],
    ),
    "text": (
        "card.md",
        lambda path: write_text_atomically(path, "# café\n"),
        lambda path: path.read_bytes() == "# café\n".encode(),
    ),
}


@pytest.mark.parametrize("name, write, written_whole", ATOMIC_WRITERS.values(), ids=ATOMIC_WRITERS)
def test_a_write_reaches_the_disk_before_its_rename_and_the_rename_after(
    name, write, written_whole, tmp_path, monkeypatch
):
    """Without an fsync of the temporary file before the rename, a crash just after it can leave an empty file under
    the final name on filesystems that reorder metadata before data (ext4 with delalloc, XFS); without one of the
    folder after it, the rename itself can be lost."""
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
    path = tmp_path / name
    write(path)
    written, folder = os.stat(path).st_ino, os.stat(tmp_path).st_ino
    assert events == [("fsync file", written), ("replace", written), ("fsync folder", folder)]
    assert written_whole(path)


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


def _old_model_folder(parent: Path) -> Path:
    """A model folder as ``save_pretrained`` leaves it, with a file the new folder will not have."""
    folder = parent / "model"
    folder.mkdir()
    (folder / "config.json").write_text("old config")
    (folder / "model.safetensors").write_bytes(b"old weights")
    (folder / "tokenizer.json").write_text("old tokenizer")
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in folder.iterdir()}


def _save_config_then_fail(folder: Path) -> None:
    """What a save_pretrained killed after the config and part of the weights leaves."""
    (folder / "config.json").write_text("new config")
    (folder / "model.safetensors").write_bytes(b"ne")
    raise KeyboardInterrupt


def test_a_folder_write_that_fails_midway_leaves_the_old_folder_whole_and_no_half_folder(tmp_path):
    folder = _old_model_folder(tmp_path)
    before = _contents(folder)
    with pytest.raises(KeyboardInterrupt):
        replace_folder_atomically(folder, _save_config_then_fail)
    assert _contents(folder) == before
    assert sorted(tmp_path.iterdir()) == [folder]


KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
from modmask_lens.core.atomic_files import replace_folder_atomically

def save_config_then_die(folder):
    (folder / "config.json").write_text("new config")
    (folder / "model.safetensors").write_bytes(b"ne")
    os.kill(os.getpid(), signal.SIGKILL)

replace_folder_atomically(Path(sys.argv[1]), save_config_then_die)
"""
"""A process that writes a model folder and is killed (SIGKILL: no handler runs) after the config and half the
weights."""


def test_a_process_killed_midway_through_a_folder_write_leaves_the_old_folder_whole(tmp_path):
    folder = _old_model_folder(tmp_path)
    before = _contents(folder)
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_MIDWAY, str(folder)], env=os.environ | {"PYTHONPATH": str(REPOSITORY)}
    )
    assert killed.wait() == -signal.SIGKILL
    assert _contents(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", f"model.{killed.pid}.tmp"]  # the stray


KILLED_WITH_A_CARD = """
import os, signal, sys
from pathlib import Path
from modmask_lens.core.atomic_files import replace_folder_atomically

folder, moment = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace

def replace_then_die(source, target):
    real_replace(source, target)
    os.kill(os.getpid(), signal.SIGKILL)

def save_card(temporary):
    (temporary / "config.json").write_text("new config")
    (temporary / "card.json").write_text("{}")
    if moment == "in the write":
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace_then_die

replace_folder_atomically(folder, save_card)
"""
"""A process that writes a model folder with its card and is killed in the write (leaving ``NAME.PID.tmp``) or
between the swap's two renames (leaving the old folder as ``NAME.PID.old``)."""


def _list_zoo(folder: Path, monkeypatch) -> list[str]:
    import modmask_lens.zoo

    monkeypatch.setattr(modmask_lens.zoo, "MODELS_DIR", folder)
    return modmask_lens.zoo.available_models()


def _list_plants(folder: Path, monkeypatch) -> list[str]:
    import modmask_lens.groundtruth.plants

    monkeypatch.setattr(modmask_lens.groundtruth.plants, "PLANTS_DIR", folder)
    return modmask_lens.groundtruth.plants.available_plants()


def _list_tracr_programs(folder: Path, monkeypatch) -> list[str]:
    from modmask_lens.groundtruth.tracr_cases import tracr_program_names

    return tracr_program_names(folder)


MODEL_LISTINGS = {"zoo": _list_zoo, "plants": _list_plants, "tracr": _list_tracr_programs}


@pytest.mark.parametrize("moment, leftover", [("in the write", "tmp"), ("between the renames", "old")])
@pytest.mark.parametrize("listing", MODEL_LISTINGS.values(), ids=MODEL_LISTINGS)
def test_a_folder_left_by_a_killed_write_is_never_listed_as_a_model(listing, moment, leftover, tmp_path, monkeypatch):
    for name in ("kept", "model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("old config")
        (tmp_path / name / "card.json").write_text("{}")
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_WITH_A_CARD, str(tmp_path / "model"), moment],
        env=os.environ | {"PYTHONPATH": str(REPOSITORY)},
    )
    assert killed.wait() == -signal.SIGKILL
    stray = tmp_path / f"model.{killed.pid}.{leftover}"
    if leftover == "old":  # the killed swap took the old model from its name: another write puts one back
        replace_folder_atomically(tmp_path / "model", lambda temporary: (temporary / "card.json").write_text("{}"))
    assert (stray / "card.json").is_file()  # what the listing sees and would list
    assert is_write_leftover(stray)
    assert listing(tmp_path, monkeypatch) == ["kept", "model"]


def test_a_folder_write_through_a_symbolic_link_replaces_the_folder_it_points_to_and_keeps_the_link(tmp_path):
    target = _old_model_folder(tmp_path)
    link = tmp_path / "exports" / "linked"
    link.parent.mkdir()
    link.symlink_to(target)
    replace_folder_atomically(link, lambda temporary: (temporary / "config.json").write_text("new config"))
    assert link.is_symlink() and link.resolve() == target
    assert _contents(target) == {"config.json": b"new config"}
    assert sorted(link.parent.iterdir()) == [link]
    assert sorted(tmp_path.iterdir()) == [link.parent, target]


def test_a_folder_write_that_fails_midway_leaves_no_folder_where_there_was_none(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        replace_folder_atomically(tmp_path / "exports" / "model", _save_config_then_fail)
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_folder_whose_swap_fails_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder = _old_model_folder(tmp_path)
    before = _contents(folder)
    real_replace = os.replace

    def replace(source, target):
        if Path(source).name.endswith(".tmp"):
            raise OSError(errno.EIO, "input/output error", str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="input/output error"):
        replace_folder_atomically(folder, lambda temporary: (temporary / "config.json").write_text("new config"))
    assert _contents(folder) == before
    assert sorted(tmp_path.iterdir()) == [folder]


def test_a_folder_write_replaces_the_old_folder_whole_its_files_on_the_disk_before_the_swap(tmp_path, monkeypatch):
    folder = _old_model_folder(tmp_path)
    synced, swapped = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        synced.append(os.fstat(descriptor).st_ino)
        real_fsync(descriptor)

    def replace(source, target):
        swapped.append(len(synced))
        real_replace(source, target)

    def save(temporary):
        (temporary / "config.json").write_text("new config")
        (temporary / "shards").mkdir()
        (temporary / "shards" / "model-1.safetensors").write_bytes(b"new weights")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    replace_folder_atomically(folder, save)
    written = [folder / "config.json", folder / "shards" / "model-1.safetensors", folder / "shards", folder]
    assert set(synced[: swapped[0]]) == {path.stat().st_ino for path in written}
    assert synced[-1] == tmp_path.stat().st_ino  # the swap itself, after it
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) == [
        "config.json",
        "shards",
        "shards/model-1.safetensors",
    ]
    assert (folder / "config.json").read_text() == "new config"
    assert sorted(tmp_path.iterdir()) == [folder]


@pytest.mark.parametrize("occupied", ["a folder of other files", "a file"])
def test_a_folder_write_never_replaces_what_is_not_a_model_folder(occupied, tmp_path):
    path = tmp_path / "results"
    if occupied == "a file":
        path.write_text("notes")
    else:
        path.mkdir()
        (path / "notes.txt").write_text("notes")
    with pytest.raises(FileExistsError, match="not a folder this writes \\(no config.json there\\).*new or empty"):
        replace_folder_atomically(path, lambda temporary: (temporary / "config.json").write_text("{}"))
    assert (path.read_text() if path.is_file() else (path / "notes.txt").read_text()) == "notes"
    assert sorted(tmp_path.iterdir()) == [path]


class _Square(SvgView):
    def svg(self) -> str:
        return svg_document(10, 10, "")


def _invoke(arguments: list[str]) -> None:
    """Run a command of the command line; ``OSError`` with its output if it failed (it prints the error it caught)."""
    result = CliRunner().invoke(app, arguments)
    if result.exit_code != 0:
        raise OSError(result.output)


def _write_card(folder):
    card = ModelCard("tiny", "modadd", "a + b mod 59", {"n_layers": 1}, 9, "train", {}, 0, 1, 1.0, {"test/all": 1.0})
    write_card(card, folder)


WRITERS = {  # what writes a file into a folder, and the name of its (first) file
    "zoo card": (_write_card, CARD_JSON),
    "html page": (lambda folder: write_page(folder / "report.html", "report", []), "report.html"),
    "svg": (lambda folder: _Square().save_svg(folder / "square.svg"), "square.svg"),
    "connectome frame": (
        lambda folder: ConnectomeFrames(BimtMLP((2, 3, 2)).unit_graph(), folder)(7),
        "frame_000007.svg",
    ),
    "data export": (lambda folder: _invoke(["data", "modadd", "--export", str(folder / "m.jsonl")]), "m.train.jsonl"),
}


@pytest.mark.parametrize("write, name", WRITERS.values(), ids=WRITERS)
def test_a_package_writer_whose_rename_fails_leaves_the_old_file_whole(write, name, tmp_path, monkeypatch):
    """They wrote in place (``Path.write_text``, ``open("w")``): a process that died mid-write left half a file that
    looked whole. ``groundtruth targets --out`` is tested in test_target_checks.py."""
    old = tmp_path / name
    old.write_text("old")
    _fail_the_rename(monkeypatch)
    with pytest.raises(OSError, match="input/output error"):
        write(tmp_path)
    assert old.read_text() == "old"
    assert sorted(tmp_path.iterdir()) == [old]


WRITES = {"write_text", "write_bytes", "to_csv", "save_file", "open", "save_pretrained"}
"""Calls that write a file or a folder (``to_csv`` given a path, ``open`` given a mode that writes)."""
WRITTEN_IN_PLACE = {
    "modmask_lens/core/checkpoint.py:open",  # the lock file, holding the holder's process id
    "modmask_lens/testing/tiny_models.py:save_pretrained",  # tiny test models, into the test's own folder
    "modmask_lens/testing/copy_task.py:save_pretrained",
}
REPLACERS = {"replace_atomically", "replace_folder_atomically"}
REPOSITORY = Path(__file__).parents[2]


def _writes_in_place(source: Path) -> list[str]:
    """``path:line call`` for each call in ``source`` that writes a file or folder other than into the temporary
    one of a :data:`REPLACERS` call (inside the call, or in a function of the module that it is passed by name), or
    into a scratch folder (``save_pretrained(folder)`` inside ``with tempfile.TemporaryDirectory() as folder``,
    deleted on leaving it)."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    replacing = [call for call in calls if _called(call) in REPLACERS]
    passed = {argument.id for call in replacing for argument in call.args if isinstance(argument, ast.Name)}
    writers = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in passed]
    temporary_writes = {id(inner) for outer in [*replacing, *writers] for inner in ast.walk(outer)}
    temporary_writes |= _scratch_folder_writes(tree)
    found = []
    for call in calls:
        name = _called(call)
        arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
        if name == "open":
            modes = [argument.value for argument in arguments if isinstance(argument, ast.Constant)]
            writes = any(isinstance(mode, str) and set(mode) & set("wax+") for mode in modes)
        else:
            to_a_string = name == "to_csv" and not call.args and "path_or_buf" not in {k.arg for k in call.keywords}
            writes = name in WRITES and not to_a_string
        relative = source.relative_to(REPOSITORY).as_posix()
        if writes and id(call) not in temporary_writes and f"{relative}:{name}" not in WRITTEN_IN_PLACE:
            found.append(f"{relative}:{call.lineno} {name}")
    return found


def _scratch_folder_writes(tree: ast.Module) -> set[int]:
    """Ids of the ``save_pretrained(NAME)`` calls inside a ``with tempfile.TemporaryDirectory() as NAME``."""
    found = set()
    for statement in ast.walk(tree):
        if not isinstance(statement, ast.With):
            continue
        scratch = {
            item.optional_vars.id
            for item in statement.items
            if isinstance(item.context_expr, ast.Call)
            and _called(item.context_expr) == "TemporaryDirectory"
            and isinstance(item.optional_vars, ast.Name)
        }
        found |= {
            id(call)
            for inner in statement.body
            for call in ast.walk(inner)
            if isinstance(call, ast.Call)
            and _called(call) == "save_pretrained"
            and call.args
            and isinstance(call.args[0], ast.Name)
            and call.args[0].id in scratch
        }
    return found


def _called(call: ast.Call) -> str:
    """The name of the function or method a call calls (``write_text`` of ``path.write_text(...)``)."""
    return getattr(call.func, "attr", getattr(call.func, "id", ""))


def test_the_package_and_its_experiments_write_every_file_through_replace_atomically():
    """The experiments write the zoo's and the ground truth's shipped cards and models, the demo's and
    reproductions' results. A model folder (``save_pretrained``) goes through :func:`replace_folder_atomically`."""
    sources = sorted([*(REPOSITORY / "modmask_lens").rglob("*.py"), *(REPOSITORY / "experiments").rglob("*.py")])
    assert [found for source in sources for found in _writes_in_place(source)] == []
