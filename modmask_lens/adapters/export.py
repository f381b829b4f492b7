"""Baking masked tensors back into a Hugging Face checkpoint layout.

TransformerLens wraps every Hugging Face module of ``bridge.original_model`` (names gain ``._original_component``)
and adds split modules of its own (GPT-2's ``attn.q``). A bridge tensor reaches the Hugging Face state_dict in one of
four ways: it is a parameter of a Hugging Face module (its name is the module's name without the wrapper segments);
it is a view into a fused Hugging Face parameter (GPT-2's q/k/v inside ``c_attn``: written through the same strides);
it is a copy that TransformerLens's own declared split made of a fused parameter (the ``split_qkv_matrix`` of a joint
q/k/v attention component: BLOOM, Falcon, CodeGen, MPT, GPT-NeoX), placed by tracing that split (:func:`split_sources`);
or it is a copy nothing declares, which only the family's adapter can place (:meth:`Adapter.fuse_for_export`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformers import PretrainedConfig

from modmask_lens.adapters.base import Adapter
from modmask_lens.core.bridge import Bridge
from modmask_lens.core.functional import without_indices

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


def native_config(hf_model: nn.Module):
    """A copy of the Hugging Face model's config as its checkpoint would have it, without what TransformerLens sets
    when it boots: ``output_attentions=True`` (so that hooks see attention patterns) is reset to the default
    ``False``. Saved with it, a reloaded model would return attentions on every call, and some families change their
    forward pass with it: Falcon's SDPA path then computes attention without its causal mask (the exported tiny Falcon
    differed from the masked bridge by 0.6 in the logits)."""
    config = copy.deepcopy(hf_model.config)
    config.output_attentions = False
    return config


OUTPUT_SCALE_TIED_TO_EMBEDDINGS = {"SwitchTransformersForConditionalGeneration"}
"""Families whose forward pass multiplies the decoder output by ``d_model ** -0.5`` before the unembedding only while
``tie_word_embeddings`` is set (Mesh TensorFlow's convention; T5 keeps that scale in its own
``scale_decoder_outputs``, so untying its embeddings does not drop it)."""


def untie_word_embeddings(hf_model: nn.Module, config, state: dict[str, Tensor]) -> None:
    """Set ``tie_word_embeddings=False`` in ``config`` (a :func:`native_config`) and in every config nested in it
    (:func:`nested_configs`), and for the families of :data:`OUTPUT_SCALE_TIED_TO_EMBEDDINGS` fold the output scale
    their untied forward pass drops into ``state["lm_head.weight"]`` (in place), so the untied model computes the same
    logits.

    A nested config ties by its own flag: Florence-2's language model (built from ``text_config``) ties its
    encoder's and decoder's ``embed_tokens`` to its ``shared`` embedding whatever the outer config says, so untying
    only the outer config left those three one tensor in the reloaded model."""
    family = type(hf_model).__name__
    scaled = getattr(config, "tie_word_embeddings", False) and family in OUTPUT_SCALE_TIED_TO_EMBEDDINGS
    for nested in nested_configs(config):
        if getattr(nested, "tie_word_embeddings", False):
            nested.tie_word_embeddings = False
    if scaled:
        state["lm_head.weight"] = state["lm_head.weight"] * config.d_model**-0.5


def nested_configs(config: PretrainedConfig) -> list[PretrainedConfig]:
    """``config`` and the configs of its submodels (transformers' ``sub_configs``: a multimodal model's
    ``text_config`` and ``vision_config``), depth first.

    >>> from transformers import Florence2Config
    >>> [type(nested).__name__ for nested in nested_configs(Florence2Config())]
    ['Florence2Config', 'Florence2VisionConfig', 'BartConfig']
    """
    found = [config]
    for name in getattr(config, "sub_configs", None) or {}:
        nested = getattr(config, name, None)
        if isinstance(nested, PretrainedConfig):
            found.extend(nested_configs(nested))
    return found


def write_masked_tensors(
    adapter: Adapter, bridge: Bridge, state: dict[str, Tensor], masked: dict[str, tuple[str, Tensor]]
) -> None:
    """Write each masked tensor into ``state`` (a :func:`native_state_dict`), in place; a tensor that a block shared
    across depths holds at the same place of several blocks (Zamba2's shared transformer, which its checkpoint ties)
    is written under each of its names, as its one mask applies at each depth.

    Args:
        adapter: the bridge's adapter (for fused copies).
        bridge: the model.
        state: Hugging Face name -> tensor.
        masked: state_dict key -> (bridge parameter path, masked value).

    Raises:
        LookupError: when a masked tensor has no place in the Hugging Face layout.
    """
    module_names: dict[int, list[str]] = {}
    holders: dict[int, set[str]] = {}  # parameter id -> the native names of every module attribute holding it
    for name, module in bridge.original_model.named_modules(remove_duplicate=False):
        module_names.setdefault(id(module), []).append(name.replace(_WRAPPER, ""))
        for attribute, parameter in module._parameters.items():
            if parameter is not None:
                holders.setdefault(id(parameter), set()).add(f"{name.replace(_WRAPPER, '')}.{attribute}")
    originals = {name: tensor for name, tensor in _original_tensors(bridge) if name in state}
    storage_owner = {tensor.untyped_storage().data_ptr(): name for name, tensor in originals.items()}
    unplaced = {}
    split_copies: dict[str, dict[str, list[SplitSource]]] = {}
    written: dict[str, Tensor] = {}
    for key, (path, value) in masked.items():
        module_path, _, attribute = path.rpartition(".")
        module = bridge.get_submodule(module_path)
        targets = [f"{name}.{attribute}" for name in module_names.get(id(module), []) if f"{name}.{attribute}" in state]
        parameter = getattr(module, attribute)
        places = {without_indices(target) for target in targets}
        targets += sorted(  # the same tensor at the same place of other blocks: its masked value there too
            name
            for name in holders.get(id(parameter), ())
            if name in state and name not in targets and without_indices(name) in places
        )
        owner = storage_owner.get(parameter.untyped_storage().data_ptr())
        if targets:
            for target in targets:
                state[target] = value.detach().clone()
        elif owner is not None:  # a view into a fused parameter: write through the same geometry
            offset = parameter.storage_offset() - originals[owner].storage_offset()
            state[owner].as_strided(parameter.shape, parameter.stride(), offset).copy_(value.detach())
        elif (sources := _split_copy_sources(bridge, path, module_names, state, split_copies)) is not None:
            _write_split_copy(key, value, sources, state, written)
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


@dataclass(frozen=True)
class SplitSource:
    """Where the elements of a split copy come from in one Hugging Face parameter.

    Attributes:
        name: the Hugging Face state_dict name of the fused parameter, e.g.
            ``transformer.h.0.self_attention.query_key_value.weight``.
        positions: flat positions in the copy whose elements come from this parameter.
        indices: the flat index in the fused parameter of each of those elements (same length as ``positions``).
    """

    name: str
    positions: Int[Tensor, " n"]
    indices: Int[Tensor, " n"]


def split_sources(bridge: Bridge, component_path: str, native_name: str) -> dict[str, list[SplitSource]]:
    """Trace TransformerLens's declared split of a joint q/k/v attention component back to the fused parameters.

    The component's ``split_qkv_matrix`` (the architecture adapter's own function that built the q/k/v copies at boot)
    is run again on a stand-in for the wrapped Hugging Face module whose every parameter holds its elements' own flat
    indices (float64, exact below 2**53). What comes out in each copy says, element by element, which fused element it
    was read from, whatever the family's layout (BLOOM and Falcon interleave per head, CodeGen per partition, MPT and
    multi-query Falcon concatenate). The trace is then checked against the real copies: the fused parameters' values at
    the traced indices must equal the bridge's q/k/v tensors exactly.

    Args:
        bridge: the model.
        component_path: the joint attention component, e.g. ``blocks.0.attn``.
        native_name: the Hugging Face name of the module it wraps (``transformer.h.0.self_attention``).

    Returns:
        ``q.weight``, ``k.bias``, ... -> the sources of that copy's elements.

    Raises:
        LookupError: when the split is not a pure selection of fused elements, or the trace does not reproduce the
            bridge's copies; the export would otherwise be silently wrong.
    """
    component = bridge.get_submodule(component_path)
    original = component._modules["_original_component"]
    named = [
        (f"{native_name}.{name.replace(_WRAPPER, '')}", parameter)
        for name, parameter in original.named_parameters(remove_duplicate=False)
    ]
    starts = torch.tensor([0, *torch.tensor([p.numel() for _, p in named]).cumsum(0).tolist()], dtype=torch.float64)
    if starts[-1] >= 2**53:
        raise LookupError(f"{component_path}: too many elements to trace its q/k/v split exactly in float64")
    with torch.no_grad():
        stand_in = _indexed_stand_in(original, iter(starts[:-1].tolist()))
        copies = component.split_qkv_matrix(stand_in)
    sources = {}
    for part, copy_module in zip("qkv", copies, strict=True):
        for attribute, traced in copy_module.named_parameters():
            real = component.get_submodule(part).get_submodule("_original_component").get_parameter(attribute)
            sources[f"{part}.{attribute}"] = _sources_of(traced.detach(), real.detach(), named, starts, component_path)
    return sources


def _indexed_stand_in(module: nn.Module, next_start) -> nn.Module:
    """A shallow copy of ``module`` (and its children) whose parameters hold consecutive float64 indices from
    ``next_start``; buffers and attributes are shared, the original is not touched."""
    stand_in = copy.copy(module)
    parameters = {}
    for name, parameter in module._parameters.items():
        if parameter is None:
            parameters[name] = None
            continue
        start = next(next_start)
        indices = torch.arange(start, start + parameter.numel(), dtype=torch.float64).view(parameter.shape)
        parameters[name] = nn.Parameter(indices, requires_grad=False)
    stand_in.__dict__["_parameters"] = parameters
    stand_in.__dict__["_modules"] = {
        name: None if child is None else _indexed_stand_in(child, next_start) for name, child in module._modules.items()
    }
    return stand_in


def _sources_of(
    traced: Tensor, real: Tensor, named: list[tuple[str, Tensor]], starts: Tensor, component_path: str
) -> list[SplitSource]:
    flat = traced.reshape(-1)
    if flat.dtype != torch.float64 or not torch.equal(flat, flat.round()) or flat.min() < 0 or flat.max() >= starts[-1]:
        raise LookupError(
            f"{component_path}: TransformerLens's split_qkv_matrix does not just select fused elements (it computes "
            "or casts), so masked q/k/v copies cannot be written back; override Adapter.fuse_for_export"
        )
    owner = torch.bucketize(flat, starts, right=True) - 1
    sources = []
    for index in owner.unique().tolist():
        positions = (owner == index).nonzero().squeeze(1)
        name, parameter = named[index]
        indices = (flat[positions] - starts[index]).long()
        if not torch.equal(parameter.detach().reshape(-1)[indices], real.reshape(-1)[positions]):
            raise LookupError(f"{component_path}: the traced q/k/v split does not reproduce the bridge's copies")
        sources.append(SplitSource(name, positions, indices))
    return sources


def _split_copy_sources(
    bridge: Bridge,
    path: str,
    module_names: dict[int, list[str]],
    state: dict[str, Tensor],
    traced: dict[str, dict[str, list[SplitSource]]],
) -> list[SplitSource] | None:
    """The sources of the bridge tensor at ``path`` when it is a q/k/v copy made by a joint attention component's
    declared split (``blocks.0.attn.q._original_component.weight``), else ``None``; traces are kept in ``traced``."""
    component_path, _, rest = path.partition(f"{_WRAPPER}.")
    attention_path, _, part = component_path.rpartition(".")
    if not rest or part not in ("q", "k", "v") or not attention_path:
        return None
    attention = bridge.get_submodule(attention_path)
    original = attention._modules.get("_original_component")
    if not callable(getattr(attention, "split_qkv_matrix", None)) or original is None:
        return None
    if attention_path not in traced:
        first_parameter = next(name for name, _ in original.named_parameters()).replace(_WRAPPER, "")
        native_names = [name for name in module_names.get(id(original), []) if f"{name}.{first_parameter}" in state]
        if not native_names:
            return None
        traced[attention_path] = split_sources(bridge, attention_path, native_names[0])
    return traced[attention_path].get(f"{part}.{rest}")


def _write_split_copy(
    key: str, value: Tensor, sources: list[SplitSource], state: dict[str, Tensor], written: dict[str, Tensor]
) -> None:
    """Write a masked split copy into the fused parameters it was read from. A fused element that the split copied
    to several places (``written`` marks what earlier copies wrote) must get the same masked value from each."""
    flat = value.detach().reshape(-1)
    for source in sources:
        fused = state[source.name] = state[source.name].contiguous()
        indices = source.indices.to(fused.device)
        new = flat[source.positions.to(flat.device)].to(fused)
        done = written.setdefault(source.name, torch.zeros(fused.numel(), dtype=torch.bool, device=fused.device))
        earlier, previous = done[indices], fused.view(-1)[indices]
        fused.view(-1)[indices] = new
        shared = earlier | _repeated(indices)
        if not (
            torch.equal(previous[earlier], new[earlier]) and torch.equal(fused.view(-1)[indices][shared], new[shared])
        ):
            raise LookupError(f"{key}: masked copies disagree on an element of {source.name} that several copies read")
        done[indices] = True


def _repeated(indices: Int[Tensor, " n"]) -> Tensor:
    """Which entries of ``indices`` occur more than once."""
    _, inverse, counts = indices.unique(return_inverse=True, return_counts=True)
    return counts[inverse] > 1
