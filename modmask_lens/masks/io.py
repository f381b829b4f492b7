"""Mask files: safetensors for tensors, JSON for everything else; never pickle.

A mask file holds one :class:`~modmask_lens.masks.mask_set.MaskSet`'s logits and, in the safetensors header, the
JSON that identifies it: the model's fingerprint (architecture, dimensions, hash of the weights), adapter name,
granularity, processing mode, subtask name, training settings and library version. Loading onto another model raises
:class:`~modmask_lens.masks.identity.ModelMismatch`. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

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


class MaskFileError(ValueError):
    """A mask or checkpoint file is unreadable, truncated, or not a modmask-lens file."""


def library_version() -> str:
    from modmask_lens import __version__

    return __version__


def write_safetensors_atomically(path: Path, tensors: dict[str, Tensor], metadata: dict) -> None:
    """Write tensors plus a JSON header to ``path`` via a temporary file and a rename (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    contiguous = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    save_file(contiguous, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
    os.replace(temporary, path)


def read_safetensors(path: Path, expected_format: str) -> tuple[dict[str, Tensor], dict]:
    """Tensors and JSON header of a file written by :func:`write_safetensors_atomically`."""
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
    except (KeyError, json.JSONDecodeError) as error:
        raise MaskFileError(f"{path} has no modmask-lens metadata; it was not written by modmask-lens") from error
    if not isinstance(metadata, dict) or metadata.get("format") != expected_format:
        raise MaskFileError(f"{path} is not a {expected_format} file (format: {metadata.get('format')!r})")
    return tensors, metadata


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
    major = str(metadata.get("library_version", "0")).split(".")[0]
    if major != library_version().split(".")[0]:
        raise MaskFileError(
            f"{source} was written by modmask-lens {metadata.get('library_version')}; this is "
            f"{library_version()} (another major version): re-export it with a matching version"
        )
    config_fields = metadata["mask_config"]
    config = MaskConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in config_fields.items()})
    origin = MaskOrigin(metadata["adapter"], metadata["processing_mode"], metadata["model"])
    units = units_for(bridge, config)
    origin.check(bridge, [member for unit in units for member in unit.members])
    expected = [{"name": unit.name, "shape": list(unit.shape)} for unit in units]
    if metadata["units"] != expected:
        raise MaskFileError(f"{source}: its mask units do not match what {config} gives on this model")
    logits = {}
    for unit in units:
        logit = tensors.get(f"logits/{unit.name}")
        if logit is None or tuple(logit.shape) != unit.shape or not torch.isfinite(logit).all():
            raise MaskFileError(f"{source}: logits of {unit.name} are missing, misshapen or not finite")
        logits[unit.name] = logit.to(torch.float32).requires_grad_(True)
    return MaskSet(metadata["name"], config, units, logits, origin, metadata.get("train_config", {}))


def load_masks(path: str | Path, bridge: nn.Module) -> MaskSet:
    """Load a mask file for ``bridge``.

    Raises:
        ModelMismatch: the file was made for another model, weights, processing mode or adapter.
        MaskFileError: the file is truncated, corrupt, not a mask file, or from another major version.

    Example:
        >>> jump_masks = load_masks("masks/jump.safetensors", bridge)          # doctest: +SKIP
    """
    tensors, metadata = read_safetensors(Path(path), FORMAT)
    return mask_set_from(bridge, tensors, metadata, str(path))
