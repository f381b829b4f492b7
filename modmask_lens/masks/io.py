"""Mask files: safetensors for tensors, JSON for everything else; never pickle.

A mask file holds one :class:`~modmask_lens.masks.mask_set.MaskSet`'s logits and, in the safetensors header, the
JSON that identifies it: the model's fingerprint (architecture, dimensions, hash of the weights), adapter name,
granularity, processing mode, subtask name, training settings and library version. Loading onto another model raises
:class:`~modmask_lens.masks.identity.ModelMismatch`. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.mask_set import MaskSet, units_for

FORMAT = "modmask-lens/mask"
FORMAT_VERSION = 1
METADATA_KEY = "modmask_lens"
CHECKSUM_FIELD = "tensors_sha256"
MASK_FIELDS = {"name": str, "library_version": str, "mask_config": dict, "adapter": str, "processing_mode": str,
               "model": dict, "units": list, "train_config": dict}


class MaskFileError(ValueError):
    """A mask or checkpoint file is unreadable, truncated, or not a modmask-lens file."""


def library_version() -> str:
    from modmask_lens import __version__

    return __version__


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` in name order: catches flipped bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_safetensors_atomically(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Write tensors plus a JSON header to ``path`` via a temporary file and a rename (readers never see half).

    A process killed during the write leaves ``path`` as it was (plus a stray ``.tmp`` that readers ignore).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    contiguous = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    header = json.dumps(metadata | {CHECKSUM_FIELD: tensors_sha256(contiguous)})
    save_file(contiguous, str(temporary), metadata={METADATA_KEY: header})
    os.replace(temporary, path)


def read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict]:
    """Tensors and JSON header of a file written by :func:`write_safetensors_atomically`.

    Only safetensors and JSON are parsed (never pickle). The header must be a JSON object of the expected format.
    Callers check the header's fields against the model first (the clearer error), then :func:`verify_checksum`.

    Raises:
        MaskFileError: the file is truncated, corrupt, or not a modmask-lens file of ``expected_format``.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error types for truncated or corrupt files
        raise MaskFileError(f"{path} is not a readable safetensors file ({error}); was it truncated?") from error
    try:
        metadata = json.loads(header[METADATA_KEY])
    except KeyError as error:
        raise MaskFileError(f"{path} has no modmask-lens metadata; it was not written by modmask-lens") from error
    except (json.JSONDecodeError, RecursionError) as error:
        raise MaskFileError(f"{path}: its modmask-lens metadata is not valid JSON ({type(error).__name__}); "
                            "the file is damaged or was edited: re-export it") from error
    found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
    if found != expected_format:
        raise MaskFileError(f"{path} is not a {expected_format} file (format: {found!r})")
    return tensors, metadata


def verify_checksum(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Raise :class:`MaskFileError` if ``tensors`` differ from the checksum in ``metadata`` (both read from ``path``).

    Files written before checksums were added carry none and pass.
    """
    expected = metadata.get(CHECKSUM_FIELD)
    if expected is not None and expected != tensors_sha256(tensors):
        raise MaskFileError(f"{path}: its tensors do not match the checksum written with them; the file is "
                            "corrupted: copy it again or re-export it")


def require_fields(metadata: dict, fields: dict[str, type], source: str) -> None:
    """Raise :class:`MaskFileError` unless ``metadata`` holds every field of ``fields`` with that JSON type."""
    for name, kind in fields.items():
        value = metadata.get(name)
        # bool is an int in Python; no header field is a boolean where an int is expected
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MaskFileError(f"{source}: header field {name!r} must be a {kind.__name__}, got "
                                f"{type(value).__name__}; the file is damaged or was edited: re-export it")


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, Tensor]:
    """An optimiser's per-parameter state as flat named tensors (``prefix/index/name``), for safetensors."""
    state = optimizer.state_dict()["state"]
    return {f"{prefix}/{index}/{name}": value for index, entries in state.items() for name, value in entries.items()}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], prefix: str) -> None:
    """Restore what :func:`optimizer_tensors` wrote under ``prefix`` into ``optimizer`` (same parameter order)."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith(prefix + "/"):
            index, entry = name[len(prefix) + 1:].split("/")
            state.setdefault(int(index), {})[entry] = tensor
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)


def mask_metadata(masks: MaskSet) -> dict:
    """The JSON header of a mask file."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "name": masks.name,
        "mask_config": masks.config.to_dict(),
        "train_config": masks.train_config,
        "adapter": masks.origin.adapter,
        "processing_mode": masks.origin.mode,
        "model": masks.origin.model,
        "units": [{"name": unit.name, "shape": list(unit.shape)} for unit in masks.units],
        "history": masks.history,
    }


