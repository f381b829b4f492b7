"""A plant's plan: which weights each subtask may use, written in TransformerLens coordinates.

A subtask's weights are the elements whose every coordinate belongs to it: the residual dimension (``d_model`` axis),
the head or neuron (the tensor's unit axis), the token (``W_E`` / ``W_U`` vocabulary axis), and, for per-weight
plants, an explicit element mask. A disconnected plant gives each subtask its own residual half, heads, neurons and
tokens; an entangled plant shares the residual stream and the tokens and splits only the heads, the neurons, or the
elements of the MLP. Because the plan speaks of roles, layers, heads and neurons, the same plan yields the masks that
train the plant (:mod:`~experiments.groundtruth.plant_training`), its measurements and its answer key
(:func:`~modmask_lens.groundtruth.truth.plant_truth`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool
from torch import Generator, Tensor

from modmask_lens.adapters import TensorSpec
from modmask_lens.adapters.base import ModelShape

MLP_ROLES = ("W_in", "W_gate", "W_out")
ATTENTION_ROLES = ("W_Q", "W_K", "W_V", "W_O")
TOKEN_ROLES = ("W_E", "W_U")


@dataclass(frozen=True)
class SubtaskUse:
    """The coordinates one subtask's weights span.

    Attributes:
        residual: ``[d_model]`` residual dimensions the subtask reads and writes.
        tokens: ``[d_vocab]`` tokens whose embedding and unembedding rows it uses.
        heads: ``[layer, head]`` its attention heads.
        neurons: ``[layer, neuron]`` its MLP neurons, each row as wide as the widest block's MLP (a narrower block's
            row is False past its own width; :func:`block_units` reads one block's).
        elements: state_dict key -> ``bool`` of the tensor's shape, for plans that split single weights.
    """

    residual: Bool[Tensor, " d_model"]
    tokens: Bool[Tensor, " d_vocab"]
    heads: Bool[Tensor, "layer head"]
    neurons: Bool[Tensor, "layer neuron"]
    elements: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PlantPlan:
    """Which weights each subtask of a plant uses.

    Attributes:
        family: ``disconnected``, ``entangled-neuron``, ``entangled-head``, ``partly-shared`` or ``per-weight``.
        uses: subtask name -> its coordinates.
        split_roles: roles whose elements the subtasks divide (the rest is shared and never removed); ``None``
            means every role (a disconnected plant).
        granularities: the granularities at which the plan is an answer key.
        ablation_unit: what a random-half ablation removes: ``neuron``, ``head`` or ``weight`` (single elements).
    """

    family: str
    uses: dict[str, SubtaskUse]
    split_roles: tuple[str, ...] | None
    granularities: tuple[str, ...]
    ablation_unit: str

    def is_split(self, spec: TensorSpec) -> bool:
        """Whether the subtasks divide ``spec``'s elements (else all of it is shared)."""
        return self.split_roles is None or spec.role in self.split_roles


def element_use(spec: TensorSpec, use: SubtaskUse, dims: ModelShape) -> Bool[Tensor, ...]:
    """The elements of ``spec``'s tensor that ``use`` spans, ``bool`` of ``spec.shape``."""
    kept = torch.ones(spec.shape, dtype=torch.bool)
    if spec.unit is not None and spec.layer is not None:
        flags = block_units(use.neurons if spec.unit == "neuron" else use.heads, spec.layer, spec.unit, dims)
        per_unit = units_read(spec, flags, dims)
        kept &= _along(per_unit.repeat_interleave(spec.unit_width), spec.unit_axis, spec.shape)
    residual_axis = _axis_of_size(spec, dims.d_model, exclude=spec.unit_axis)
    if residual_axis is not None:
        kept &= _along(use.residual, residual_axis, spec.shape)
    if spec.role in TOKEN_ROLES:
        kept &= _along(use.tokens, _axis_of_size(spec, dims.d_vocab, exclude=residual_axis), spec.shape)
    if spec.key in use.elements:
        kept &= use.elements[spec.key]
    return kept


def block_units(
    flags: Bool[Tensor, "layer unit"], layer: int, unit: str, dims: ModelShape
) -> Bool[Tensor, " block_unit"]:
    """Block ``layer``'s row of a plan's per-layer ``flags``: its query heads, or its own neurons (the first
    ``dims.at_layer(layer).d_mlp`` entries: Gemma 4's key/value-sharing blocks run MLPs twice as wide as the rest)."""
    return flags[layer, : dims.at_layer(layer).d_mlp] if unit == "neuron" else flags[layer]


def units_read(spec: TensorSpec, flags: Bool[Tensor, " unit"], dims: ModelShape) -> Bool[Tensor, " spec_unit"]:
    """One flag per unit of ``spec`` from ``flags``, one per neuron or query head of its block: under grouped-query
    attention a key/value head is flagged where any query head reading it is (a group serves any head reading it),
    its block's own heads per group counted (Gemma 4's full-attention blocks have fewer key/value heads)."""
    heads_per_kv_head = dims.at_layer(spec.layer).heads_per_kv_head
    if spec.unit == "kv_head" and heads_per_kv_head > 1:
        return flags.view(-1, heads_per_kv_head).any(dim=-1)
    return flags


def _axis_of_size(spec: TensorSpec, size: int, exclude: int | None) -> int | None:
    axes = [axis for axis, length in enumerate(spec.shape) if length == size and axis != exclude]
    if len(axes) > 1:
        raise ValueError(
            f"{spec.key} {spec.shape}: cannot tell which axis has size {size}; give the plant "
            "distinct d_model, d_vocab and head/neuron widths"
        )
    return axes[0] if axes else None


