"""The unit graph of a TransformerBridge, read off its adapter's tensor specs (no family's parameter names here).

Axes: one residual stream shared by every block (its dimensions move together in the embeddings, every reader and
writer, the norm gains and biases, the post-sub-layer norms, and the output biases of attention and MLP), then per block
the head groups (whole key/value heads with the query heads that read them, and the query/key norms with one entry per
query or key row) and the MLP neurons. Attention patterns, norm statistics, rotary embeddings and the activation
function do not depend on the order of these units, so permuting any axis leaves the model's logits unchanged.
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor, nn

from modmask_lens.adapters import TensorSpec, adapter_for, model_shape
from modmask_lens.core.bridge import Bridge
from modmask_lens.modularity.unit_graph import AxisMember, UnitAxis, UnitGraph, WeightEdge, evenly_placed

RESIDUAL = "resid"
_READERS = ("W_Q", "W_K", "W_V", "W_in", "W_gate")  # read the residual stream into a block's heads or neurons
_WRITERS = ("W_O", "W_out")  # write it from a block's heads or neurons
_EMBEDDINGS = ("W_E", "W_pos", "W_token_type")  # [index, d_model]: write it, and their indices have no place
_FIXED_READERS = ("W_U", "W_per_layer_gate", "W_per_layer_in")
"""Read the residual stream into units that never move: the vocabulary, and Gemma 4's per-layer inputs (each block's
d_per_layer channels are one slice of the per-layer embedding's columns and of the projection's rows, all normalised
by one d_per_layer gain that every block shares, so no block's channels can move alone)."""
_FIXED_WRITERS = ("W_per_layer_out",)  # write it from those per-layer input channels
_RESIDUAL_VECTORS = (
    "ln1.w",
    "ln1.b",
    "ln2.w",
    "ln2.b",
    "ln_final.w",
    "ln_final.b",
    "ln_embed.w",
    "ln_embed.b",
    # a decoder block's norm in front of its MLP, after self- and cross-attention (ln1 and ln2 precede those)
    *("ln3.w", "ln3.b"),
    # a sub-layer's output, normalised before it is added (ln3_post: a decoder block's MLP's)
    *("ln1_post.w", "ln1_post.b", "ln2_post.w", "ln2_post.b", "ln3_post.w", "ln3_post.b"),
    "b_O",
    "b_out",
    "per_layer_post_norm.w",  # normalises a block's per-layer input sub-layer's output before it is added
)
_UNIT_VECTORS = ("b_Q", "b_K", "b_V", "b_in", "b_gate", "attn_sub_norm.w", "mlp_sub_norm.w")
"""Vectors over a block's heads or neurons: the biases of what reads the residual stream, and the gains of a norm over
the heads' outputs in front of ``W_O`` or over the neurons in front of ``W_out`` (BitNet's sub-layer norms)."""
_MLP_ROLES = ("W_in", "W_gate", "W_out", "b_in", "b_gate", "mlp_sub_norm.w")
_QUERY_KEY_NORMS = ("q_norm.w", "q_norm.b", "k_norm.w", "k_norm.b")
"""Gains and biases of the queries and keys: one ``d_head`` vector every head shares (it stays), or one entry per row
of the query or key projection (it moves with the head groups), as the adapter states
(:attr:`~modmask_lens.adapters.TensorSpec.query_key_norm`)."""
_UNMOVED = ("b_U", "W_E_per_layer", "per_layer_in_norm.w")  # indexed by the vocabulary or per-layer input channels


class UnsupportedForModularity(ValueError):
    """A bridge holds a tensor whose residual-stream index this module cannot place."""


def unit_graph_of(model: nn.Module) -> UnitGraph:
    """The unit graph of ``model``: its own ``unit_graph()`` if it has one (e.g.
    :class:`~modmask_lens.modularity.BimtMLP`), else a TransformerBridge's, read through its adapter.

    Example:
        >>> graph = unit_graph_of(bridge)                                        # doctest: +SKIP
        >>> [axis.name for axis in graph.axes][:3]                              # doctest: +SKIP
        ['resid', 'blocks.0.attn', 'blocks.0.mlp']
    """
    if hasattr(model, "unit_graph"):
        return model.unit_graph()
    return _bridge_graph(model)


