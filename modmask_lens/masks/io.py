"""Mask files: safetensors for tensors, JSON for everything else; never pickle.

A mask file holds one :class:`~modmask_lens.masks.mask_set.MaskSet`'s logits and, in the safetensors header, the
JSON that identifies it: the model's fingerprint (architecture, dimensions, hash of the weights), adapter name,
granularity, processing mode, subtask name, training settings and library version. Loading onto another model raises
:class:`~modmask_lens.masks.identity.ModelMismatch`. Files are written and read by :mod:`modmask_lens.core.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.core.checkpoint import (
    MaskFileError,
    read_safetensors,
    require_fields,
    verify_checksum,
    write_safetensors_atomically,
)
from modmask_lens.masks.config import MaskConfig
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.masks.mask_set import MaskSet, units_for

FORMAT = "modmask-lens/mask"
FORMAT_VERSION = 1
MASK_FIELDS = {
    "name": str,
    "library_version": str,
    "mask_config": dict,
    "adapter": str,
    "processing_mode": str,
    "model": dict,
    "units": list,
    "train_config": dict,
}


def library_version() -> str:
    from modmask_lens import __version__

    return __version__


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
        "objective": masks.objective,
    }


def save_masks(masks: MaskSet, path: str | Path) -> Path:
    """Save a mask set's logits and identity to ``path`` (a ``.safetensors`` file).

    Example (with :func:`load_masks`, on a tiny random model):
        >>> import tempfile
        >>> from pathlib import Path
        >>> from modmask_lens import MaskSet
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> bridge = tiny_bridge()
        >>> path = save_masks(MaskSet.for_bridge(bridge, name="jump"), Path(tempfile.mkdtemp()) / "jump.safetensors")
        >>> load_masks(path, bridge).name
        'jump'
    """
    path = Path(path)
    write_safetensors_atomically(
        path, {f"logits/{name}": logit for name, logit in masks.logits.items()}, mask_metadata(masks)
    )
    return path


def mask_set_from(bridge: Bridge, tensors: dict[str, Tensor], metadata: dict, source: str) -> MaskSet:
    """Rebuild a :class:`MaskSet` from a file's tensors and header, after checking it belongs to ``bridge``."""
    require_fields(metadata, MASK_FIELDS, source)
    if metadata["library_version"].split(".")[0] != library_version().split(".")[0]:
        raise MaskFileError(
            f"{source} was written by modmask-lens {metadata['library_version']}; this is "
            f"{library_version()} (another major version): re-export it with a matching version"
        )
    try:
        config = MaskConfig(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in metadata["mask_config"].items()
            }
        )
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
    objective = metadata.get("objective", {"name": "answer_cross_entropy"})  # files before objectives: the default
    if not (isinstance(objective, dict) and isinstance(objective.get("name"), str)):
        raise MaskFileError(f"{source}: its objective is not a named record; re-export the file")
    return MaskSet(
        metadata["name"], config, units, logits, origin, metadata.get("train_config", {}), history, objective
    )


def load_masks(path: str | Path, bridge: Bridge) -> MaskSet:
    """Load a mask file for ``bridge``.

    Raises:
        ModelMismatch: the file was made for another model, weights, processing mode or adapter.
        MaskFileError: the file is truncated, corrupt (checksum), not a mask file, has a malformed header, or is
            from another major version.

    Example: see :func:`save_masks`.
    """
    tensors, metadata = read_safetensors(Path(path), FORMAT)
    masks = mask_set_from(bridge, tensors, metadata, str(path))
    verify_checksum(Path(path), tensors, metadata)
    return masks
