"""The circuit graph of a binary mask: nodes with their kept weights, and edges that weigh how much kept weight
connects a writer to a later reader through the residual stream.

Nodes, laid out by stage (``embed``, then per layer its heads and its MLP, then ``unembed``). A layer has head nodes
only if it runs attention heads and an MLP node only if it runs an MLP, as the mask recorded when it was made
(``mask.origin.components``, its adapter's :class:`~modmask_lens.adapters.components.BlockComponents`): a Mamba
block has neither, a hybrid's recurrent block no heads, NemotronH's attention block no MLP. A mask origin without the
record (built by hand) draws heads and an MLP in every layer.

* ``embed`` writes with ``W_E`` and ``W_pos``;
* head ``L{l}H{h}`` reads with its ``W_Q``, ``W_K``, ``W_V`` slices (with grouped-query attention, the slices of its
  key/value group; a row of ``W_Q`` or ``W_K`` whose query/key norm gain the mask drops counts as dropped, as the
  feature it computes is zeroed: in every head for a ``d_head`` gain all heads share, that row alone for one entry per
  row, as the adapter states; where the mask masks the gain but not ``W_Q`` / ``W_K``, that projection counts as
  masked with every other row kept) and writes with its ``W_O`` slice (a column whose sub-layer norm gain the mask
  drops, BitNet's ``attn_sub_norm``, counts as dropped: the head output it reads is zeroed; where the mask masks the
  gain but not ``W_O``, ``W_O`` counts as masked with every other column kept);
* ``L{l}MLP`` reads with ``W_in`` (and ``W_gate``) and writes with ``W_out`` (a column whose ``mlp_sub_norm`` gain
  the mask drops counts as dropped, as for ``W_O``); a mixture-of-experts MLP reads with its expert stacks
  ``W_experts_in``, its router ``W_router`` and its shared expert's ``W_in``/``W_gate``, and writes with
  ``W_experts_out`` and the shared expert's ``W_out``;
* ``unembed`` reads with ``W_U``.

Edge measure (docs/viz.md#edge-measure). A *path* from writer matrix ``M_w`` to reader matrix ``M_r`` is one weight of
``M_w`` that writes residual dimension ``d``, the norm gain of ``d`` in front of the reader, and one weight of ``M_r``
that reads ``d``. Which gain that is the mask recorded when it was made (``mask.origin.norms``, its adapter's
:class:`~modmask_lens.adapters.norms.NormLayout`): in pre-norm blocks ``ln1.w`` for heads, ``ln2.w`` for MLPs (``ln1.w``
in a parallel block), ``ln_final.w`` for the unembedding; in post-norm blocks every norm between writer and reader
(:func:`_post_norm_path_gains`). The edge weight is the fraction of these paths whose weights the mask all keeps,
averaged over the node's (writer matrix, reader matrix) pairs::

    edge(W -> R) = mean over (M_w, M_r) of  sum_d kept_w(d) * gain(d) * kept_r(d) / sum_d n_w * n_r
                 = (1 / d_model) * sum_d write(d) * gain(d) * read(d)

where ``kept_w(d)`` counts the kept weights of the writer's slice of ``M_w`` into ``d`` (``n_w`` of them in all),
``write(d)`` is the kept fraction ``kept_w(d) / n_w`` averaged over the writer's matrices, ``read(d)`` the same for the
reader, and ``gain(d)`` is 1 if the norm gain of ``d`` is kept, else 0. It is 1 when every path is kept and 0 when no
residual dimension has a kept weight on both sides. A writer whose output passes a norm of its own before the residual
stream (a post-sub-layer norm: ``ln1_post.w`` after heads, ``ln2_post.w`` after an MLP; Gemma 2 to 4, OLMo 2) writes
``d`` only where that gain is kept too: ``write(d)`` is 0 where it is dropped. Only masked tensors count: a node whose
writing matrices are all unmasked has ``write`` 1, and an unmasked norm has gain 1. A node whose reading matrices are
all unmasked reads through the units that still write: ``read`` is the fraction of its writing rows (a head's features,
an MLP's neurons) with a kept weight, the same for every ``d`` (1 when its writing side is unmasked too). So a head or
an MLP that a head or neuron mask removes (``head_mask="output"``, ``neuron_mask="output"``: only ``W_O`` and ``W_out``
masked) has no edge in, as it has none out, and an MLP that keeps a quarter of its neurons reads with weight 1/4. So has
a gain the model reads as ``1 + w`` (Gemma's RMSNorm; :attr:`~modmask_lens.adapters.TensorSpec.gain_offset`): the mask
multiplies the stored ``w``, so a dropped entry leaves its dimension at scale 1, which cuts nothing. A mask origin
without a recorded layout (built by hand) reads as its adapter class's default
(:meth:`~modmask_lens.masks.identity.MaskOrigin.norm_layout`). Edges run from every writer to every reader later in the
forward pass of a sequential (non-parallel) block: embed -> L0 heads -> L0 MLP -> L1 heads -> ... -> unembed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import reduce
from itertools import combinations

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from modmask_lens.adapters import TensorSpec
from modmask_lens.adapters.components import BlockComponents
from modmask_lens.masks.binary import BinaryMask, kept_per_unit

NODE_ROLES = {
    "embed": ("W_E", "W_pos"),
    "head": ("W_Q", "W_K", "W_V", "W_O"),
    "mlp": ("W_in", "W_gate", "W_out", "W_experts_in", "W_experts_out", "W_router"),
    "unembed": ("W_U",),
}
"""The weight matrices of each node kind; the node's kept counts pool the node's slices of them."""

FEATURE_NORMS = {"W_Q": "q_norm.w", "W_K": "k_norm.w", "W_O": "attn_sub_norm.w", "W_out": "mlp_sub_norm.w"}
"""The norm gain on the features along each matrix's unit axis: the queries (keys) that a query (key) projection's
rows compute, and the head outputs (neurons) that ``W_O`` (``W_out``) reads after a sub-layer norm (BitNet)."""


@dataclass(frozen=True)
class CircuitGraph:
    """Nodes and residual-stream edges of one mask, as tidy DataFrames.

    Attributes:
        name: the mask's name.
        nodes: one row per node: ``node`` (``embed``, ``L0H1``, ``L0MLP``, ``unembed``), ``kind`` (``embed``,
            ``head``, ``mlp``, ``unembed``), ``layer``, ``head``, ``stage`` (0 for ``embed``, ``1 + 2 * layer`` for
            heads, ``2 + 2 * layer`` for MLPs, ``1 + 2 * n_layers`` for ``unembed``; a layer without heads or MLP
            has no node at its stage: :func:`node_names`), ``kept`` and ``total`` (masked
            weights of the node's slices), ``kept_fraction`` (NaN when none of its weights is masked), ``neurons`` and
            ``kept_neurons`` (MLP nodes: the neurons its masked matrices hold, a mixture-of-experts layer's
            ``n_experts * d_expert`` routed ones and its shared expert's, and those with a kept weight in every
            masked matrix that holds them and a kept entry in a masked sub-layer norm gain in front of ``W_out``,
            BitNet's ``ffn_sub_norm``).
        node_roles: one row per (node, masked matrix): ``node``, ``role``, ``kept``, ``total``, ``kept_fraction``.
        edges: one row per (writer, later reader): ``source``, ``target``, ``weight`` in [0, 1] (module docstring).
    """

    name: str
    nodes: pd.DataFrame
    node_roles: pd.DataFrame
    edges: pd.DataFrame


def node_names(
    n_layers: int, n_heads: int, components: BlockComponents | None = None
) -> list[tuple[str, str, int | None, int | None, int]]:
    """(node, kind, layer, head, stage) for every node of a model, in stage order: heads in the blocks of
    ``components.head_layers``, an MLP in those of ``components.mlp_layers`` (without ``components``: in every block).

    Example (a Jamba-like hybrid: attention in block 0 only):
        >>> from modmask_lens.adapters.components import BlockComponents
        >>> [row[0] for row in node_names(2, 2, BlockComponents(frozenset({0}), frozenset({0, 1})))]
        ['embed', 'L0H0', 'L0H1', 'L0MLP', 'L1MLP', 'unembed']
    """
    every_block = frozenset(range(n_layers))
    head_layers = every_block if components is None else components.head_layers
    mlp_layers = every_block if components is None else components.mlp_layers
    rows: list[tuple[str, str, int | None, int | None, int]] = [("embed", "embed", None, None, 0)]
    for layer in range(n_layers):
        if layer in head_layers:
            rows += [(f"L{layer}H{head}", "head", layer, head, 1 + 2 * layer) for head in range(n_heads)]
        if layer in mlp_layers:
            rows.append((f"L{layer}MLP", "mlp", layer, None, 2 + 2 * layer))
    rows.append(("unembed", "unembed", None, None, 1 + 2 * n_layers))
    return rows


def circuit_graph(mask: BinaryMask) -> CircuitGraph:
    """Nodes, per-matrix kept counts and residual-stream edges of ``mask`` (module docstring for the edge measure).

    Raises:
        ValueError: when the mask's model does not fit the graph's nodes (:func:`undrawable_reason` says why).

    Example (a fresh mask set keeps every weight, so every edge has weight 1):
        >>> from modmask_lens import MaskSet
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> graph = circuit_graph(MaskSet.for_bridge(tiny_bridge()).binary())
        >>> list(graph.nodes.node[:3]), float(graph.edges.weight.min())
        (['embed', 'L0H0', 'L0H1'], 1.0)
    """
    # The graph is built on the CPU, from the flags of a mask trained anywhere (a GPU's flags are copied once).
    mask = replace(mask, kept={key: flags.cpu() for key, flags in mask.kept.items()})
    dims = mask.origin.model
    n_layers, n_heads, d_model = int(dims["n_layers"]), int(dims["n_heads"]), int(dims["d_model"])
    names = node_names(n_layers, n_heads, mask.origin.components)
    undrawable = undrawable_reason(mask)
    if undrawable is not None:
        raise ValueError(f"circuit_graph: {undrawable}; read this model's masks with BinaryMask.kept_fraction instead")

    def slices_of(kept: Mapping[str, Tensor]) -> list[_NodeSlice]:
        return [
            _NodeSlice(name, kind, layer, head, spec, _node_slice(spec, kept[spec.key], head, n_heads))
            for name, kind, layer, head, _ in names
            for spec in mask.specs
            if spec.role in NODE_ROLES[kind] and spec.layer == layer
        ]

    slices = slices_of(mask.kept)
    node_roles = pd.DataFrame(
        [
            {"node": part.node, "role": part.spec.role, "kept": int(part.kept.sum()), "total": part.kept.numel()}
            for part in slices
        ],
        columns=["node", "role", "kept", "total"],
    )
    node_roles["kept_fraction"] = node_roles["kept"] / node_roles["total"]
    nodes = pd.DataFrame(names, columns=["node", "kind", "layer", "head", "stage"])
    nodes = nodes.merge(
        node_roles.groupby("node", sort=False)[["kept", "total"]].sum().reset_index(), on="node", how="left"
    )
    nodes[["kept", "total"]] = nodes[["kept", "total"]].fillna(0).astype(int)
    nodes["kept_fraction"] = nodes["kept"] / nodes["total"].where(nodes["total"] > 0)
    nodes = nodes.merge(_neuron_counts(mask, slices, names), on="node", how="left")
    for column in ("layer", "head", "neurons", "kept_neurons"):
        nodes[column] = nodes[column].astype("Int64")
    edge_slices = slices_of(_kept_through_feature_norms(mask)) + _unmasked_projections_through_gains(
        mask, names, d_model
    )
    edges = _edges(mask, names, edge_slices, d_model)
    return CircuitGraph(mask.name, nodes, node_roles, edges)


def norm_reading(mask: BinaryMask) -> str:
    """How the edge measure reads ``mask``'s norms, in words: the blocks' norm placement, whether the mask recorded
    it, and which masked gains the model reads as ``1 + w`` (the report's configuration table shows it).

    Example:
        >>> from modmask_lens import MaskSet
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> norm_reading(MaskSet.for_bridge(tiny_bridge()).binary())
        'pre-norm blocks; every masked norm gain multiplies its dimension (a dropped entry cuts it)'
    """
    layout = mask.origin.norm_layout()
    blocks = f"{layout.placement}-norm {'parallel ' if layout.parallel_blocks else ''}blocks"
    if mask.origin.norms is None:
        blocks += f" (not recorded with the mask: the {mask.origin.adapter!r} adapter's default)"
    offset = sorted({spec.role for spec in mask.specs if spec.kind == "norm" and spec.gain_offset})
    if not offset:
        return f"{blocks}; every masked norm gain multiplies its dimension (a dropped entry cuts it)"
    return f"{blocks}; gains read as 1 + w, whose dropped entries leave scale 1 and cut nothing: {', '.join(offset)}"


def undrawable_reason(mask: BinaryMask) -> str | None:
    """Why ``mask`` cannot be drawn as the graph draws nodes, or ``None`` when it can: a node's matrix whose adapter
    cannot tell its layout (``unknown``: a router or expert stack whose storage neither its module nor its flags
    say), a head or MLP matrix that does not read or write the ``d_model`` residual stream (DeepSeek V4's low-rank
    ``q_b_proj`` and grouped ``o_a_proj``; a shared block that reads the residual stream concatenated with the
    embeddings), heads that are not the model's ``n_heads`` query heads of one attention (JetMoE's heads of
    attention experts), or a decoder block's cross-attention heads (an encoder-decoder's two residual streams).

    Example:
        >>> from modmask_lens import MaskSet
        >>> from modmask_lens.testing.tiny_models import tiny_bridge
        >>> undrawable_reason(MaskSet.for_bridge(tiny_bridge()).binary()) is None
        True
    """
    n_heads, d_model = int(mask.origin.model["n_heads"]), int(mask.origin.model["d_model"])
    for spec in mask.specs:
        if not any(spec.role in roles for roles in NODE_ROLES.values()):
            continue
        if spec.input_axis is None:
            reason = "its adapter cannot tell which of its axes is the residual stream (its layout is unknown)"
        elif spec.layer is None or not any(spec.role in NODE_ROLES[k] for k in ("head", "mlp")):
            continue
        elif spec.shape[spec.residual_axis] != d_model:
            reason = f"its residual axis has {spec.shape[spec.residual_axis]} entries, not d_model={d_model}"
        elif spec.unit in ("head", "kv_head") and (spec.expert_axis is not None or n_heads % spec.unit_count):
            reason = f"its {spec.unit_count} heads are not the model's {n_heads} query heads of one attention"
        elif spec.unit in ("head", "kv_head") and spec.unit_offset:
            reason = (
                "its heads follow another attention's in the same block (a decoder block's cross-attention): an "
                "encoder-decoder has two residual streams, and the decoder reads the encoder's only through "
                "cross-attention, which one stage order of one stream cannot draw"
            )
        else:
            continue
        return f"cannot draw {spec.key} ({spec.role} {spec.shape}) as a node of the residual stream: {reason}"
    return None


def shared_mask(masks: Mapping[str, BinaryMask]) -> BinaryMask:
    """The weights that at least two of ``masks`` keep (for two masks, their intersection)."""
    if len(masks) < 2:
        raise ValueError("shared_mask needs at least two masks")
    shared = reduce(lambda left, right: left | right, [a & b for a, b in combinations(masks.values(), 2)])
    shared.name = "shared"
    return shared


@dataclass(frozen=True)
class _NodeSlice:
    """A node's slice of one masked matrix, with the residual axis last."""

    node: str
    kind: str
    layer: int | None
    head: int | None
    spec: TensorSpec
    kept: Bool[Tensor, "other d_model"]


def _node_slice(
    spec: TensorSpec, kept: Bool[Tensor, "*stored"], head: int | None, n_heads: int
) -> Bool[Tensor, "other d_model"]:
    """The part of ``kept`` that belongs to one node, as [weights per residual dimension, d_model]."""
    oriented = kept.movedim(spec.residual_axis, -1)
    if head is None or spec.unit not in ("head", "kv_head"):
        return oriented.reshape(-1, oriented.shape[-1])
    unit = spec.unit_read_by(head, n_heads)
    return oriented[unit * spec.unit_width : (unit + 1) * spec.unit_width]


def _kept_through_feature_norms(mask: BinaryMask) -> dict[str, Tensor]:
    """``mask.kept`` less the rows of ``W_Q`` / ``W_K`` and the columns of ``W_O`` / ``W_out`` whose feature norm gain
    (:data:`FEATURE_NORMS`) the mask drops: such an entry zeroes that query (key) feature, or the head output (neuron)
    that the output projection reads, as dropping the weights that compute or read it does. A gain read as ``1 + w``
    cuts nothing."""
    gain_specs = {
        (spec.role, spec.layer): spec
        for spec in mask.specs
        if spec.role in FEATURE_NORMS.values() and not spec.gain_offset and _scaled_features_known(spec)
    }
    kept = dict(mask.kept)
    for spec in mask.specs:
        gain_spec = gain_specs.get((FEATURE_NORMS.get(spec.role), spec.layer))
        if gain_spec is not None and spec.unit_axis is not None:
            n_units = spec.shape[spec.unit_axis] // spec.unit_width
            along_units = [1] * len(spec.shape)
            along_units[spec.unit_axis] = -1
            kept[spec.key] = kept[spec.key] & _features_kept(gain_spec, mask.kept[gain_spec.key], n_units).view(
                along_units
            )
    return kept


def _unmasked_projections_through_gains(
    mask: BinaryMask, names: list[tuple[str, str, int | None, int | None, int]], d_model: int
) -> list[_NodeSlice]:
    """Node slices of the projections the mask leaves unmasked (``W_Q``, ``W_K``, ``W_O``, ``W_out``) whose feature
    norm gain it masks (:data:`FEATURE_NORMS`): every weight kept but those that compute or read a feature whose gain
    entry the mask drops, as a dropped entry zeroes that feature wherever the projection computes or reads it. So a
    mask of the gains alone cuts what the same mask of the projection's rows (columns) would. Which features a gain
    scales its adapter says: a query/key norm's :attr:`~modmask_lens.adapters.TensorSpec.query_key_norm` (one
    ``d_head`` gain shared by every head, or one entry per row), BitNet's sub-layer norms split by head and by neuron
    as ``W_O`` and ``W_out`` read them. A gain read as ``1 + w`` cuts nothing."""
    n_heads = int(mask.origin.model["n_heads"])
    masked_matrices = {(spec.role, spec.layer) for spec in mask.specs}
    slices = []
    for gain_spec in mask.specs:
        projection_role = next((role for role, gain_role in FEATURE_NORMS.items() if gain_role == gain_spec.role), None)
        if projection_role is None or gain_spec.gain_offset or not _scaled_features_known(gain_spec):
            continue
        if (projection_role, gain_spec.layer) in masked_matrices:
            continue  # a masked projection is cut through its gain in _kept_through_feature_norms
        unit, unit_width = gain_spec.unit, gain_spec.unit_width
        if gain_spec.query_key_norm is not None:
            unit = "head" if projection_role == "W_Q" else "kv_head"
            unit_width = gain_spec.query_key_norm.head_rows
        # A shared gain scales every head alike: its projection is drawn with one unit per query head.
        features = _features_kept(gain_spec, mask.kept[gain_spec.key], n_heads)
        # The projection as a matrix of the features the gain scales by the residual stream, [in, out] for a writer
        # and [out, in] for a reader: each feature's weights kept as its entry.
        projection = replace(
            gain_spec,
            role=projection_role,
            shape=(features.numel(), d_model),
            unit=unit,
            unit_axis=0,
            unit_width=unit_width,
            layout="conv1d" if projection_role in ("W_O", "W_out") else "linear",
            query_key_norm=None,
        )
        kept = features[:, None].expand(-1, d_model)
        slices += [
            _NodeSlice(name, kind, layer, head, projection, _node_slice(projection, kept, head, n_heads))
            for name, kind, layer, head, _ in names
            if projection_role in NODE_ROLES[kind] and layer == gain_spec.layer
        ]
    return slices


def _scaled_features_known(gain_spec: TensorSpec) -> bool:
    """Does the adapter say which features of its projection a feature norm gain scales: a query/key norm's
    :attr:`~modmask_lens.adapters.TensorSpec.query_key_norm`, or a gain split by head or neuron (BitNet's)?"""
    return gain_spec.query_key_norm is not None or gain_spec.unit_axis is not None


def _features_kept(gain_spec: TensorSpec, gain: Bool[Tensor, "*entries"], n_units: int) -> Bool[Tensor, " rows"]:
    """The features along the unit axis of the projection a feature norm gain scales, of ``n_units`` heads (key/value
    groups) where the gain is a query/key norm's, kept where the gain keeps them: as its adapter states
    (:attr:`~modmask_lens.adapters.TensorSpec.query_key_norm`) for a query/key norm, one entry per column for
    BitNet's sub-layer norms."""
    if gain_spec.query_key_norm is None:
        return gain
    return gain_spec.query_key_norm.kept_rows(gain, n_units)


def _neuron_counts(
    mask: BinaryMask, slices: list[_NodeSlice], names: list[tuple[str, str, int | None, int | None, int]]
) -> pd.DataFrame:
    """MLP nodes: the neurons their masked tensors hold, and those with a kept entry in every masked tensor that holds
    them, counting a fused gate/up matrix's halves as two matrices, as a dense MLP's gate and up are
    (:func:`~modmask_lens.masks.binary.kept_per_unit` says which entries are a neuron's). The tensors are the node's
    matrices and the gain of a sub-layer norm in front of ``W_out`` that its adapter splits by neuron
    (:data:`FEATURE_NORMS`; BitNet's ``ffn_sub_norm``): a dropped entry zeroes the neuron that ``W_out`` reads, as a
    dropped ``W_out`` column does. A gain read as ``1 + w`` removes nothing."""
    mlp_nodes = {layer: node for node, kind, layer, _, _ in names if kind == "mlp"}
    holders: dict[str, list[TensorSpec]] = {}
    for part in slices:
        if part.kind == "mlp" and part.spec.unit == "neuron":
            holders.setdefault(part.node, []).append(part.spec)
    for spec in mask.specs:
        writer_gain = spec.role == FEATURE_NORMS["W_out"] and spec.unit == "neuron" and not spec.gain_offset
        if writer_gain and spec.layer in mlp_nodes:
            holders.setdefault(mlp_nodes[spec.layer], []).append(spec)
    rows = []
    for node, specs in holders.items():
        counts = [kept_per_unit(spec, mask.kept[spec.key], halves_apart=True) for spec in specs]
        n_neurons = max(total.shape[-1] for _, total in counts)
        held, lost = torch.zeros(n_neurons, dtype=torch.bool), torch.zeros(n_neurons, dtype=torch.bool)
        for kept, total in counts:
            n_held = total.shape[-1]
            held[:n_held] |= (total > 0).reshape(-1, n_held).any(dim=0)
            lost[:n_held] |= ((total > 0) & (kept == 0)).reshape(-1, n_held).any(dim=0)
        rows.append({"node": node, "neurons": int(held.sum()), "kept_neurons": int((held & ~lost).sum())})
    return pd.DataFrame(rows, columns=["node", "neurons", "kept_neurons"])


def _profile(parts: list[_NodeSlice], d_model: int) -> Float[Tensor, " d_model"]:
    """Kept fraction per residual dimension, averaged over the node's masked matrices (1 when none is masked)."""
    if not parts:
        return torch.ones(d_model)
    return torch.stack([part.kept.float().mean(dim=0) for part in parts]).mean(dim=0)


def _read_profile(reading: list[_NodeSlice], writing: list[_NodeSlice], d_model: int) -> Float[Tensor, " d_model"]:
    """A node's read profile: :func:`_profile` of its masked reading matrices, or where none of them is masked, the
    fraction of its writing rows (a head's features, an MLP's neurons: the axis other than the residual one) that
    keep a weight, averaged over its masked writing matrices, for every dimension alike."""
    if reading or not writing:
        return _profile(reading, d_model)
    writing_rows = torch.stack([part.kept.any(dim=-1).float().mean() for part in writing]).mean()
    return torch.full((d_model,), float(writing_rows))


def _edges(mask: BinaryMask, names, slices: list[_NodeSlice], d_model: int) -> pd.DataFrame:
    norms = mask.origin.norm_layout()
    # A dropped entry of a gain read as 1 + w leaves its dimension at scale 1: such a gain cuts nothing.
    gains = {
        (spec.role, spec.layer): mask.kept[spec.key].float()
        for spec in mask.specs
        if spec.kind == "norm" and not spec.gain_offset
    }

    def gain(kind: str, layer: int | None) -> Float[Tensor, " d_model"]:
        return gains.get(norms.reader_norm(kind, layer), torch.ones(d_model))

    writers = [(name, stage) for name, kind, _, _, stage in names if kind != "unembed"]
    readers = [(name, kind, layer, stage) for name, kind, layer, _, stage in names if kind != "embed"]
    # A gain on the writer's own output (a post-sub-layer norm) cuts the dimensions it drops from all it writes.
    write = torch.stack(
        [
            _profile([p for p in slices if p.node == name and p.spec.writes_residual], d_model)
            * gains.get(norms.writer_norm(kind, layer), torch.ones(d_model))
            for name, kind, layer, _, _ in names
            if kind != "unembed"
        ]
    )
    read = torch.stack(
        [
            _read_profile(
                [p for p in slices if p.node == name and not p.spec.writes_residual],
                [p for p in slices if p.node == name and p.spec.writes_residual],
                d_model,
            )
            for name, *_ in readers
        ]
    )
    # gains[i, j]: which residual dimensions reach reader j from writer i through the norms between them.
    if norms.placement == "post":
        path_gains = _post_norm_path_gains(writers, readers, gain, d_model)
    else:
        path_gains = torch.stack([gain(kind, layer) for _, kind, layer, _ in readers])[None].expand(
            len(writers), -1, -1
        )
    weights = torch.einsum("wd,wrd,rd->wr", write, path_gains, read) / d_model
    rows = [
        {"source": source, "target": target, "weight": float(weights[i, j])}
        for i, (source, source_stage) in enumerate(writers)
        for j, (target, _, _, target_stage) in enumerate(readers)
        if target_stage > source_stage
    ]
    return pd.DataFrame(rows, columns=["source", "target", "weight"])


def _post_norm_path_gains(writers, readers, gain, d_model: int) -> Float[Tensor, "writer reader d_model"]:
    """Post-norm blocks normalise the residual stream itself after every sublayer, so a writer's dimension reaches a
    later reader only if every norm in between keeps its gain (and, for the unembedding, its head's own norm).

    The norm after stage k is the one the reader at stage k + 1 reads through (the layout's ``reader_norm``); after
    the last MLP it is the norm a head one block further would read through.
    """
    n_stages = max(stage for *_, stage in readers)  # the unembedding's stage
    # Stage 1 + 2 * l holds block l's heads, stage 2 + 2 * l its MLP, drawn or not (a block without them still has
    # its norms).
    after = [
        gain("head", stage // 2) if (stage + 1) % 2 else gain("mlp", (stage - 1) // 2) for stage in range(n_stages)
    ]
    path = torch.zeros(len(writers), len(readers), d_model)
    for i, (_, writer_stage) in enumerate(writers):
        reaching, reaching_stage = {}, torch.ones(d_model)
        for stage in range(writer_stage, n_stages):
            reaching_stage = reaching_stage * after[stage]
            reaching[stage + 1] = reaching_stage
        for j, (_, kind, layer, stage) in enumerate(readers):
            if stage > writer_stage:
                path[i, j] = reaching[stage] * (gain(kind, layer) if kind == "unembed" else 1.0)
    return path
