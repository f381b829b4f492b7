"""Modular-training variants of zoo recipes: the task loss plus BIMT's connection cost and swaps, or minus the
clusterability reward, on the Hugging Face model being trained.

The modularity module reads units (heads, neurons, the residual stream) from a TransformerBridge, so the model is
booted into a bridge before training (``boot_transformers(hf_model=...)`` wraps the same parameters; the model's
modules are rewrapped in place and its forward stays the same function). Training then updates those parameters, and
:func:`unwrapped_model` copies them into a fresh model of the plain Hugging Face layout for saving.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor, optim
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from experiments.zoo.architectures import build_model
from experiments.zoo.recipes import Recipe
from modmask_lens.adapters.export import native_state_dict
from modmask_lens.modularity.bimt import BimtObjective
from modmask_lens.modularity.bridge_graph import unit_graph_of
from modmask_lens.modularity.clusterability_loss import ClusterabilityConfig, ClusterabilityLoss


@runtime_checkable
class Regulariser(Protocol):
    """What a modular-training recipe adds to plain training."""

    def penalty(self, step: int) -> Float[Tensor, ""]:
        """The term added to the task loss at ``step`` (0-based, before the optimiser step)."""

    def after_step(self, step: int, optimizer: optim.Optimizer) -> int:
        """Work after the optimiser step ``step``; returns the number of units moved (BIMT swaps)."""


class ClusterabilityRegulariser:
    """The clusterability loss: ``-lambda * mean clusterability`` against clusters fixed when training starts."""

    def __init__(self, bridge: TransformerBridge, config: ClusterabilityConfig):
        self.loss = ClusterabilityLoss(bridge, config)

    def penalty(self, step: int) -> Float[Tensor, ""]:
        return self.loss.penalty()

    def after_step(self, step: int, optimizer: optim.Optimizer) -> int:
        return 0


def wrap_in_bridge(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> TransformerBridge:
    """Boot a bridge around ``model`` itself (no copy): its parameters become the bridge's."""
    with tempfile.TemporaryDirectory() as directory:  # boot_transformers reads the config and tokenizer by path
        model.config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return TransformerBridge.boot_transformers(directory, hf_model=model, tokenizer=tokenizer, device="cpu")


def regulariser_for(recipe_: Recipe, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> Regulariser | None:
    """The recipe's regulariser on ``model`` (wrapped into a bridge in place), or None for plain training."""
    if recipe_.bimt is not None and recipe_.clusterability is not None:
        raise ValueError(f"recipe {recipe_.name!r} sets both bimt and clusterability; choose one")
    if recipe_.bimt is not None:
        return BimtObjective(
            unit_graph_of(wrap_in_bridge(model, tokenizer)), dataclasses.replace(recipe_.bimt, steps=recipe_.steps)
        )
    if recipe_.clusterability is not None:
        return ClusterabilityRegulariser(wrap_in_bridge(model, tokenizer), recipe_.clusterability)
    return None


def unwrapped_model(model: PreTrainedModel, recipe_: Recipe, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh model of the recipe's plain Hugging Face layout holding ``model``'s current weights (``model`` may be
    wrapped by a bridge, whose renamed modules and split views ``save_pretrained`` cannot write)."""
    state, _ = native_state_dict(model)
    plain = build_model(recipe_.architecture, tokenizer)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or {}) | {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise LookupError(
            f"cannot unwrap the trained model: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    return plain.eval()