def _bridge_graph(bridge: Bridge) -> UnitGraph:
    adapter = adapter_for(bridge)
    specs = adapter.tensor_specs(bridge)
    if not any(spec.unit is not None for spec in specs):
        raise UnsupportedForModularity(
            f"{adapter.name} adapter cannot locate heads and neurons; modularity needs an adapter for "
            f"{bridge.cfg.architecture} (see CONTRIBUTING.md#adapters)"
        )
    shape = model_shape(bridge)
    members: dict[str, list[AxisMember]] = defaultdict(list)
    edges: list[WeightEdge] = []
    biases: list[Tensor] = []
    for spec in specs:
        if spec.tied_to is not None:  # the same parameter read again (GPT-2's W_U is W_E): move it once
            continue
        tensor = bridge.get_parameter(spec.path)
        if spec.role.startswith("b_"):
            biases.append(tensor)
        if spec.role in _RESIDUAL_VECTORS:
            members[RESIDUAL].append(AxisMember(tensor, 0))
        elif spec.role in _UNIT_VECTORS:
            members[_unit_axis_name(spec)].append(AxisMember(tensor, 0))
        elif spec.role in _QUERY_KEY_NORMS:
            if spec.query_key_norm is None:
                raise UnsupportedForModularity(
                    f"{spec.key} (role {spec.role}, shape {spec.shape}): its adapter does not say how it maps onto "
                    "the heads (TensorSpec.query_key_norm), so whether it moves with them is unknown"
                )
            if not spec.query_key_norm.shared_by_heads:
                members[f"blocks.{spec.layer}.attn"].append(AxisMember(tensor, 0))
        elif spec.role in _READERS + _WRITERS + _EMBEDDINGS + _FIXED_READERS + _FIXED_WRITERS:
            edge = _edge(spec, tensor)
            edges.append(edge)
            for side_axis, dim in ((edge.in_axis, spec.input_axis), (edge.out_axis, spec.output_axis)):
                if side_axis is not None:
                    members[side_axis].append(AxisMember(tensor, dim))
        elif spec.role not in _UNMOVED:
            raise UnsupportedForModularity(
                f"{spec.key} (role {spec.role}): not a known reader or writer of the residual stream, so permuting "
                f"the residual stream would break the model; teach modmask_lens/modularity/bridge_graph.py its role"
            )
    axes = [UnitAxis(RESIDUAL, "resid", None, shape.d_model, tuple(members[RESIDUAL]))]
    for layer in range(shape.n_layers):
        for name, kind in ((f"blocks.{layer}.attn", "head_group"), (f"blocks.{layer}.mlp", "neuron")):
            if members.get(name):
                first = members[name][0]  # neuron counts are read off the tensors (some configs misreport d_mlp)
                n_units = shape.at_layer(layer).n_kv_heads if kind == "head_group" else first.tensor.shape[first.dim]
                axes.append(UnitAxis(name, kind, layer, n_units, tuple(members[name])))
    return UnitGraph(tuple(axes), tuple(edges), tuple(biases))


def _unit_axis_name(spec: TensorSpec) -> str:
    """The block axis a tensor's heads or neurons lie on, by its role: BitNet's ``W_in`` and ``W_gate`` hold no neuron
    layout for masks (their rows feed the norm every neuron shares), yet their rows move with the neurons."""
    return f"blocks.{spec.layer}.{'mlp' if spec.role in _MLP_ROLES else 'attn'}"


def _edge(spec: TensorSpec, tensor: Tensor) -> WeightEdge:
    in_dim = spec.input_axis
    n_in, n_out = spec.shape[in_dim], spec.shape[spec.output_axis]
    if spec.role in _EMBEDDINGS:
        in_axis, out_axis = None, RESIDUAL
    elif spec.role in _FIXED_READERS:
        in_axis, out_axis = RESIDUAL, None
    elif spec.role in _FIXED_WRITERS:
        in_axis, out_axis = None, RESIDUAL
    elif spec.role in _READERS:
        in_axis, out_axis = RESIDUAL, _unit_axis_name(spec)
    else:
        in_axis, out_axis = _unit_axis_name(spec), RESIDUAL
    return WeightEdge(
        spec.key,
        spec.role,
        spec.layer,
        tensor,
        stored_in_out=in_dim == 0,
        in_axis=in_axis,
        out_axis=out_axis,
        x_in=None if spec.role in _EMBEDDINGS else evenly_placed(n_in),
        x_out=evenly_placed(n_out),
    )
