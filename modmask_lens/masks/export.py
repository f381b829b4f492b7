"""Exporting a baked binary mask as a Hugging Face model folder that ``transformers`` loads without modmask-lens."""

from __future__ import annotations

from pathlib import Path

import torch

from modmask_lens.adapters import adapter_for
from modmask_lens.adapters.export import (
    native_config,
    native_state_dict,
    untie_word_embeddings,
    write_masked_tensors,
)
from modmask_lens.core.atomic_files import replace_folder_atomically
from modmask_lens.core.bridge import Bridge
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.identity import processing_mode
from modmask_lens.masks.mask_set import MaskSet


def export_masked_model(bridge: Bridge, mask: BinaryMask | MaskSet, directory: str | Path) -> Path:
    """Write ``weights * mask`` in the model's own Hugging Face layout (re-fusing fused tensors) to ``directory``.

    Tied embedding and unembedding matrices are untied in the exported config, and in every config nested in it,
    when the mask covers either, since the two may keep different weights. The tokenizer is saved alongside when
    the bridge has one.

    Args:
        bridge: a bridge booted with ``boot_transformers`` (raw weights; compatibility mode rewrites weights that
            the Hugging Face layout cannot hold).
        mask: the binary mask to bake (a :class:`MaskSet` is read out by :meth:`MaskSet.binary`, at its threshold).
        directory: output folder.

    Example:
        >>> export_masked_model(bridge, jump_masks, "jump-subnetwork")                 # doctest: +SKIP
        >>> AutoModelForCausalLM.from_pretrained("jump-subnetwork")                      # doctest: +SKIP
    """
    if processing_mode(bridge) != "raw":
        raise ValueError("export needs raw weights: boot the model again without enable_compatibility_mode()")
    binary = mask.binary() if isinstance(mask, MaskSet) else mask
    binary.check_model(bridge)
    hf_model = bridge.original_model
    state, _ = native_state_dict(hf_model)
    masked = {
        spec.key: (spec.path, bridge.get_parameter(spec.path).detach() * binary.kept[spec.key]) for spec in binary.specs
    }
    write_masked_tensors(adapter_for(bridge), bridge, state, masked)
    config = native_config(hf_model)
    if any(spec.role in ("W_E", "W_U") for spec in binary.specs):
        untie_word_embeddings(hf_model, config, state)
    exported = type(hf_model)(config)
    missing, unexpected = exported.load_state_dict(state, strict=False)
    if unexpected or [key for key in missing if key in exported.state_dict()]:
        raise LookupError(
            f"export produced a state_dict that does not fit {type(hf_model).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    exported_state = exported.state_dict()
    collapsed = sorted(
        name
        for name, tensor in state.items()
        if name in exported_state and not torch.equal(exported_state[name], tensor)
    )
    if collapsed:
        raise LookupError(
            f"{type(hf_model).__name__} ties {collapsed} to one tensor (its config shares them), but the mask keeps "
            "different weights in them, so no checkpoint of this family can hold the masked model; mask them alike "
            "or leave them out of the mask (MaskConfig(roles=...))"
        )

    def save(folder: Path) -> None:
        exported.save_pretrained(folder)
        if getattr(bridge, "tokenizer", None) is not None:
            bridge.tokenizer.save_pretrained(folder)

    return replace_folder_atomically(directory, save)