def _along(values: Bool[Tensor, " n"], axis: int, shape: tuple[int, ...]) -> Tensor:
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return values.view(view)


def _random_split(count: int, sizes: tuple[int, ...], generator: Generator) -> list[Tensor]:
    """``len(sizes)`` disjoint random bool masks over ``count`` items, of the given sizes."""
    order = torch.randperm(count, generator=generator)
    masks, start = [], 0
    for size in sizes:
        mask = torch.zeros(count, dtype=torch.bool)
        mask[order[start : start + size]] = True
        masks.append(mask)
        start += size
    return masks


def _per_layer(
    widths: list[int], sizes: Callable[[int], tuple[int, ...]], generator: Generator
) -> list[Bool[Tensor, "layer unit"]]:
    """For each part of ``sizes(width)``: a ``[layer, max(widths)]`` mask, each layer's ``widths[layer]`` units split
    independently (a narrower layer's row stays False past its width)."""
    layers = [_random_split(width, sizes(width), generator) for width in widths]
    parts = []
    for part in range(len(layers[0])):
        flags = torch.zeros(len(widths), max(widths), dtype=torch.bool)
        for layer, (width, split) in enumerate(zip(widths, layers, strict=True)):
            flags[layer, :width] = split[part]
        parts.append(flags)
    return parts


def _head_counts(dims: ModelShape) -> list[int]:
    return [dims.n_heads] * dims.n_layers


def _neuron_counts(dims: ModelShape) -> list[int]:
    """Each block's MLP width (:meth:`ModelShape.at_layer`)."""
    return [dims.at_layer(layer).d_mlp for layer in range(dims.n_layers)]


def _halves(width: int) -> tuple[int, int]:
    return (width // 2,) * 2


def disconnected_plan(dims: ModelShape, tokens: dict[str, Bool[Tensor, " d_vocab"]], seed: int) -> PlantPlan:
    """Each subtask gets half the residual stream, half of every layer's heads and neurons, and its own tokens."""
    generator = Generator().manual_seed(seed)
    names = list(tokens)
    halves = _random_split(dims.d_model, (dims.d_model // 2,) * 2, generator)
    heads = _per_layer(_head_counts(dims), _halves, generator)
    neurons = _per_layer(_neuron_counts(dims), _halves, generator)
    uses = {
        name: SubtaskUse(halves[index], tokens[name], heads[index], neurons[index]) for index, name in enumerate(names)
    }
    return PlantPlan("disconnected", uses, None, ("weight", "neuron", "head"), "neuron")


def _everything(dims: ModelShape) -> SubtaskUse:
    neurons = torch.tensor(_neuron_counts(dims))
    return SubtaskUse(
        torch.ones(dims.d_model, dtype=torch.bool),
        torch.ones(dims.d_vocab, dtype=torch.bool),
        torch.ones(dims.n_layers, dims.n_heads, dtype=torch.bool),
        torch.arange(int(neurons.max()))[None] < neurons[:, None],
    )


def neuron_split_plan(dims: ModelShape, names: tuple[str, str], seed: int, shared_fraction: float = 0.0) -> PlantPlan:
    """Shared residual stream, tokens and heads; every layer's neurons split between the subtasks.

    With ``shared_fraction`` > 0 that share of each layer's neurons is used by both (the ``partly-shared`` family)
    and the rest is split evenly.
    """
    generator = Generator().manual_seed(seed)

    def shared_then_own(width: int) -> tuple[int, int, int]:
        shared_count = round(width * shared_fraction)
        own_count = (width - shared_count) // 2
        return shared_count, own_count, own_count

    shared, first, second = _per_layer(_neuron_counts(dims), shared_then_own, generator)
    everything = _everything(dims)
    uses = {
        name: SubtaskUse(everything.residual, everything.tokens, everything.heads, own | shared)
        for name, own in zip(names, (first, second))
    }
    family = "partly-shared" if shared.any() else "entangled-neuron"
    return PlantPlan(family, uses, MLP_ROLES, ("weight", "neuron"), "neuron")


def head_split_plan(dims: ModelShape, names: tuple[str, str], seed: int) -> PlantPlan:
    """Shared residual stream, tokens and MLPs; every layer's heads split between the subtasks."""
    generator = Generator().manual_seed(seed)
    heads = _per_layer(_head_counts(dims), _halves, generator)
    everything = _everything(dims)
    uses = {
        name: SubtaskUse(everything.residual, everything.tokens, own, everything.neurons)
        for name, own in zip(names, heads)
    }
    return PlantPlan("entangled-head", uses, ATTENTION_ROLES, ("weight", "head"), "head")


def per_weight_plan(dims: ModelShape, specs: list[TensorSpec], names: tuple[str, str], seed: int) -> PlantPlan:
    """Shared everything except the MLP matrices, whose single weights are split at random, half to each subtask
    (every neuron is used by both)."""
    generator = Generator().manual_seed(seed)
    first_elements, second_elements = {}, {}
    for spec in specs:
        if spec.role in MLP_ROLES:
            first = torch.rand(spec.shape, generator=generator) < 0.5
            first_elements[spec.key], second_elements[spec.key] = first, ~first
    everything = _everything(dims)
    uses = {
        name: SubtaskUse(everything.residual, everything.tokens, everything.heads, everything.neurons, elements)
        for name, elements in zip(names, (first_elements, second_elements))
    }
    return PlantPlan("per-weight", uses, MLP_ROLES, ("weight",), "weight")
