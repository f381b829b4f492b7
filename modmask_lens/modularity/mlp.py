"""The multilayer perceptron of BIMT's toy tasks (Liu, Gan & Tegmark 2023, code ``BioMLP``), with its unit graph.

SiLU between linear layers. Inputs and outputs may swap places too: the network reads its input features through
``input_order`` (slot s reads feature ``input_order[s]``) and writes output feature ``output_order[s]`` from slot s, so
the function of the original features is unchanged by any swap. With ``n_tokens`` and ``vocab_size`` set, the inputs
are the concatenated learned embeddings of ``n_tokens`` tokens (BIMT's modular addition: 59 x 32 embedding, two
tokens), laid out so dimension j of every token is one unit ("folding": they share a place).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from modmask_lens.core.random import seeded
from modmask_lens.modularity.unit_graph import AxisMember, UnitAxis, UnitGraph, WeightEdge, evenly_placed


class BimtMLP(nn.Module):
    """An MLP whose neurons (and inputs, outputs, embedding dimensions) BIMT may swap.

    Args:
        widths: layer sizes from input to output, e.g. ``(4, 20, 20, 2)`` (BIMT's symbolic "independence"). With an
            embedding, ``widths[0]`` is the embedding dimension per token (32 for BIMT's modular addition).
        vocab_size: if set, inputs are token ids embedded by a learned ``[vocab_size, widths[0]]`` table.
        n_tokens: tokens per example when embedding (their embeddings are concatenated).
        seed: initialisation seed.

    Example:
        >>> mlp = BimtMLP((4, 20, 20, 2))
        >>> mlp(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, widths: tuple[int, ...], vocab_size: int | None = None, n_tokens: int = 1, seed: int = 0):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths={widths}: give at least an input and an output size, e.g. (4, 20, 20, 2)")
        self.widths = tuple(widths)
        self.n_tokens = n_tokens
        fan_in = widths[0] * (n_tokens if vocab_size is not None else 1)
        with seeded(seed):
            self.embedding = nn.Embedding(vocab_size, widths[0]) if vocab_size is not None else None
            self.linears = nn.ModuleList(
                nn.Linear(n_in, n_out) for n_in, n_out in zip((fan_in,) + widths[1:-1], widths[1:])
            )
        if vocab_size is None:
            self.register_buffer("input_order", torch.arange(widths[0]))
        self.register_buffer("output_order", torch.arange(widths[-1]))

    def forward(
        self, inputs: Float[Tensor, "batch n_in"] | Int[Tensor, "batch n_tokens"]
    ) -> Float[Tensor, "batch n_out"]:
        if self.embedding is not None:
            # [batch, token, dim] -> [batch, dim, token] -> flat: the n_tokens entries of dimension j are adjacent
            hidden = self.embedding(inputs).transpose(1, 2).reshape(inputs.shape[0], -1)
        else:
            if inputs.ndim != 2 or inputs.shape[1] != self.widths[0]:  # indexing would drop entries silently
                raise ValueError(
                    f"inputs of shape {tuple(inputs.shape)}: the input layer takes [batch, {self.widths[0]}]"
                )
            hidden = inputs[:, self.input_order]
        for index, linear in enumerate(self.linears):
            hidden = linear(hidden)
            if index < len(self.linears) - 1:
                hidden = nn.functional.silu(hidden)
        return hidden[:, torch.argsort(self.output_order)]

    def unit_graph(self) -> UnitGraph:
        """Axes ``input`` (features or embedding dimensions), ``hidden.{i}``, ``output``; one edge per linear layer
        (and the embedding, charged only the hop length, as BIMT does)."""
        names = ["input"] + [f"hidden.{index}" for index in range(len(self.widths) - 2)] + ["output"]
        members: dict[str, list[AxisMember]] = {name: [] for name in names}
        members["output"].append(AxisMember(self.output_order, 0))
        edges = []
        if self.embedding is None:
            members["input"].append(AxisMember(self.input_order, 0))
        else:
            members["input"].append(AxisMember(self.embedding.weight, 1))
            edges.append(
                WeightEdge(
                    "embedding.weight",
                    "W_E",
                    None,
                    self.embedding.weight,
                    stored_in_out=True,
                    in_axis=None,
                    out_axis="input",
                    x_in=None,
                    x_out=evenly_placed(self.widths[0]),
                )
            )
        for index, linear in enumerate(self.linears):
            in_name, out_name = names[index], names[index + 1]
            fold = self.n_tokens if (index == 0 and self.embedding is not None) else 1
            members[in_name].append(AxisMember(linear.weight, 1))
            members[out_name] += [AxisMember(linear.weight, 0), AxisMember(linear.bias, 0)]
            edges.append(
                WeightEdge(
                    f"linears.{index}.weight",
                    "W",
                    index,
                    linear.weight,
                    stored_in_out=False,
                    in_axis=in_name,
                    out_axis=out_name,
                    x_in=evenly_placed(linear.in_features, fold),
                    x_out=evenly_placed(linear.out_features),
                )
            )
        kinds = ["input"] + ["hidden"] * (len(self.widths) - 2) + ["output"]
        axes = tuple(
            UnitAxis(name, kind, index, width, tuple(members[name]))
            for index, (name, kind, width) in enumerate(zip(names, kinds, self.widths))
        )
        return UnitGraph(axes, tuple(edges), tuple(linear.bias for linear in self.linears))
