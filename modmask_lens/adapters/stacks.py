"""Models with more than one stack of blocks (encoder-decoders), read from TransformerLens's component mapping.

TransformerLens maps an encoder-decoder (BART, mBART, Pegasus, Blenderbot, M2M100, T5, mT5, LongT5, LED) as two
stacks, ``encoder_blocks`` and ``decoder_blocks``, with top-level components for each side (``embed`` and
``decoder_embed``, ``embed_ln`` and ``decoder_embed_ln``, ``encoder_ln_final`` and ``decoder_ln_final``). An encoder
block has ``attn``, ``mlp`` and the norms ``ln1``/``ln2``; a decoder block has ``self_attn``, ``cross_attn``,
``mlp`` and ``ln1``/``ln2``/``ln3``, each attention with ``q``/``k``/``v``/``o`` and each MLP with ``in``/``out``
(and ``gate`` where gated). ``bridge.state_dict()`` names these tensors after the Hugging Face modules and drops some
of them (two tensors that convert to the same key keep only the first), so they are read here from the mapping and
keyed by the bridge's own component paths (``decoder_blocks.0.cross_attn.q.weight``).

Layer numbering: the stacks in the mapping's order, encoder blocks first, then decoder blocks: with ``E`` encoder
blocks, decoder block ``j`` is layer ``E + j``. Heads of a layer: the attentions of the block in the mapping's order,
self-attention heads ``0 .. n_heads - 1``, then a decoder block's cross-attention heads ``n_heads .. 2 n_heads - 1``
(``TensorSpec.unit_offset``). Neurons: the block's one MLP. Roles are HookedTransformer's (``W_Q`` for both
attentions' queries, ``ln3.w`` for the decoder's norm before its MLP); top-level tensors of the decoder side take
the role of their encoder-side twin (``decoder_embed.weight`` is ``W_E``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from transformer_lens.model_bridge.generalized_components import moe

from modmask_lens.adapters.base import TOP_LEVEL_ROLES, LocatedParameter, model_shape
from modmask_lens.core.bridge import Bridge

_SIDE_PREFIXES = ("encoder_", "decoder_")
_WRAPPER = "._original_component"
_ATTENTION_PARTS = {"q": "Q", "k": "K", "v": "V", "o": "O"}
_MLP_PARTS = {"in": "in", "gate": "gate", "out": "out", "dense_in": "in", "dense_gate": "gate", "dense_out": "out"}
_EXPERT_ROLES = {"in": "experts_in", "gate": "experts_in", "out": "experts_out"}
"""A per-expert module's projections, named as the dense MLP's in TransformerLens's map -> role suffixes (a gate
reads the residual stream per hidden unit like ``in``, as in a fused ``gate_up_proj`` stack)."""


def stacked_parameters(bridge: Bridge, stacks: tuple[str, ...]) -> list[LocatedParameter]:
    """Every parameter of the components that TransformerLens's mapping names, with its role, layer and head
    offset (numbering in the module docstring); parameters of modules the mapping does not name are not read."""
    mapping = bridge.adapter.component_mapping
    n_heads = model_shape(bridge).n_heads
    located = []
    for name in mapping:
        if name not in stacks:
            located.extend(_parameters_of(bridge, name, _top_level_role, None))
    first_layer = 0
    for stack in stacks:
        parts = list(getattr(mapping[stack], "submodules", None) or {})
        blocks = bridge.get_submodule(stack)
        for index in range(len(blocks)):
            layer, heads_before = first_layer + index, 0
            for part in parts:
                path = f"{stack}.{index}.{part}"
                children = bridge.get_submodule(path)._modules
                if all(child in children for child in _ATTENTION_PARTS):
                    for child, letter in _ATTENTION_PARTS.items():
                        role = _prefixed(letter)
                        located.extend(_parameters_of(bridge, f"{path}.{child}", role, layer, heads_before))
                    if "gate" in children:  # an output gate inside attention (HRM's gate_proj)
                        located.extend(_parameters_of(bridge, f"{path}.gate", _prefixed("attn_gate"), layer))
                    heads_before += n_heads
                elif isinstance(bridge.get_submodule(path), moe.MoEBridge):
                    located.extend(_mixture_of_experts_parameters(bridge, path, mapping[stack].submodules[part], layer))
                elif any(child in children for child in _MLP_PARTS):
                    for child, suffix in _MLP_PARTS.items():
                        if child in children:
                            located.extend(_parameters_of(bridge, f"{path}.{child}", _prefixed(suffix), layer))
                else:
                    located.extend(_parameters_of(bridge, path, _norm_role(part), layer))
        first_layer += len(blocks)
    return _read_where_called(bridge, located)


def _mixture_of_experts_parameters(
    bridge: Bridge, path: str, component_mapping: object, layer: int
) -> list[LocatedParameter]:
    """The parameters of a mixture-of-experts feed-forward that TransformerLens maps as one ``MoEBridge`` whose
    layers are dense or sparse (Switch Transformers alternates them).

    A dense layer binds the map's ``dense_in``/``dense_out`` (and ``dense_gate``): an MLP, roles ``W_in``/``W_out``.
    On a sparse layer the map's ``gate`` is the router (TransformerLens: "``gate`` is the ROUTER on sparse layers"),
    role ``W_router``, whatever module inside it holds the weight (Switch's ``router.classifier``). Its experts are not
    mapped: they are found as the modules inside the wrapped block that hold every projection the map names for the
    dense MLP (``wi`` and ``wo``), expert e's hidden units numbered ``e * d_expert`` on (expert-major, as a batched
    stack's), roles ``W_experts_in``/``W_experts_out``. A stack of batched expert tensors is the derived adapter's
    (:func:`~modmask_lens.adapters.derived._expert_specs`)."""
    component = bridge.get_submodule(path)
    parts = getattr(component_mapping, "submodules", None) or {}
    located = []
    for child, suffix in _MLP_PARTS.items():
        if child in component._modules:
            role = _router_role if child == "gate" and "dense_in" in parts else _prefixed(suffix)
            located.extend(_parameters_of(bridge, f"{path}.{child}", role, layer, recurse=child == "gate"))
    projections = {
        getattr(parts[child], "name", None): _EXPERT_ROLES[_MLP_PARTS[child]]
        for child in ("dense_in", "dense_gate", "dense_out")
        if child in parts
    }
    if not projections or "dense_in" in component._modules:
        return located
    wrapped_path, wrapped = _unwrapped(component, path)
    offset = 0
    for name, expert in wrapped.named_modules():
        if not name or not all(projection in expert._modules for projection in projections):
            continue
        native, hidden_units = name.replace(_WRAPPER, ""), 0
        for projection, suffix in projections.items():
            entries = _parameters_of(bridge, f"{wrapped_path}.{name}.{projection}", _prefixed(suffix), layer, offset)
            for entry in entries:
                attribute = entry.key.rpartition(".")[2]
                located.append(replace(entry, key=f"{path}.{native}.{projection}.{attribute}"))
                if suffix == "experts_in" and entry.parameter.dim() == 2:
                    hidden_units = entry.parameter.shape[0]
        offset += hidden_units
    return located


def _router_role(key: str) -> str:
    return "b_router" if key.endswith(".bias") else "W_router"


def _read_where_called(bridge: Bridge, located: list[LocatedParameter]) -> list[LocatedParameter]:
    """Move each parameter whose module the forward pass never calls to the tied twins that it does call.

    T5 ties one embedding matrix to four modules: TransformerLens maps ``embed`` to ``shared``, which T5's forward
    pass never calls, while it reads the same parameter through ``encoder.embed_tokens`` and
    ``decoder.embed_tokens``. A mask keyed by ``shared`` would mask nothing, so such a parameter is read through
    the twins the forward pass enters (probed once with a two-token input, no gradients, hooks removed after),
    keyed by their Hugging Face names (``encoder.embed_tokens.weight``) with the same role. A parameter with no
    called twin is kept where it is (the conformance kit reports it as unread).
    """
    parameters = {id(entry.parameter) for entry in located}
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for name, module in bridge.original_model.named_modules(remove_duplicate=False):
        for attribute, parameter in module._parameters.items():
            if parameter is not None and id(parameter) in parameters:
                holders.setdefault(id(parameter), []).append((name, module, attribute))
    entered: set[int] = set()
    modules = {id(module): module for twins in holders.values() for _, module, _ in twins}
    handles = [module.register_forward_pre_hook(lambda m, args: entered.add(id(m))) for module in modules.values()]
    try:
        with torch.no_grad():
            bridge(torch.zeros((1, 2), dtype=torch.long, device=bridge.cfg.device))
    except Exception:  # noqa: BLE001 (a model that fails unmasked is reported by the kit, not here)
        return located
    finally:
        for handle in handles:
            handle.remove()
    read_modules = {id(entry.module) for entry in located}
    moved = []
    for entry in located:
        twins: dict[int, tuple[str, nn.Module, str]] = {}
        for name, module, attribute in holders.get(id(entry.parameter), []):
            if id(module) in entered and id(module) not in read_modules:
                twins.setdefault(id(module), (name, module, attribute))
        if id(entry.module) in entered or not twins:
            moved.append(entry)
            continue
        for name, module, attribute in twins.values():
            native = name.replace("._original_component", "")
            moved.append(
                replace(entry, key=f"{native}.{attribute}", path=f"original_model.{name}.{attribute}", module=module)
            )
    return moved


def _top_level_role(key: str) -> str:
    side_free = next((key.removeprefix(prefix) for prefix in _SIDE_PREFIXES if key.startswith(prefix)), key)
    return TOP_LEVEL_ROLES.get(side_free, "other")


def _prefixed(suffix: str) -> Callable[[str], str]:
    """Role of ``<path>.weight`` / ``<path>.bias``: ``W_<suffix>`` / ``b_<suffix>``."""
    return lambda key: ("b_" if key.endswith(".bias") else "W_") + suffix


def _norm_role(part: str) -> Callable[[str], str]:
    """Role of a block norm's gain and bias (``ln3.w``); ``other`` for a part that is no norm."""
    if not part.startswith("ln"):
        return lambda key: "other"
    return lambda key: f"{part}.{'b' if key.endswith('.bias') else 'w'}"


def _parameters_of(
    bridge: Bridge,
    component_path: str,
    role_of_key: Callable[[str], str],
    layer: int | None,
    unit_offset: int = 0,
    recurse: bool = False,
) -> list[LocatedParameter]:
    """The parameters held directly by the module a bridge component wraps (its ``_original_component`` chain), or
    with ``recurse`` by it and its submodules (a router that keeps its weight in a ``classifier``), keyed
    ``<component_path>.<name>``."""
    path, module = _unwrapped(bridge.get_submodule(component_path), component_path)
    held = module.named_parameters() if recurse else module._parameters.items()
    located = []
    for name, parameter in held:
        if not isinstance(parameter, nn.Parameter):
            continue
        owner_path = f"{path}.{name}".rpartition(".")[0]
        located.append(
            LocatedParameter(
                f"{component_path}.{name.replace(_WRAPPER, '')}",
                role_of_key(f"{component_path}.{name}"),
                layer,
                f"{path}.{name}",
                bridge.get_submodule(owner_path),
                parameter,
                unit_offset,
            )
        )
    return located


def _unwrapped(module: nn.Module, path: str) -> tuple[str, nn.Module]:
    """The module a bridge component wraps (following its ``_original_component`` chain), and its path."""
    while "_original_component" in module._modules:
        module = module._modules["_original_component"]
        path += _WRAPPER
    return path, module
