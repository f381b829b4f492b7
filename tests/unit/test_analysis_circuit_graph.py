"""The circuit graph's nodes and residual-stream edges, against a brute-force count of paths on hand-built masks."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from modmask_lens.adapters import TensorSpec
from modmask_lens.adapters.components import BlockComponents
from modmask_lens.analysis import circuit_graph, shared_mask
from modmask_lens.analysis.circuit_graph import undrawable_reason
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.identity import MaskOrigin

N_LAYERS, N_HEADS, D_HEAD, D_MODEL, D_MLP, VOCAB = 2, 2, 2, 4, 3, 5


def hand_built_mask(
    n_kv_heads: int = N_HEADS, seed: int = 0, unmasked: tuple[str, ...] = (), adapter: str = "hand-built"
) -> BinaryMask:
    """A random mask over a 2-layer model whose matrices mix nn.Linear ([out, in]) and Conv1D ([in, out]) layouts;
    with ``adapter="bert"`` a post-norm model, with a norm after the embeddings."""
    generator = torch.Generator().manual_seed(seed)
    specs = [TensorSpec("embed.weight", "W_E", None, "embed.weight", (VOCAB, D_MODEL), layout="embedding")]
    if adapter == "bert":
        specs.append(TensorSpec("embed_ln.weight", "ln_embed.w", None, "", (D_MODEL,)))
    for layer in range(N_LAYERS):
        block = f"blocks.{layer}"
        specs += [
            TensorSpec(f"{block}.ln1.weight", "ln1.w", layer, "", (D_MODEL,)),
            TensorSpec(
                f"{block}.attn.q.weight", "W_Q", layer, "", (N_HEADS * D_HEAD, D_MODEL), "head", 0, D_HEAD, "linear"
            ),
            TensorSpec(
                f"{block}.attn.k.weight",
                "W_K",
                layer,
                "",
                (D_MODEL, n_kv_heads * D_HEAD),
                "kv_head",
                1,
                D_HEAD,
                "conv1d",
            ),
            TensorSpec(
                f"{block}.attn.v.weight",
                "W_V",
                layer,
                "",
                (n_kv_heads * D_HEAD, D_MODEL),
                "kv_head",
                0,
                D_HEAD,
                "linear",
            ),
            TensorSpec(
                f"{block}.attn.o.weight", "W_O", layer, "", (N_HEADS * D_HEAD, D_MODEL), "head", 0, D_HEAD, "conv1d"
            ),
            TensorSpec(f"{block}.ln2.weight", "ln2.w", layer, "", (D_MODEL,)),
            TensorSpec(f"{block}.mlp.in.weight", "W_in", layer, "", (D_MLP, D_MODEL), "neuron", 0, 1, "linear"),
            TensorSpec(f"{block}.mlp.out.weight", "W_out", layer, "", (D_MLP, D_MODEL), "neuron", 0, 1, "conv1d"),
        ]
    specs += [
        TensorSpec("ln_final.weight", "ln_final.w", None, "", (D_MODEL,)),
        TensorSpec("unembed.weight", "W_U", None, "", (VOCAB, D_MODEL), layout="linear"),
    ]
    specs = [spec for spec in specs if spec.role not in unmasked]
    # Norm gains are mostly kept, so that most edges are non-zero; matrices keep about 60 %.
    kept = {
        spec.key: torch.rand(spec.shape, generator=generator) < (0.8 if spec.layout == "vector" else 0.6)
        for spec in specs
    }
    dims = {"n_layers": N_LAYERS, "n_heads": N_HEADS, "d_model": D_MODEL}
    return BinaryMask(specs, kept, MaskOrigin(adapter, "raw", dims), "hand")


def without_blocks_parts(mask: BinaryMask, components: BlockComponents) -> BinaryMask:
    """``mask`` on a model whose blocks run heads and MLPs only where ``components`` says, as its origin records."""
    absent = {(role, layer) for layer in range(N_LAYERS) if layer not in components.head_layers for role in HEAD_ROLES}
    absent |= {(role, layer) for layer in range(N_LAYERS) if layer not in components.mlp_layers for role in MLP_ROLES}
    specs = [spec for spec in mask.specs if (spec.role, spec.layer) not in absent]
    origin = MaskOrigin(mask.origin.adapter, mask.origin.mode, mask.origin.model, components=components)
    return BinaryMask(specs, {spec.key: mask.kept[spec.key] for spec in specs}, origin, mask.name)


HEAD_ROLES, MLP_ROLES = ("W_Q", "W_K", "W_V", "W_O"), ("W_in", "W_out")


def element_owner(spec: TensorSpec, index: tuple[int, int]) -> tuple[int | None, int]:
    """(head or None, residual dimension) of one matrix element, read off the layout rules written out by hand."""
    row, column = index
    if spec.role == "W_E":  # [vocab, d_model]
        return None, column
    if spec.role == "W_U":  # linear [vocab, d_model]
        return None, column
    if spec.role == "W_Q":  # linear [heads*d_head, d_model]
        return row // D_HEAD, column
    if spec.role == "W_K":  # conv1d [d_model, groups*d_head]
        return column // D_HEAD, row
    if spec.role == "W_V":  # linear [groups*d_head, d_model]
        return row // D_HEAD, column
    if spec.role == "W_O":  # conv1d [heads*d_head, d_model]
        return row // D_HEAD, column
    if spec.role == "W_in":  # linear [d_mlp, d_model]
        return None, column
    if spec.role == "W_out":  # conv1d [d_mlp, d_model]
        return None, column
    raise AssertionError(spec.role)


def node_weights(mask: BinaryMask, node: str, writing: bool) -> list[list[tuple[int, bool]]]:
    """Per matrix of ``node`` on one side: every (residual dimension, kept) of the node's weights."""
    kind, layer, head = parse_node(node)
    roles = {
        ("embed", True): ("W_E",),
        ("head", True): ("W_O",),
        ("mlp", True): ("W_out",),
        ("head", False): ("W_Q", "W_K", "W_V"),
        ("mlp", False): ("W_in",),
        ("unembed", False): ("W_U",),
    }
    matrices = []
    for spec in mask.specs:
        if spec.role not in roles.get((kind, writing), ()) or spec.layer != layer:
            continue
        weights = []
        n_groups = spec.shape[spec.unit_axis] // D_HEAD if spec.unit in ("head", "kv_head") else None
        for index in itertools.product(*map(range, spec.shape)):
            owner, dimension = element_owner(spec, index)
            if head is not None and owner != head // (N_HEADS // n_groups):
                continue
            weights.append((dimension, bool(mask.kept[spec.key][index])))
        matrices.append(weights)
    return matrices


