"""A network as a graph of unit axes joined by weight matrices: what BIMT moves and clusterability partitions.

A *unit axis* is one set of interchangeable units: the residual stream's dimensions, one layer's MLP neurons, one
layer's heads (whole key/value groups), or a layer of a plain MLP. Every tensor indexed by the axis is listed with the
dimension that indexes it, so exchanging two units (:func:`permute_units`) moves every weight, bias, norm gain and index
buffer that belongs to them and leaves the network's function unchanged. A *weight edge* is one weight matrix between
two axes (or between an axis and an interface that never moves, such as the vocabulary), with the place of each of its
inputs and outputs along the layer (Liu, Gan & Tegmark 2023, "Seeing is Believing: Brain-Inspired Modular Training").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

AxisKind = Literal["resid", "neuron", "head_group", "input", "hidden", "output"]


@dataclass(frozen=True, eq=False)
class AxisMember:
    """One tensor indexed by a unit axis: along ``dim`` each unit owns ``tensor.shape[dim] // n_units`` consecutive
    entries (``d_head`` dimensions per head, 2 folded token embeddings per embedding dimension, 1 for a neuron)."""

    tensor: Tensor
    dim: int


@dataclass(frozen=True, eq=False)
class UnitAxis:
    """A set of units that may exchange places, and every tensor that has to move with them.

    Attributes:
        name: ``resid``, ``blocks.{layer}.mlp`` (neurons), ``blocks.{layer}.attn`` (head groups) for a transformer;
            ``input``, ``hidden.{i}``, ``output`` for a plain MLP.
        kind: what the units are; ``head_group`` is one key/value head with the query heads that read it (one head
            without grouped-query attention).
        layer: block or MLP layer index, ``None`` for the residual stream.
        n_units: number of units.
        members: the tensors indexed by the units.
    """

    name: str
    kind: AxisKind
    layer: int | None
    n_units: int
    members: tuple[AxisMember, ...]

    def __post_init__(self) -> None:
        for member in self.members:
            if member.tensor.shape[member.dim] % self.n_units:
                raise ValueError(
                    f"axis {self.name}: a tensor of shape {tuple(member.tensor.shape)} has "
                    f"{member.tensor.shape[member.dim]} entries along dim {member.dim}, not a multiple "
                    f"of the {self.n_units} units"
                )


@dataclass(frozen=True, eq=False)
class WeightEdge:
    """One weight matrix between two unit axes, with the place of each input and output along its layer.

    Attributes:
        key: where the matrix lives (``bridge.state_dict()`` key, or the MLP's parameter name).
        role: TransformerLens role (``W_in``, ``W_Q``...) or ``W`` for a plain MLP layer.
        layer: block or MLP layer index, ``None`` for the embeddings and the unembedding.
        weight: the parameter itself (so the cost and the loss differentiate through it).
        stored_in_out: ``True`` if ``weight`` is stored ``[in, out]`` (GPT-2 Conv1D, embeddings), ``False`` for
            ``[out, in]`` (``nn.Linear``).
        in_axis, out_axis: names of the unit axes on each side, ``None`` for an interface that never moves (vocabulary,
            positions).
        x_in, x_out: coordinate in [0, 1] of every input and output index (BIMT places the N entries of a layer at
            ``(2j+1)/(2N)``); ``None`` where the side has no place (the token and position indices of an
            embedding, which BIMT charges only the hop length ℓ0).
    """

    key: str
    role: str
    layer: int | None
    weight: Tensor
    stored_in_out: bool
    in_axis: str | None
    out_axis: str | None
    x_in: Float[Tensor, " n_in"] | None
    x_out: Float[Tensor, " n_out"] | None

    def matrix(self) -> Float[Tensor, "n_out n_in"]:
        """The weight as ``[out, in]`` (a view: gradients reach the parameter)."""
        return self.weight.T if self.stored_in_out else self.weight

    @property
    def placed(self) -> bool:
        """Whether both sides have coordinates, so the distance term of the connection cost applies."""
        return self.x_in is not None and self.x_out is not None


@dataclass(frozen=True, eq=False)
class UnitGraph:
    """Unit axes (in order from input to output), the weight matrices between them, and the bias vectors.

    Build one with :func:`modmask_lens.modularity.unit_graph_of` (a TransformerBridge through its adapter, or any
    module with a ``unit_graph()`` method such as :class:`~modmask_lens.modularity.BimtMLP`).
    """

    axes: tuple[UnitAxis, ...]
    edges: tuple[WeightEdge, ...]
    biases: tuple[Tensor, ...]

    def axis(self, name: str) -> UnitAxis:
        """The axis called ``name``."""
        for axis in self.axes:
            if axis.name == name:
                return axis
        raise KeyError(f"no unit axis {name!r}; axes: {[axis.name for axis in self.axes]}")

    def edges_touching(self, name: str) -> list[tuple[WeightEdge, Literal["in", "out"]]]:
        """Every edge with axis ``name`` on one side, and which side."""
        touching = []
        for edge in self.edges:
            if edge.in_axis == name:
                touching.append((edge, "in"))
            if edge.out_axis == name:
                touching.append((edge, "out"))
        return touching

    def with_random_weights(self, seed: int = 0) -> UnitGraph:
        """The same graph with every edge's matrix replaced by i.i.d. standard normal weights (a detached copy).

        The random-weights baseline of clusterability (Golechha et al. 2025: about 1/k for equal blocks).
        """
        generator = torch.Generator().manual_seed(seed)
        edges = tuple(
            replace(edge, weight=torch.randn(edge.weight.shape, generator=generator, dtype=edge.weight.dtype))
            for edge in self.edges
        )
        return replace(self, edges=edges)


def evenly_placed(n_entries: int, width: int = 1) -> Float[Tensor, " n"]:
    """BIMT's neuron coordinates: ``n_entries // width`` places ``(2j+1)/(2N)`` in [0, 1], each repeated ``width``
    times ("folding": the ``width`` entries of one unit share a place, e.g. dimension j of both concatenated token
    embeddings in BIMT's modular-addition network). Liu, Gan & Tegmark 2023, code ``BioMLP``."""
    n_places = n_entries // width
    places = (2 * torch.arange(n_places, dtype=torch.float32) + 1) / (2 * n_places)
    return places.repeat_interleave(width)


def member_index(order: Int[Tensor, " n_units"], width: int) -> Int[Tensor, " n_entries"]:
    """Entry indices that put unit ``order[s]`` (``width`` consecutive entries) into slot ``s``."""
    return (order[:, None] * width + torch.arange(width)).reshape(-1)


@torch.no_grad()
def permute_units(
    axis: UnitAxis, order: Int[Tensor, " n_units"], optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Move unit ``order[s]`` of ``axis`` into slot ``s``, in place, in every member tensor and in the optimiser's
    per-parameter state (Adam's ``exp_avg`` and ``exp_avg_sq``, any state tensor shaped like the parameter).

    The reference BIMT code does not move the optimiser state, so the moments of a swapped weight stay at its old
    place; here they travel with it.
    """
    if sorted(order.tolist()) != list(range(axis.n_units)):
        raise ValueError(f"order must be a permutation of range({axis.n_units}) for axis {axis.name}")
    for member in axis.members:
        width = member.tensor.shape[member.dim] // axis.n_units
        index = member_index(order, width).to(member.tensor.device)
        tensors = [member.tensor]
        if optimizer is not None and member.tensor in optimizer.state:
            tensors += [
                value
                for value in optimizer.state[member.tensor].values()
                if isinstance(value, Tensor) and value.shape == member.tensor.shape
            ]
        for tensor in tensors:
            tensor.copy_(tensor.index_select(member.dim, index))