def save_masks(masks: MaskSet, path: str | Path) -> Path:
    """Save a mask set's logits and identity to ``path`` (a ``.safetensors`` file).

    Example:
        >>> save_masks(jump_masks, "masks/jump.safetensors")                 # doctest: +SKIP
    """
    path = Path(path)
    write_safetensors_atomically(path, {f"logits/{name}": logit for name, logit in masks.logits.items()},
                                 mask_metadata(masks))
    return path


def mask_set_from(bridge: nn.Module, tensors: dict[str, Tensor], metadata: dict, source: str) -> MaskSet:
    """Rebuild a :class:`MaskSet` from a file's tensors and header, after checking it belongs to ``bridge``."""
    require_fields(metadata, MASK_FIELDS, source)
    if metadata["library_version"].split(".")[0] != library_version().split(".")[0]:
        raise MaskFileError(
            f"{source} was written by modmask-lens {metadata['library_version']}; this is "
            f"{library_version()} (another major version): re-export it with a matching version"
        )
    try:
        config = MaskConfig(**{key: tuple(value) if isinstance(value, list) else value
                               for key, value in metadata["mask_config"].items()})
    except (TypeError, ValueError) as error:
        raise MaskFileError(f"{source}: its mask_config is invalid ({error}); re-export the file") from error
    origin = MaskOrigin(metadata["adapter"], metadata["processing_mode"], metadata["model"])
    units = units_for(bridge, config)
    origin.check(bridge, [member for unit in units for member in unit.members])
    expected = [{"name": unit.name, "shape": list(unit.shape)} for unit in units]
    if metadata["units"] != expected:
        raise MaskFileError(
            f"{source}: its mask units do not match what {config} gives on this model (wrong granularity or "
            "layers for this model); load it onto the model and version it was trained with"
        )
    logits = {}
    for unit in units:
        logit = tensors.get(f"logits/{unit.name}")
        if logit is None or tuple(logit.shape) != unit.shape or not torch.isfinite(logit).all():
            raise MaskFileError(f"{source}: logits of {unit.name} are missing, misshapen or not finite")
        logits[unit.name] = logit.to(torch.float32).requires_grad_(True)
    history = metadata.get("history", [])
    if not (isinstance(history, list) and all(isinstance(row, dict) for row in history)):
        raise MaskFileError(f"{source}: its training history is not a list of rows; re-export the file")
    return MaskSet(metadata["name"], config, units, logits, origin, metadata.get("train_config", {}), history)


def load_masks(path: str | Path, bridge: nn.Module) -> MaskSet:
    """Load a mask file for ``bridge``.

    Raises:
        ModelMismatch: the file was made for another model, weights, processing mode or adapter.
        MaskFileError: the file is truncated, corrupt (checksum), not a mask file, has a malformed header, or is
            from another major version.

    Example:
        >>> jump_masks = load_masks("masks/jump.safetensors", bridge)          # doctest: +SKIP
    """
    tensors, metadata = read_safetensors(Path(path), FORMAT)
    masks = mask_set_from(bridge, tensors, metadata, str(path))
    verify_checksum(Path(path), tensors, metadata)
    return masks
