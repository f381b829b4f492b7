"""Files of modmask-lens: safetensors for tensors, JSON in the header for everything else; never pickle.

Every trainer (masks, probes, the zoo) checkpoints through :class:`Checkpointer`; mask files
(:mod:`modmask_lens.masks.io`) use the same writer and reader. Writes are atomic (a temporary file of the writing
process, synced to the disk, then a rename) and carry a SHA-256 of their tensors and their header, checked on
reading: an edited header field is refused like a flipped tensor byte. A :class:`Checkpointer` locks its folder while
a run writes to it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from modmask_lens.core.atomic_files import replace_atomically

METADATA_KEY = "modmask_lens"
CHECKSUM_FIELD = "content_sha256"
LOCK_FILE = ".lock"


class CheckpointInUse(OSError):
    """Another run is writing checkpoints to the same folder."""


class MaskFileError(ValueError):
    """A mask or checkpoint file is unreadable, truncated, corrupt, or not a modmask-lens file of the expected
    format."""


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` in name order: catches flipped bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def content_sha256(tensors: dict[str, Tensor], metadata: dict) -> str:
    """SHA-256 over :func:`tensors_sha256` and the header as canonical JSON (every field but this checksum): catches
    flipped bytes, and header fields edited or deleted after the file was written."""
    header = {key: value for key, value in metadata.items() if key != CHECKSUM_FIELD}
    digest = hashlib.sha256(tensors_sha256(tensors).encode())
    digest.update(json.dumps(header, sort_keys=True).encode())
    return digest.hexdigest()


def write_safetensors_atomically(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Write tensors plus a JSON header (with its checksum) to ``path``, creating its folder, through
    :func:`~modmask_lens.core.atomic_files.replace_atomically`: readers never see half a file, and a killed process or
    a crashed machine leaves the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = _unshared({name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()})
    header = json.dumps(metadata | {CHECKSUM_FIELD: content_sha256(contiguous, metadata)})
    replace_atomically(path, lambda temporary: save_file(contiguous, str(temporary), metadata={METADATA_KEY: header}))


def refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """A ``json.loads`` ``object_pairs_hook``: the object, or ``ValueError`` naming a key given twice (plain JSON
    keeps the last value silently)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key(s) {repeated} appear twice in one object; keep one of each")
    return dict(pairs)


def read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict]:
    """Tensors and JSON header of a file written by :func:`write_safetensors_atomically`.

    Only safetensors and JSON are parsed (never pickle). The header must be a JSON object of the expected format.
    Callers check the header's fields against the model first (the clearer error), then :func:`verify_checksum`.

    Raises:
        MaskFileError: the file is truncated, corrupt, or not a modmask-lens file of ``expected_format``.
    """
    if Path(path).is_dir():
        files = ", ".join(sorted(file.name for file in Path(path).glob("*.safetensors"))[:5]) or "none"
        raise MaskFileError(f"{path} is a folder, not a file; pass a file in it (.safetensors there: {files})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error types for truncated or corrupt files
        raise MaskFileError(f"{path} is not a readable safetensors file ({error}); was it truncated?") from error
    try:
        metadata = json.loads(header[METADATA_KEY], object_pairs_hook=refuse_duplicate_keys)
    except KeyError as error:
        raise MaskFileError(f"{path} has no modmask-lens metadata; it was not written by modmask-lens") from error
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError, as is a duplicate key
        raise MaskFileError(
            f"{path}: its modmask-lens metadata is not valid JSON ({type(error).__name__}); "
            "the file is damaged or was edited: re-export it"
        ) from error
    found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
    if found != expected_format:
        raise MaskFileError(f"{path} is not a {expected_format} file (format: {found!r})")
    return tensors, metadata


def verify_checksum(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Raise :class:`MaskFileError` unless ``metadata`` carries the :func:`content_sha256` of ``tensors`` and itself
    (both read from ``path``).

    A file without the checksum (deleted from the header, or written before headers were covered) is refused: a
    check that a deleted field skips would check nothing.
    """
    expected = metadata.get(CHECKSUM_FIELD)
    if expected is None:
        raise MaskFileError(
            f"{path} carries no {CHECKSUM_FIELD} (it was removed, or the file predates checksummed headers); "
            "its contents cannot be verified: re-export it, or retrain"
        )
    if expected != content_sha256(tensors, metadata):
        raise MaskFileError(
            f"{path}: its tensors or header do not match the checksum written with them; the file is "
            "corrupted or was edited: copy it again or re-export it"
        )


def require_fields(metadata: dict, fields: dict[str, type], source: str) -> None:
    """Raise :class:`MaskFileError` unless ``metadata`` holds every field of ``fields`` with that JSON type."""
    for name, kind in fields.items():
        value = metadata.get(name)
        # bool is an int in Python; no header field is a boolean where an int is expected
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MaskFileError(
                f"{source}: header field {name!r} must be a {kind.__name__}, got "
                f"{type(value).__name__}; the file is damaged or was edited: re-export it"
            )


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, Tensor]:
    """An optimiser's per-parameter state as flat named tensors (``prefix/index/name``), for safetensors."""
    state = optimizer.state_dict()["state"]
    return {f"{prefix}/{index}/{name}": value for index, entries in state.items() for name, value in entries.items()}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], prefix: str, groups: list[dict] | None = None
) -> None:
    """Restore what :func:`optimizer_tensors` wrote under ``prefix`` into ``optimizer`` (same parameter order), and
    the hyperparameters :func:`optimizer_groups` wrote, if given (else the optimiser keeps its own)."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith(prefix + "/"):
            index, entry = name[len(prefix) + 1 :].split("/")
            state.setdefault(int(index), {})[entry] = tensor
    saved = optimizer.state_dict()
    saved["state"] = state
    if groups is not None:
        saved["param_groups"] = [group | {"params": own["params"]} for group, own in zip(groups, saved["param_groups"])]
    optimizer.load_state_dict(saved)


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with a copy of each one whose storage an earlier one uses (tied weights), which safetensors
    refuses to write twice."""
    seen: set[int] = set()
    unshared = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        unshared[name] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.add(pointer)
    return unshared


def optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """An optimiser's hyperparameters per parameter group as JSON (a scheduler changes ``lr`` as training goes)."""
    return [
        {key: value for key, value in group.items() if key != "params"}
        for group in optimizer.state_dict()["param_groups"]
    ]


class Checkpointer:
    """One resumable training state in one safetensors file: tensors, plus JSON metadata tagged with ``format``.

    Args:
        path: the checkpoint file (its folder is created on the first save).
        format: the format tag written into, and required of, the file (e.g. ``modmask-lens/probe-checkpoint``).

    Example:
        >>> import tempfile
        >>> checkpointer = Checkpointer(Path(tempfile.mkdtemp()) / "state.safetensors", "example/checkpoint")
        >>> _ = checkpointer.save({"weight": torch.ones(2)}, {"step": 3})
        >>> tensors, metadata = checkpointer.load({"step": int})
        >>> metadata["step"], tensors["weight"].tolist()
        (3, [1.0, 1.0])
    """

    def __init__(self, path: str | Path, format: str):
        self.path = Path(path)
        self.format = format

    def exists(self) -> bool:
        """Is there a checkpoint to resume from?"""
        return self.path.exists()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the checkpoint's folder (``.lock`` there) while a run writes to it; the lock
        goes with the process, also when it is killed.

        Raises:
            CheckpointInUse: another run (in this or another process) holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.parent / LOCK_FILE
        handle = lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CheckpointInUse(
                f"another run (process {holder}) is writing checkpoints to {self.path.parent}; wait for it to "
                "finish, or give this run another output folder"
            ) from error
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()  # closing the file releases the lock

    def save(self, tensors: dict[str, Tensor], metadata: dict) -> Path:
        """Write ``tensors`` and ``metadata`` atomically: a killed process leaves the previous checkpoint."""
        write_safetensors_atomically(self.path, tensors, {"format": self.format} | metadata)
        return self.path

    def load(
        self, fields: dict[str, type], check: Callable[[dict], None] | None = None
    ) -> tuple[dict[str, Tensor], dict]:
        """Tensors and metadata, after checking the format, that ``fields`` have their JSON types, ``check``
        (more header checks) and the checksum.

        Raises:
            MaskFileError: the file is truncated, corrupt, of another format, or lacks a field.
        """
        tensors, metadata = read_safetensors(self.path, self.format)
        require_fields(metadata, fields, str(self.path))
        if check is not None:
            check(metadata)
        verify_checksum(self.path, tensors, metadata)
        return tensors, metadata
