"""Attention patterns of one prompt under the full model, under masks and under their inverses, precomputed for the
views (which embed them: a saved page needs no model to show them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.core.bridge import Bridge
from modmask_lens.masks.apply import masked
from modmask_lens.masks.binary import BinaryMask

FULL = "full model"
"""Condition label of the unmasked model."""


def inverse_label(name: str) -> str:
    """Condition label of a mask's inverse (every masked weight it removes, and none it keeps)."""
    return f"~{name}"


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention probabilities of one prompt, per condition.

    Attributes:
        tokens: the prompt's tokens as display strings, one per position.
        patterns: condition (``full model``, a mask name, ``~`` + a mask name) -> probabilities
            ``[layer, head, query_pos, key_pos]`` (each query row sums to 1 over key positions <= query).
    """

    tokens: list[str]
    patterns: dict[str, Float[Tensor, "layer head query_pos key_pos"]]

    def head(self, condition: str, layer: int, head: int) -> Float[Tensor, "query_pos key_pos"]:
        """One head's pattern under one condition."""
        return self.patterns[condition][layer, head]


def token_strings(bridge: Bridge, input_ids: Int[Tensor, " pos"]) -> list[str]:
    """Display strings of the prompt's tokens: the tokenizer's tokens when it knows every id, else the ids."""
    tokenizer = getattr(bridge, "tokenizer", None)
    if tokenizer is not None and len(tokenizer) > int(input_ids.max()):
        return [str(token) for token in tokenizer.convert_ids_to_tokens(input_ids.tolist())]
    return [str(token_id) for token_id in input_ids.tolist()]


def attention_patterns(
    bridge: Bridge,
    input_ids: Int[Tensor, " pos"],
    masks: Mapping[str, BinaryMask],
    token_labels: list[str] | None = None,
    inverse: bool = True,
) -> AttentionPatterns:
    """Run one prompt through the full model and through each mask (and its inverse) and keep every attention pattern.

    Args:
        bridge: the model.
        input_ids: the prompt's token ids (no batch axis), as the model reads them (add any BOS yourself).
        masks: mask name -> binary mask.
        token_labels: display strings of the tokens; default :func:`token_strings`.
        inverse: also run every mask's inverse ``~mask`` (its linear weights removed, norm gains kept: Csordás's
            test of what the rest of the model does).

    Example:
        >>> patterns = attention_patterns(bridge, torch.tensor([3, 7, 10]), {"copy_first": mask})  # doctest: +SKIP
        >>> patterns.head("copy_first", layer=1, head=0)                                           # doctest: +SKIP
    """
    labels = token_labels if token_labels is not None else token_strings(bridge, input_ids)
    if len(labels) != input_ids.shape[0]:
        raise ValueError(f"{len(labels)} token labels for a prompt of {input_ids.shape[0]} tokens; give one per token")
    conditions: dict[str, BinaryMask | None] = {FULL: None}
    for name, mask in masks.items():
        mask.check_model(bridge)
        conditions[name] = mask
        if inverse:
            conditions[inverse_label(name)] = ~mask
    return AttentionPatterns(labels, {label: _patterns(bridge, input_ids, mask) for label, mask in conditions.items()})


def _patterns(
    bridge: Bridge, input_ids: Int[Tensor, " pos"], mask: BinaryMask | None
) -> Float[Tensor, "layer head query_pos key_pos"]:
    def run() -> Tensor:
        _, cache = bridge.run_with_cache(input_ids[None], names_filter=lambda name: name.endswith("attn.hook_pattern"))
        return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(bridge.cfg.n_layers)])

    with torch.no_grad():
        if mask is None:
            return run()
        with masked(bridge, mask, check_weights=False):
            return run()
