"""Mask files: safetensors for tensors, JSON for everything else; never pickle.

A mask file holds one :class:`~modmask_lens.masks.mask_set.MaskSet`'s logits and, in the safetensors header, the
JSON that identifies it: the model's fingerprint (architecture, dimensions, hash of the weights), adapter name,
granularity, processing mode, subtask name, training settings and library version. Loading onto another model raises
:class:`~modmask_lens.masks.identity.ModelMismatch`. Files are written and read by :mod:`modmask_lens.core.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from modmask_lens.adapters import adapter_for
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.checkpoint import (
    MaskFileError,
    read_safetensors,
    require_fields,
    verify_checksum,
    write_safetensors_atomically,
)
from modmask_lens.masks.config import AUTO_SAMPLER, HEAD_MASK_OF_OLD_FILES, NEURON_MASK_OF_OLD_FILES, MaskConfig
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
        "threshold": masks.threshold,
        "fingerprint": masks.fingerprint,
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
    # Files written before the sampler, head_mask and neuron_mask fields existed: Gumbel-sigmoid samples, shared
    # head and neuron logits.
    written = {
        "sampler": "gumbel-sigmoid",
        "head_mask": HEAD_MASK_OF_OLD_FILES,
        "neuron_mask": NEURON_MASK_OF_OLD_FILES,
        **metadata["mask_config"],
    }
    try:
        config = MaskConfig(
            **{key: tuple(value) if isinstance(value, list) else value for key, value in written.items()}
        )
    except (TypeError, ValueError) as error:
        raise MaskFileError(f"{source}: its mask_config is invalid ({error}); re-export the file") from error
    unresolved = [
        name
        for name, value in (("sampler", config.sampler), ("init_logit", config.init_logit))
        if value in (AUTO_SAMPLER, None)
    ]
    if unresolved:
        raise MaskFileError(
            f"{source}: its mask_config leaves {' and '.join(unresolved)} to the library, where a mask file holds "
            "the values it trained with; re-export the file"
        )
    # The norm layout and the blocks' components, like the tensors' specs, are the loading bridge's (check() proves
    # it is the mask's model).
    adapter = adapter_for(bridge)
    origin = MaskOrigin(
        metadata["adapter"],
        metadata["processing_mode"],
        metadata["model"],
        adapter.norm_layout(),
        adapter.block_components(bridge),
    )
    units = units_for(bridge, config)
    origin.check(bridge, [member for unit in units for member in unit.members])
    expected = [{"name": unit.name, "shape": list(unit.shape)} for unit in units]
    if metadata["units"] != expected:
        raise MaskFileError(
            f"{source}: its mask units do not match what {config} gives on this model "
            f"({_unit_difference(metadata['units'], expected)}): wrong granularity or layers for this model, or "
            "saved by an earlier modmask-lens whose adapter masked other tensors of it (such as "
            "mixture-of-experts routers and shared experts, masked since); retrain the mask with this version"
        )
    logits, device = {}, next(bridge.parameters()).device  # where MaskSet.for_bridge puts fresh logits
    for unit in units:
        logit = tensors.get(f"logits/{unit.name}")
        if logit is None or tuple(logit.shape) != unit.shape or not torch.isfinite(logit).all():
            raise MaskFileError(f"{source}: logits of {unit.name} are missing, misshapen or not finite")
        logits[unit.name] = logit.to(device, torch.float32).requires_grad_(True)
    history = metadata.get("history", [])
    if not (isinstance(history, list) and all(isinstance(row, dict) for row in history)):
        raise MaskFileError(f"{source}: its training history is not a list of rows; re-export the file")
    threshold = metadata.get("threshold", 0.0)  # files written before the faithful readout were read out at 0
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise MaskFileError(f"{source}: its readout threshold {threshold!r} is not a finite number; re-export the file")
    fingerprint = metadata.get("fingerprint", {})
    if not isinstance(fingerprint, dict):
        raise MaskFileError(f"{source}: its run fingerprint is not an object; re-export the file")
    objective = metadata.get("objective", {"name": "answer_cross_entropy"})  # files before objectives: the default
    if not (isinstance(objective, dict) and isinstance(objective.get("name"), str)):
        raise MaskFileError(f"{source}: its objective is not a named record; re-export the file")
    return MaskSet(
        metadata["name"],
        config,
        units,
        logits,
        origin,
        metadata.get("train_config", {}),
        history,
        objective=objective,
        fingerprint=fingerprint,
        threshold=float(threshold),
    )


def _unit_difference(recorded: list, expected: list[dict]) -> str:
    """The first units that a file records and this model lacks, and the other way round."""

    def described(units) -> list[str]:
        return [f"{unit.get('name')} {unit.get('shape')}" if isinstance(unit, dict) else repr(unit) for unit in units]

    recorded_units, expected_units = described(recorded), described(expected)
    only_recorded = [unit for unit in recorded_units if unit not in expected_units]
    only_here = [unit for unit in expected_units if unit not in recorded_units]
    parts = [
        f"{label} {', '.join(units[:3])}{f' and {len(units) - 3} more' if len(units) > 3 else ''}"
        for label, units in (("the file has", only_recorded), ("this model has", only_here))
        if units
    ]
    return "; ".join(parts) or "the same units in another order"


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


def mask_labels(names: Sequence[str], paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """One distinct label per mask file: ``labels`` if given (one per file), else each mask's subtask name, with
    the file's name added where two masks share a subtask (two seeds or granularities of one subtask), and its whole
    path where even that repeats.

    Example:
        >>> mask_labels(["jump", "jump", "walk"], ["seed0/jump.safetensors", "seed1/jump-head.safetensors", "w"])
        ['jump (jump)', 'jump (jump-head)', 'walk']
        >>> mask_labels(["jump", "jump"], ["seed0/jump.safetensors", "seed1/jump.safetensors"])
        ['jump (seed0/jump.safetensors)', 'jump (seed1/jump.safetensors)']
    """
    if labels:
        check_labels(labels, paths)
        return list(labels)
    result = list(names)
    for refine in (lambda path: Path(path).stem, str):
        repeated = {label for label in result if result.count(label) > 1}
        result = [
            f"{name} ({refine(path)})" if label in repeated else label
            for name, path, label in zip(names, paths, result)
        ]
    repeated = sorted({label for label in result if result.count(label) > 1})
    if repeated:
        raise ValueError(f"the mask files {repeated} are given twice; pass each file once")
    return result


def check_labels(labels: Sequence[str] | None, paths: Sequence[str | Path]) -> None:
    """Raise ``ValueError`` unless ``labels``, where given, are one distinct label per mask file of ``paths`` (the
    commands check it before the model loads)."""
    if labels and (len(labels) != len(paths) or len(set(labels)) != len(labels)):
        raise ValueError(f"give one distinct --label per mask file: {len(paths)} files, labels {list(labels)}")


def load_labelled_masks(
    paths: Sequence[str | Path], bridge: Bridge, labels: Sequence[str] | None = None
) -> dict[str, MaskSet]:
    """Load mask files for ``bridge``, keyed by :func:`mask_labels` (each mask set renamed to its label, so tables
    and reports keep two masks of one subtask apart).

    Raises:
        FileNotFoundError / MaskFileError / ModelMismatch: as :func:`load_masks`.
        ValueError: ``labels`` are not one distinct label per file, or a file is given twice.
    """
    mask_sets = [load_masks(path, bridge) for path in paths]
    keys = mask_labels([mask_set.name for mask_set in mask_sets], paths, labels)
    return {key: dataclasses.replace(mask_set, name=key) for key, mask_set in zip(keys, mask_sets)}