def parse_node(node: str) -> tuple[str, int | None, int | None]:
    if node in ("embed", "unembed"):
        return node, None, None
    layer, rest = node[1:].split("H") if "H" in node else (node[1:].removesuffix("MLP"), None)
    return ("head", int(layer), int(rest)) if rest is not None else ("mlp", int(layer), None)


POST_NORM_ORDER = (
    ["embed", "embed_ln.weight"]
    + [
        part
        for layer in range(N_LAYERS)
        for part in (f"L{layer}H", f"blocks.{layer}.ln1.weight", f"L{layer}MLP", f"blocks.{layer}.ln2.weight")
    ]
    + ["ln_final.weight", "unembed"]
)
"""A post-norm forward pass in order: writers and readers (by node name prefix) and the norms between them."""


def post_norm_gain(mask: BinaryMask, source: str, target: str) -> torch.Tensor:
    """Post-norm: the residual stream goes through every norm between the writer and the reader."""

    def place(node: str) -> int:
        return next(index for index, part in enumerate(POST_NORM_ORDER) if node.startswith(part))

    gain = torch.ones(D_MODEL, dtype=torch.bool)
    for norm in POST_NORM_ORDER[place(source) + 1 : place(target)]:
        if norm.endswith(".weight"):
            gain &= mask.kept.get(norm, torch.ones(D_MODEL, dtype=torch.bool))
    return gain


def brute_force_edge(mask: BinaryMask, source: str, target: str) -> float:
    """Mean over (writer matrix, reader matrix) of kept paths / all paths, counting every path one by one."""
    kind, layer, _ = parse_node(target)
    norm = {"head": f"blocks.{layer}.ln1.weight", "mlp": f"blocks.{layer}.ln2.weight", "unembed": "ln_final.weight"}[
        kind
    ]
    if mask.origin.adapter == "bert":
        gain = post_norm_gain(mask, source, target)
    else:
        gain = mask.kept.get(norm, torch.ones(D_MODEL, dtype=torch.bool))
    writers = node_weights(mask, source, writing=True) or [[(d, True) for d in range(D_MODEL)]]
    readers = node_weights(mask, target, writing=False) or [[(d, True) for d in range(D_MODEL)]]
    fractions = []
    for writer, reader in itertools.product(writers, readers):
        paths = kept_paths = 0
        for (write_dim, write_kept), (read_dim, read_kept) in itertools.product(writer, reader):
            if write_dim == read_dim:
                paths += 1
                kept_paths += write_kept and read_kept and bool(gain[write_dim])
        fractions.append(kept_paths / paths)
    return sum(fractions) / len(fractions)


