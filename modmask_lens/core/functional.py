"""A model as a function of its parameters: call any bound method of a bridge with other tensors in place of its
parameters (``torch.func.functional_call``), leaving the model untouched.

``tie_weights=False`` with exactly one path per (module, attribute) is essential: with the default
``tie_weights=True`` TransformerLens 4.x bridges (whose parameters are reachable through several module paths) are
left holding the replacement tensor for good.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from modmask_lens.core.bridge import Bridge


class MethodEntry(nn.Module):
    """Holds the bridge as a child so that ``functional_call`` can swap its tensors around any bound method."""

    def __init__(self, bridge: nn.Module):
        super().__init__()
        self.bridge = bridge

    def forward(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)


TensorKey = tuple[int, str]
"""(id of the owning module, attribute name): one tensor slot, however many module paths reach it."""


def tensor_slots(module: nn.Module, kind: str = "_parameters") -> dict[TensorKey, tuple[str, Tensor]]:
    """Every parameter (or buffer: ``kind="_buffers"``) slot of ``module`` with the first path that reaches it.

    A bridge's wrapped Hugging Face model (``original_model``, not registered as a child) is walked after the
    bridge's own modules: most of its modules are reached through the bridge already, but not the ones
    TransformerLens does not wrap, such as T5's ``encoder.embed_tokens``, which its forward pass calls.
    """
    slots = {}
    original = getattr(module, "original_model", None)
    extra = original.named_modules(prefix="original_model") if isinstance(original, nn.Module) else ()
    for module_path, submodule in [*module.named_modules(), *extra]:
        for attribute, tensor in getattr(submodule, kind).items():
            if tensor is not None and (id(submodule), attribute) not in slots:
                slots[(id(submodule), attribute)] = (f"{module_path}.{attribute}" if module_path else attribute, tensor)
    return slots


_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")


def without_indices(path: str) -> str:
    """``path`` with every numeric segment but the last replaced by ``#``: the place of a tensor within its block,
    whichever block it is.

    >>> without_indices("blocks.12.mlp.experts.3.weight")
    'blocks.#.mlp.experts.#.weight'
    """
    return _INDEX.sub("#", path)


def depth_twins(slots: Mapping[TensorKey, tuple[str, Tensor]]) -> dict[TensorKey, tuple[TensorKey, ...]]:
    """For each slot of ``slots`` (:func:`tensor_slots`) whose tensor other slots hold too at the same place of
    other blocks (paths equal but for their indices: :func:`without_indices`), those other slots.

    Such a tensor is one tensor read at several depths, through modules of its own at each: a block shared across
    layers whose Hugging Face model ties every copy's parameters to the first's (Zamba2's shared transformer block).
    A mask of it applies at each depth (:mod:`modmask_lens.masks.apply`). Tied tensors at different places
    (GPT-2's embedding and unembedding) are no twins: each place keeps its own mask."""
    groups: dict[tuple[int, str], list[TensorKey]] = {}
    for key, (path, tensor) in slots.items():
        groups.setdefault((id(tensor), without_indices(path)), []).append(key)
    shared = [group for group in groups.values() if len(group) > 1]
    return {key: tuple(other for other in group if other != key) for group in shared for key in group}


def slot_of(module: nn.Module, path: str) -> TensorKey:
    """The slot of the tensor at ``path`` (a parameter path, e.g. ``blocks.0.attn.q._original_component.weight``
    on a TransformerBridge) under ``module``."""
    module_path, _, attribute = path.rpartition(".")
    return id(module.get_submodule(module_path)), attribute


def call_with_parameters(
    bridge: Bridge, parameters: Mapping[str, Tensor], method: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Call ``method`` (a bound method of ``bridge``, e.g. ``bridge.run_with_hooks``) with ``parameters`` (bridge
    path -> tensor, one path per slot: :func:`tensor_slots`) in place of the bridge's own."""
    prefixed = {f"bridge.{path}": value for path, value in parameters.items()}
    return torch.func.functional_call(
        MethodEntry(bridge), prefixed, (method, *args), kwargs, tie_weights=False, strict=False
    )


def frozen_call(bridge: Bridge, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` with every parameter of ``bridge`` detached: gradients reach the inputs (and hooks) but never
    the model's own tensors, whose ``requires_grad=True`` (as TransformerLens leaves them) stays untouched. The
    weights are read afresh on every call, so ``enable_compatibility_mode()`` or ``bridge.to()`` never leave a stale
    copy behind."""
    detached = {path: parameter.detach() for path, parameter in tensor_slots(bridge).values()}
    return call_with_parameters(bridge, detached, method, *args, **kwargs)
