"""Baking masked tensors back into a Hugging Face checkpoint layout.

TransformerLens wraps every Hugging Face module of ``bridge.original_model`` (names gain ``._original_component``)
and adds split modules of its own (GPT-2's ``attn.q``). A bridge tensor reaches the Hugging Face state_dict in one of
three ways: it is a parameter of a Hugging Face module (its name is the module's name without the wrapper segments);
it is a view into a fused Hugging Face parameter (GPT-2's q/k/v inside ``c_attn``: written through the same strides);
or it is a copy of a slice of one, which only the family's adapter can place (:meth:`Adapter.fuse_for_export`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modmask_lens.adapters.base import Adapter
from modmask_lens.core.bridge import Bridge

_WRAPPER = "._original_component"


def native_state_dict(hf_model: nn.Module) -> tuple[dict[str, Tensor], nn.Module]:
    """The Hugging Face model's own state_dict (cloned), under its own names, and an empty twin on the meta device."""
    with torch.device("meta"):
        twin = type(hf_model)(hf_model.config)
    native_keys = set(twin.state_dict())
    state = {}
    for name, tensor in [
        *hf_model.named_parameters(remove_duplicate=False),
        *hf_model.named_buffers(remove_duplicate=False),
    ]:
        native = name.replace(_WRAPPER, "")
        if native in native_keys and native not in state:
            state[native] = tensor.detach().clone()
    return state, twin


def write_masked_tensors(
    adapter: Adapter, bridge: Bridge, state: dict[str, Tensor], masked: dict[str, tuple[str, Tensor]]
) -> None:
    """Write each masked tensor into ``state`` (a :func:`native_state_dict`), in place.

    Args:
        adapter: the bridge's adapter (for fused copies).
        bridge: the model.
        state: Hugging Face name -> tensor.
        masked: state_dict key -> (bridge parameter path, masked value).

    Raises:
        LookupError: when a masked tensor has no place in the Hugging Face layout.
    """
    module_names: dict[int, list[str]] = {}
    for name, module in bridge.original_model.named_modules(remove_duplicate=False):
        module_names.setdefault(id(module), []).append(name.replace(_WRAPPER, ""))
    originals = {name: tensor for name, tensor in _original_tensors(bridge) if name in state}
    storage_owner = {tensor.untyped_storage().data_ptr(): name for name, tensor in originals.items()}
    unplaced = {}
    for key, (path, value) in masked.items():
        module_path, _, attribute = path.rpartition(".")
        module = bridge.get_submodule(module_path)
        targets = [f"{name}.{attribute}" for name in module_names.get(id(module), []) if f"{name}.{attribute}" in state]
        parameter = getattr(module, attribute)
        owner = storage_owner.get(parameter.untyped_storage().data_ptr())
        if targets:
            for target in targets:
                state[target] = value.detach().clone()
        elif owner is not None:  # a view into a fused parameter: write through the same geometry
            offset = parameter.storage_offset() - originals[owner].storage_offset()
            state[owner].as_strided(parameter.shape, parameter.stride(), offset).copy_(value.detach())
        else:
            unplaced[key] = value
    placed = adapter.fuse_for_export(bridge, state, unplaced)
    missing = sorted(set(unplaced) - placed)
    if missing:
        raise LookupError(
            f"{adapter.name} adapter: cannot place {missing} in the Hugging Face layout; override "
            "Adapter.fuse_for_export for this family (see CONTRIBUTING.md#adapters)"
        )


def _original_tensors(bridge: Bridge) -> list[tuple[str, Tensor]]:
    """Native-named parameters of the Hugging Face model (the tensors whose storage views may share)."""
    return [
        (name.replace(_WRAPPER, ""), tensor)
        for name, tensor in bridge.original_model.named_parameters(remove_duplicate=False)
    ]