@pytest.mark.parametrize("n_kv_heads", [N_HEADS, 1], ids=["mha", "gqa"])
def test_edge_weights_equal_brute_force_fraction_of_kept_paths(n_kv_heads):
    mask = hand_built_mask(n_kv_heads)
    graph = circuit_graph(mask)
    assert len(graph.edges) > 0
    for edge in graph.edges.itertuples():
        assert edge.weight == pytest.approx(brute_force_edge(mask, edge.source, edge.target), abs=1e-6), edge


def test_post_norm_edges_pass_through_every_norm_between_writer_and_reader():
    mask = hand_built_mask(adapter="bert", seed=3)
    graph = circuit_graph(mask)
    for edge in graph.edges.itertuples():
        assert edge.weight == pytest.approx(brute_force_edge(mask, edge.source, edge.target), abs=1e-6), edge
    pre_norm = circuit_graph(BinaryMask(mask.specs, mask.kept, MaskOrigin("hand-built", "raw", mask.origin.model)))
    assert not graph.edges.weight.equals(pre_norm.edges.weight)  # the two placements read through other gains


@pytest.mark.parametrize("adapter", ["hand-built", "bert"], ids=["pre-norm", "post-norm"])
def test_blocks_without_heads_or_mlp_have_no_nodes_and_the_rest_keep_their_edges(adapter):
    """Heads in block 1 only, an MLP in block 0 only: those nodes alone are drawn, and every edge between them is
    still the brute-force fraction of kept paths (the norms of a block without heads or MLP stay on the path)."""
    mask = without_blocks_parts(
        hand_built_mask(adapter=adapter, seed=5), BlockComponents(frozenset({1}), frozenset({0}))
    )
    graph = circuit_graph(mask)
    assert list(graph.nodes.node) == ["embed", "L0MLP", "L1H0", "L1H1", "unembed"]
    assert list(graph.nodes.stage) == [0, 2, 3, 3, 5]
    nodes = list(graph.nodes.node)
    assert len(graph.edges) == 9  # embed -> 4 readers, L0MLP -> 3, each L1 head -> unembed
    for edge in graph.edges.itertuples():
        assert nodes.index(edge.target) > nodes.index(edge.source)
        assert edge.weight == pytest.approx(brute_force_edge(mask, edge.source, edge.target), abs=1e-6), edge


def test_unmasked_side_counts_as_fully_kept():
    mask = hand_built_mask(unmasked=("W_E", "W_U", "ln_final.w"))
    graph = circuit_graph(mask)
    edges = graph.edges.set_index(["source", "target"])["weight"]
    assert edges[("embed", "unembed")] == 1.0
    assert edges[("embed", "L0H0")] == pytest.approx(brute_force_edge(mask, "embed", "L0H0"))
    assert edges[("L1MLP", "unembed")] == pytest.approx(brute_force_edge(mask, "L1MLP", "unembed"))
    nodes = graph.nodes.set_index("node")
    assert nodes.loc["embed", "total"] == 0 and nodes["kept_fraction"].isna()["embed"]


def test_a_unit_masked_on_its_output_only_reads_through_its_kept_units():
    """Output-only masks (``W_O`` and ``W_out``, as the default head and neuron masks): a head that writes nothing has
    no edge in; an MLP with 1 of its 3 neurons writing reads with weight 1/3 (every path from a writer into a kept
    neuron's unmasked reading weights, times the norm gain, counted by hand)."""
    mask = hand_built_mask(unmasked=("W_Q", "W_K", "W_V", "W_in", "W_E", "W_U"), seed=2)
    for norm in ("blocks.1.ln1.weight", "blocks.1.ln2.weight"):
        mask.kept[norm] = torch.ones_like(mask.kept[norm])
    output = mask.kept["blocks.1.attn.o.weight"]  # conv1d [heads * d_head, d_model]: head h's rows
    output[:D_HEAD] = False  # head 0 of layer 1 writes nothing
    output[D_HEAD:] = torch.tensor([[True, False, False, False], [False, False, False, False]])  # one row of two
    mask.kept["blocks.1.mlp.out.weight"][:] = torch.tensor([[True], [False], [False]])  # neuron 0 alone writes
    edges = circuit_graph(mask).edges.set_index(["source", "target"])["weight"]
    assert all(edges[(source, "L1H0")] == 0.0 for source in ("embed", "L0H0", "L0H1", "L0MLP"))
    assert edges[("embed", "L1H1")] == pytest.approx(1 / 2)  # the embedding unmasked, every gain kept
    assert edges[("embed", "L1MLP")] == pytest.approx(1 / 3)


