"""Attention patterns of one prompt under the full model, under masks and under their inverses, precomputed for the
views (which embed them: a saved page needs no model to show them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from modmask_lens.adapters import adapter_for
from modmask_lens.core.bridge import Bridge, eval_mode
from modmask_lens.masks.apply import masked
from modmask_lens.masks.binary import BinaryMask

FULL = "full model"
"""Condition label of the unmasked model."""


def inverse_label(name: str) -> str:
    """Condition label of a mask's inverse (every masked weight it removes, and none it keeps)."""
    return f"~{name}"


NO_ATTENTION = "no attention there"
"""Why a block has no pattern when its adapter finds no attention heads in it (a recurrent, state-space or
convolution block: :meth:`~modmask_lens.adapters.Adapter.head_layers`)."""
NO_PATTERN_HOOK = "attention, but no blocks.{l}.attn.hook_pattern in the bridge"
"""Why a block with attention heads has no pattern: the bridge maps its attention without that hook (it runs the
block whole; an encoder-decoder model's stacks are ``encoder_blocks`` and ``decoder_blocks``, which the views do not
read)."""


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention probabilities of one prompt, per condition, in the blocks that expose them.

    Attributes:
        tokens: the prompt's tokens as display strings, one per position.
        patterns: condition (``full model``, a mask name, ``~`` + a mask name) -> probabilities
            ``[pattern_layer, head, query_pos, key_pos]`` of the blocks in :attr:`layers`, in that order (each query
            row sums to 1 over key positions <= query in a causal model, over every key position in a bidirectional
            one: :attr:`causal`).
        layers: the blocks with a pattern (a ``blocks.{layer}.attn.hook_pattern``), ascending.
        without_pattern: every other block -> why it has none (:data:`NO_ATTENTION` or :data:`NO_PATTERN_HOOK`).
    """

    tokens: list[str]
    patterns: dict[str, Float[Tensor, "pattern_layer head query_pos key_pos"]]
    layers: tuple[int, ...]
    without_pattern: dict[int, str]

    def head(self, condition: str, layer: int, head: int) -> Float[Tensor, "query_pos key_pos"]:
        """One head's pattern under one condition.

        Raises:
            KeyError: ``layer`` has no pattern (it says why).
        """
        if layer not in self.layers:
            raise KeyError(
                f"layer {layer} has no attention pattern: {self.without_pattern.get(layer, 'no such layer')}"
            )
        return self.patterns[condition][self.layers.index(layer), head]

    @property
    def causal(self) -> bool:
        """Whether no query attends to a later key under any condition (a decoder's patterns), so that a view may
        blank the upper triangle; False for a bidirectional model (BERT, RoBERTa, the tracr programs), whose queries
        attend to later keys too."""
        return not any(bool(pattern.triu(diagonal=1).any()) for pattern in self.patterns.values())

    def missing_note(self) -> str:
        """One line naming the blocks without a pattern and why (``""`` when every block has one), e.g.
        ``"No attention pattern in layer 0 (no attention there) or layer 2 (attention, but ...)."``"""
        by_reason: dict[str, list[int]] = {}
        for layer, reason in sorted(self.without_pattern.items()):
            by_reason.setdefault(reason, []).append(layer)
        if not by_reason:
            return ""
        groups = [f"{_layer_list(layers)} ({reason})" for reason, layers in by_reason.items()]
        return f"No attention pattern in {' or '.join(groups)}."


def _layer_list(layers: list[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(str(layer) for layer in layers)}"


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
    """Run one prompt through the full model and through each mask (and its inverse) and keep the attention pattern
    of every block that exposes one; the others are named with the reason (:meth:`AttentionPatterns.missing_note`).
    When no block has a pattern (a state-space model), the masked forward passes are not run.

    Args:
        bridge: the model.
        input_ids: the prompt's token ids (no batch axis), as the model reads them (add any BOS yourself).
        masks: mask name -> binary mask.
        token_labels: display strings of the tokens; default :func:`token_strings`.
        inverse: also run every mask's inverse ``~mask`` (its linear weights removed, norm gains kept: Csordás's
            test of what the rest of the model does).

    Raises:
        ValueError: a mask is named :data:`FULL`, or (with ``inverse``) like another mask's inverse (``~a`` beside
            ``a``), so that its condition would replace another's; or ``token_labels`` are not one per token.

    Example:
        >>> patterns = attention_patterns(bridge, torch.tensor([3, 7, 10]), {"copy_first": mask})  # doctest: +SKIP
        >>> patterns.head("copy_first", layer=1, head=0)                                           # doctest: +SKIP
    """
    labels = token_labels if token_labels is not None else token_strings(bridge, input_ids)
    if len(labels) != input_ids.shape[0]:
        raise ValueError(f"{len(labels)} token labels for a prompt of {input_ids.shape[0]} tokens; give one per token")
    # Conditions are keyed by label: a mask named "full model" or "~a" beside a mask "a" would take another's place.
    taken = {FULL} | ({inverse_label(name) for name in masks} if inverse else set())
    clashing = [name for name in masks if name in taken]
    if clashing:
        raise ValueError(
            f"the mask names {clashing} are condition labels of the views ({FULL!r}, and '~' + a mask's name for its "
            "inverse); rename them"
        )
    conditions: dict[str, BinaryMask | None] = {FULL: None}
    for name, mask in masks.items():
        mask.check_model(bridge)
        conditions[name] = mask
        if inverse:
            conditions[inverse_label(name)] = ~mask
    full = _patterns(bridge, input_ids, None)
    layers = tuple(sorted(full))
    without_pattern = {}
    if len(layers) < bridge.cfg.n_layers:
        head_layers = adapter_for(bridge).head_layers(bridge)
        without_pattern = {
            layer: NO_PATTERN_HOOK if layer in head_layers else NO_ATTENTION
            for layer in range(bridge.cfg.n_layers)
            if layer not in full
        }
    if not layers:  # nothing to show under any condition: the masked forward passes are not run
        empty = torch.empty(0, 0, len(labels), len(labels))
        return AttentionPatterns(labels, dict.fromkeys(conditions, empty), layers, without_pattern)
    by_condition = {
        label: full if mask is None else _patterns(bridge, input_ids, mask) for label, mask in conditions.items()
    }
    patterns = {label: torch.stack([by_layer[layer] for layer in layers]) for label, by_layer in by_condition.items()}
    return AttentionPatterns(labels, patterns, layers, without_pattern)


_PATTERN_HOOK = re.compile(r"^blocks\.(?P<layer>\d+)\.attn\.hook_pattern$")


def _patterns(
    bridge: Bridge, input_ids: Int[Tensor, " pos"], mask: BinaryMask | None
) -> dict[int, Float[Tensor, "head query_pos key_pos"]]:
    """Block -> its pattern on the prompt, for every block whose ``hook_pattern`` fires."""

    def run() -> dict[int, Tensor]:
        _, cache = bridge.run_with_cache(input_ids[None], names_filter=lambda name: bool(_PATTERN_HOOK.match(name)))
        return {int(_PATTERN_HOOK.match(name)["layer"]): pattern[0] for name, pattern in cache.items()}

    with torch.no_grad(), eval_mode(bridge):
        if mask is None:
            return run()
        with masked(bridge, mask, check_weights=False):
            return run()