def test_edges_run_forward_only_through_sequential_blocks():
    graph = circuit_graph(hand_built_mask())
    pairs = set(zip(graph.edges["source"], graph.edges["target"]))
    assert ("L0H1", "L0MLP") in pairs and ("L0MLP", "L1H0") in pairs and ("embed", "unembed") in pairs
    assert ("L1H0", "L0MLP") not in pairs and ("L0H0", "L0H1") not in pairs and ("L1MLP", "L1H0") not in pairs
    writer_stages = [0, 1, 1, 2, 3, 3, 4]  # embed, L0H0, L0H1, L0MLP, L1H0, L1H1, L1MLP
    reader_stages = [1, 1, 2, 3, 3, 4, 5]  # L0H0, L0H1, L0MLP, L1H0, L1H1, L1MLP, unembed
    assert (
        len(graph.edges) == len(pairs) == sum(reader > writer for writer in writer_stages for reader in reader_stages)
    )


def test_nodes_count_kept_weights_and_neurons_by_hand():
    mask = hand_built_mask(n_kv_heads=1)
    nodes = circuit_graph(mask).nodes.set_index("node")
    for node in ("L0H1", "L1H0", "L0MLP", "unembed"):
        matrices = node_weights(mask, node, writing=True) + node_weights(mask, node, writing=False)
        assert nodes.loc[node, "kept"] == sum(kept for matrix in matrices for _, kept in matrix)
        assert nodes.loc[node, "total"] == sum(len(matrix) for matrix in matrices)
    for layer in range(N_LAYERS):
        w_in, w_out = mask.kept[f"blocks.{layer}.mlp.in.weight"], mask.kept[f"blocks.{layer}.mlp.out.weight"]
        alive = [bool(w_in[neuron].any() and w_out[neuron].any()) for neuron in range(D_MLP)]
        assert nodes.loc[f"L{layer}MLP", "kept_neurons"] == sum(alive)
        assert nodes.loc[f"L{layer}MLP", "neurons"] == D_MLP


def test_shared_mask_keeps_weights_kept_by_at_least_two():
    masks = {str(seed): hand_built_mask(seed=seed) for seed in range(3)}
    shared = shared_mask(masks)
    for key in shared.kept:
        votes = sum(mask.kept[key].int() for mask in masks.values())
        assert torch.equal(shared.kept[key], votes >= 2)
    with pytest.raises(ValueError, match="at least two"):
        shared_mask({"one": masks["0"]})


def test_a_node_matrix_of_unknown_layout_makes_the_mask_undrawable_with_the_reason():
    """A masked router whose layout its adapter cannot tell (a square bare parameter, ``routing_spec``) has no
    residual axis: undrawable_reason said None, so the report drew the circuit and circuit_graph failed with
    'a unknown tensor has no residual axis'. It now names the matrix, and the report shows the plots instead."""
    mask = hand_built_mask()
    router = TensorSpec("blocks.0.mlp.router.weight", "W_router", 0, "", (D_MODEL, D_MODEL), layout="unknown")
    with_router = BinaryMask(
        [*mask.specs, router], mask.kept | {router.key: torch.ones(router.shape, dtype=torch.bool)}, mask.origin
    )
    reason = "cannot draw blocks.0.mlp.router.weight (W_router (4, 4)) as a node of the residual stream: its adapter "
    reason += "cannot tell which of its axes is the residual stream (its layout is unknown)"
    assert undrawable_reason(with_router) == reason
    with pytest.raises(ValueError, match=re.escape(f"circuit_graph: {reason}; read this model's masks with")):
        circuit_graph(with_router)
    assert undrawable_reason(mask) is None
