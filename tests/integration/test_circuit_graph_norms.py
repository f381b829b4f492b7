"""The circuit graph reads a model's norms as its forward pass does, on tiny models served by the derived adapter:
post-norm blocks (RoBERTa) put every norm between a writer and a reader on the path, and a Gemma-style gain that
the model multiplies as ``1 + w`` leaves its dimension at scale 1 when the mask drops it (not a cut).

The expectations are written out by hand from the models' forward order, never read from an adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import boot_gemma4_with_fewer_global_key_value_heads
from transformers import (
    BitNetConfig,
    BitNetForCausalLM,
    CohereConfig,
    CohereForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from modmask_lens import MaskConfig, MaskSet, load_masks, masked, save_masks
from modmask_lens.analysis import circuit_graph
from modmask_lens.analysis.circuit_graph import norm_reading
from modmask_lens.masks.binary import BinaryMask
from modmask_lens.masks.identity import MaskOrigin
from modmask_lens.testing.tiny_models import TINY_HF_SIZES, boot_tiny

D_MODEL, N_LAYERS, N_HEADS = TINY_HF_SIZES["hidden_size"], TINY_HF_SIZES["num_hidden_layers"], 4

POST_NORM_FORWARD = ["embed", "L0H", "blocks.0.ln1.weight", "L0MLP", "blocks.0.ln2.weight"] + [
    "L1H",
    "blocks.1.ln1.weight",
    "L1MLP",
    "blocks.1.ln2.weight",
    "ln_final.weight",
    "unembed",
]
"""A two-layer post-norm forward pass in order: writers and readers by node name prefix, and the gains of the norms
the residual stream itself passes through (``ln_final``: RoBERTa's masked-LM head's norm in front of the decoder;
GPT-1 has none)."""

POST_NORM_FAMILIES = {
    "roberta": (
        lambda: RobertaForMaskedLM(RobertaConfig(**TINY_HF_SIZES)),
        {"blocks.0.ln1.weight": [3], "blocks.1.ln2.weight": [5, 7], "ln_final.weight": [0]},
    ),
    "gpt1": (
        lambda: OpenAIGPTLMHeadModel(OpenAIGPTConfig(n_embd=D_MODEL, n_layer=2, n_head=4, vocab_size=40)),
        {"blocks.0.ln1.weight": [3], "blocks.1.ln2.weight": [5, 7]},
    ),
}
"""Post-norm families the derived adapter serves, and the gain entries the test masks drop (every other weight is
kept)."""


def dropping(mask: BinaryMask, dropped: dict[str, list[int]]) -> BinaryMask:
    """``mask`` with the given gain entries removed, counted in storage order (Cohere's query/key norm gains are
    ``[n_heads, d_head]``)."""
    kept = {key: value.clone() for key, value in mask.kept.items()}
    for key, dimensions in dropped.items():
        kept[key].view(-1)[dimensions] = False
    return BinaryMask(mask.specs, kept, mask.origin, "dropped gains")


def post_norm_expectation(source: str, target: str, dropped: dict[str, list[int]]) -> float:
    """Kept fraction of the residual dimensions that pass every dropped gain between writer and reader."""

    def place(node: str) -> int:
        return next(index for index, part in enumerate(POST_NORM_FORWARD) if node.startswith(part))

    between = POST_NORM_FORWARD[place(source) + 1 : place(target)]
    cut = {dimension for norm in between for dimension in dropped.get(norm, [])}
    return (D_MODEL - len(cut)) / D_MODEL


def edges(mask: BinaryMask) -> dict[tuple[str, str], float]:
    graph = circuit_graph(mask)
    return {(row.source, row.target): row.weight for row in graph.edges.itertuples()}


@pytest.mark.parametrize("family", sorted(POST_NORM_FAMILIES))
def test_post_norm_edges_of_a_derived_adapter_pass_through_every_norm_on_the_way(family, tmp_path):
    build, dropped = POST_NORM_FAMILIES[family]
    torch.manual_seed(0)
    bridge = boot_tiny(build(), tmp_path / "model")
    mask_set = MaskSet.for_bridge(bridge)
    assert mask_set.origin.adapter == "transformer_lens"
    mask = dropping(mask_set.binary(), dropped)
    graph_edges = edges(mask)
    # Every later reader: 11 edges from embed, 7 from each head of L0, 6 from L0MLP, 2 from each head of L1, 1.
    assert len(graph_edges) == 11 + 7 * N_HEADS + 6 + 2 * N_HEADS + 1
    for (source, target), weight in graph_edges.items():
        assert weight == pytest.approx(post_norm_expectation(source, target, dropped), abs=1e-6), (source, target)
    # Read as pre-norm (what the graph drew before), the dropped ln1 entry would cut only the edges into L0's heads.
    assert graph_edges[("embed", "L0H0")] == 1.0 and graph_edges[("L0H0", "L1H0")] == (D_MODEL - 1) / D_MODEL
    assert norm_reading(mask).startswith("post-norm blocks; every masked norm gain multiplies")

    loaded = load_masks(save_masks(mask_set, tmp_path / "mask.safetensors"), bridge)
    assert edges(dropping(loaded.binary(), dropped)) == graph_edges


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    torch.manual_seed(0)
    return boot_tiny(POST_NORM_FAMILIES["roberta"][0](), tmp_path_factory.mktemp("roberta"))


def test_a_mask_made_without_a_recorded_norm_layout_keeps_the_adapters_default_reading(roberta):
    """A mask origin built by hand, with no norm layout, reads its adapter's class default: pre-norm for the
    derived adapter, whose placement is read from a model."""
    mask = dropping(MaskSet.for_bridge(roberta).binary(), POST_NORM_FAMILIES["roberta"][1])
    bare = MaskOrigin(mask.origin.adapter, mask.origin.mode, mask.origin.model)
    graph_edges = edges(BinaryMask(mask.specs, mask.kept, bare, mask.name))
    assert graph_edges[("embed", "L0H0")] == (D_MODEL - 1) / D_MODEL  # ln1 in front of L0's heads
    assert graph_edges[("L0H0", "L1H0")] == 1.0
    assert "pre-norm blocks (not recorded with the mask" in norm_reading(BinaryMask(mask.specs, mask.kept, bare))


def test_the_mlp_of_a_parallel_block_reads_through_the_norm_its_heads_read(tmp_path):
    """GPT-J's attention and MLP both read ``ln_1``'s output (TransformerLens maps no ``ln2``): a dropped ``ln1``
    entry cuts the edges into the block's heads and into its MLP, and no other."""
    torch.manual_seed(0)
    config = GPTJConfig(n_embd=D_MODEL, n_layer=2, n_head=4, vocab_size=40, rotary_dim=4, n_inner=64)
    bridge = boot_tiny(GPTJForCausalLM(config), tmp_path)
    mask = dropping(MaskSet.for_bridge(bridge).binary(), {"blocks.0.ln1.weight": [3]})
    assert mask.origin.norms.parallel_blocks
    for (source, target), weight in edges(mask).items():
        assert weight == ((D_MODEL - 1) / D_MODEL if target.startswith("L0") else 1.0), (source, target)


FAMILIES = {
    "gemma": (lambda: GemmaForCausalLM(GemmaConfig(head_dim=8, num_key_value_heads=2, **TINY_HF_SIZES)), True),
    "llama": (lambda: LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **TINY_HF_SIZES)), False),
}
"""Pre-norm families whose RMSNorm multiplies by ``1 + w`` (Gemma) or by ``w`` (Llama)."""


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_dropped_offset_gain_leaves_scale_one_and_no_cut_in_the_graph(family, tmp_path):
    build, offset = FAMILIES[family]
    torch.manual_seed(0)
    bridge = boot_tiny(build(), tmp_path)
    state_before = {key: value.clone() for key, value in bridge.state_dict().items()}
    mask = dropping(MaskSet.for_bridge(bridge).binary(), {"blocks.0.ln1.weight": [3]})  # probes each norm
    state_after = bridge.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[key], value) for key, value in state_before.items())
    # What the masked model computes: ln1's output at the dropped dimension is the normalised input (scale 1) when
    # the gain is an offset from 1, and 0 when it multiplies.
    tokens = torch.randint(5, 40, (1, 6), generator=torch.Generator().manual_seed(0))
    with masked(bridge, mask), torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0.ln1.hook_"))
    residual, output = cache["blocks.0.ln1.hook_in"], cache["blocks.0.ln1.hook_out"]
    normalised = residual / residual.pow(2).mean(-1, keepdim=True).add(bridge.cfg.eps).sqrt()
    expected = normalised[..., 3] if offset else torch.zeros_like(output[..., 3])
    torch.testing.assert_close(output[..., 3], expected, rtol=1e-4, atol=1e-5)
    assert expected.abs().max() > 0.1 or not offset

    norm_specs = [spec for spec in mask.specs if spec.kind == "norm"]
    assert norm_specs and all(spec.gain_offset == offset for spec in norm_specs)
    graph_edges = edges(mask)
    into_layer0_heads = {key: weight for key, weight in graph_edges.items() if key[1].startswith("L0H")}
    assert into_layer0_heads and all(
        weight == (1.0 if offset else (D_MODEL - 1) / D_MODEL) for weight in into_layer0_heads.values()
    )
    assert all(weight == 1.0 for key, weight in graph_edges.items() if key not in into_layer0_heads)
    assert ("ln1.w, ln2.w, ln_final.w" in norm_reading(mask)) == offset


def steer(activation: torch.Tensor, hook) -> torch.Tensor:
    """A steering hook: adds 1 to every entry of the norm's output."""
    return activation + 1.0


def refuse(activation: torch.Tensor, hook) -> torch.Tensor:
    raise RuntimeError("a hook that only runs on the model's own activations")


@pytest.mark.parametrize("users_hook", [steer, refuse], ids=["steering", "raising"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_users_hook_on_a_norm_neither_fires_nor_sways_the_gain_reading(family, users_hook, tmp_path):
    """A hook left on ``ln1``/``ln2.hook_out`` does not run while a mask is made, and the gains read as the model
    multiplies them: a steering hook made Llama's gains read ``1 + w`` (its output is non-zero with every gain at 0),
    and a raising one made Gemma's read ``w``."""
    build, offset = FAMILIES[family]
    torch.manual_seed(0)
    bridge = boot_tiny(build(), tmp_path)
    fired = []

    def recorded(activation, hook):
        fired.append(hook.name)
        return users_hook(activation, hook)

    for layer in range(N_LAYERS):
        for norm in ("ln1", "ln2"):
            bridge.get_submodule(f"blocks.{layer}.{norm}.hook_out").add_hook(recorded)
    norm_specs = MaskSet.for_bridge(bridge, MaskConfig(kinds=("norm",))).members
    assert len(norm_specs) == 2 * N_LAYERS + 1
    assert all(spec.gain_offset == offset for spec in norm_specs), [(s.key, s.gain_offset) for s in norm_specs]
    assert fired == []
    if users_hook is steer:  # the user's hooks are still on the model
        bridge(torch.tensor([[5, 6]]))
        assert sorted(fired) == sorted(
            f"blocks.{layer}.{norm}.hook_out" for layer in range(N_LAYERS) for norm in ("ln1", "ln2")
        )


def cutting_residual_rows(mask: BinaryMask, cuts: dict[str, list[int]]) -> BinaryMask:
    """``mask`` without the weights of the given matrices that write or read the given residual dimensions."""
    kept = {key: value.clone() for key, value in mask.kept.items()}
    for spec in mask.specs:
        if spec.key in cuts:
            kept[spec.key].index_fill_(spec.residual_axis, torch.tensor(cuts[spec.key]), False)
    return BinaryMask(mask.specs, kept, mask.origin, "cut matrices")


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory):
    """A tiny OLMo 2: no norm in front of attention or the MLP, RMSNorm gains read as ``w`` on each sub-layer's
    output (ln1_post, ln2_post) and on the queries and keys, one entry per query or key row (q_norm, k_norm)."""
    torch.manual_seed(0)
    model = Olmo2ForCausalLM(Olmo2Config(num_key_value_heads=2, **TINY_HF_SIZES))
    return boot_tiny(model, tmp_path_factory.mktemp("olmo2"))


def test_a_dropped_post_sub_layer_gain_cuts_what_its_sub_layer_writes(olmo2):
    """OLMo 2 adds ``ln1_post(attention output)`` and ``ln2_post(MLP output)`` to the residual stream: a dropped entry
    of such a gain cuts that dimension of everything the sub-layer writes, as dropping the dimension's weights of its
    W_O or W_out does. The edges ignored these gains (masked since 683039b): every edge out of L0's heads read 1.0
    with two of block 0's ln1_post entries dropped."""
    mask = MaskSet.for_bridge(olmo2).binary()
    through_gains = dropping(mask, {"blocks.0.ln1_post.weight": [3, 5], "blocks.1.ln2_post.weight": [7]})
    through_matrices = cutting_residual_rows(mask, {"blocks.0.attn.o.weight": [3, 5], "blocks.1.mlp.out.weight": [7]})
    assert edges(through_gains) == edges(through_matrices)
    assert edges(through_gains)[("L0H0", "L1H0")] == (D_MODEL - 2) / D_MODEL
    assert edges(through_gains)[("L1MLP", "unembed")] == (D_MODEL - 1) / D_MODEL
    # The forward pass: with every entry of block 0's ln1_post dropped its attention adds nothing, as without W_O.
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    everything = {"blocks.0.ln1_post.weight": list(range(D_MODEL))}
    with torch.no_grad(), masked(olmo2, dropping(mask, everything)):
        without_gain = olmo2(tokens)
    with torch.no_grad(), masked(olmo2, cutting_residual_rows(mask, {"blocks.0.attn.o.weight": list(range(D_MODEL))})):
        without_output = olmo2(tokens)
    torch.testing.assert_close(without_gain, without_output)
    without_gain_edges = edges(dropping(mask, everything))
    out_of_layer0_heads = [weight for (source, _), weight in without_gain_edges.items() if "L0H" in source]
    assert out_of_layer0_heads and not any(out_of_layer0_heads)


QUERY_KEY_NORM_FAMILIES = {
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=8, **TINY_HF_SIZES)),
    "olmo2": lambda: Olmo2ForCausalLM(Olmo2Config(num_key_value_heads=2, **TINY_HF_SIZES)),
}
"""Query/key norms read as ``w``: Qwen3's one ``d_head`` gain every head shares, OLMo 2's one entry per row of the
query and key projections."""


def without_rows(mask: BinaryMask, rows: dict[str, list[int]]) -> BinaryMask:
    """``mask`` without the given output rows of [out, in] matrices."""
    kept = {key: value.clone() for key, value in mask.kept.items()}
    for key, indices in rows.items():
        kept[key][indices] = False
    return BinaryMask(mask.specs, kept, mask.origin, "cut rows")


@pytest.mark.parametrize("family", sorted(QUERY_KEY_NORM_FAMILIES))
def test_a_dropped_query_or_key_norm_gain_cuts_the_rows_it_scales(family, tmp_path):
    """A query/key norm scales the queries (keys) after W_Q (W_K): a dropped entry zeroes that query (key) feature of
    every head it scales, as dropping those rows of W_Q (W_K) does. The edges ignored these gains (masked since
    683039b): with q_norm and k_norm entries dropped every edge into a head read 1.0."""
    torch.manual_seed(0)
    bridge = boot_tiny(QUERY_KEY_NORM_FAMILIES[family](), tmp_path)
    mask = MaskSet.for_bridge(bridge).binary()
    d_head, n_kv_heads = 8, 2
    shared = mask.kept["blocks.0.attn.q_norm.weight"].numel() == d_head  # else one entry per row
    dropped_queries, dropped_keys = [1, 6], [2]
    gains = dropping(
        mask, {"blocks.0.attn.q_norm.weight": dropped_queries, "blocks.1.attn.k_norm.weight": dropped_keys}
    )
    query_rows = (
        [head * d_head + row for head in range(N_HEADS) for row in dropped_queries] if shared else dropped_queries
    )
    key_rows = [head * d_head + row for head in range(n_kv_heads) for row in dropped_keys] if shared else dropped_keys
    rows = without_rows(mask, {"blocks.0.attn.q.weight": query_rows, "blocks.1.attn.k.weight": key_rows})
    assert edges(gains) == edges(rows)
    assert edges(gains)[("embed", "L0H0")] < 1.0 and edges(gains)[("embed", "L1H0")] < 1.0
    # The forward pass: with every entry of block 0's q_norm dropped its queries are zero, as without W_Q.
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    everything = {"blocks.0.attn.q_norm.weight": list(range(mask.kept["blocks.0.attn.q_norm.weight"].numel()))}
    with torch.no_grad(), masked(bridge, dropping(mask, everything)):
        without_gain = bridge(tokens)
    with torch.no_grad(), masked(bridge, without_rows(mask, {"blocks.0.attn.q.weight": list(range(N_HEADS * d_head))})):
        without_queries = bridge(tokens)
    torch.testing.assert_close(without_gain, without_queries)


QUERY_KEY_ROWS = {
    "qwen3": {
        "blocks.0.attn.q.weight": [head * 8 + row for head in range(N_HEADS) for row in (1, 6)],
        "blocks.1.attn.k.weight": [group * 8 + 2 for group in range(2)],
    },
    "olmo2": {"blocks.0.attn.q.weight": [1, 6], "blocks.1.attn.k.weight": [2]},
}
"""The rows of W_Q (W_K) whose features q_norm entries 1 and 6 of block 0 (k_norm entry 2 of block 1) scale: in
every head (key/value group) of the block where one d_head gain is shared by all (Qwen3, d_head 8), that row alone
where the gain has one entry per row (OLMo 2)."""

QUERY_KEY_GAINS_WITHOUT_PROJECTIONS = {
    "q-norm-only": (("q_norm.w",), ("W_Q",)),
    "q-and-k-norms-only": (("q_norm.w", "k_norm.w"), ("W_Q", "W_K")),
}
"""Masked roles with query/key norm gains but not the projections whose features they scale, and the roles of the
mask that drops those projections' rows instead."""


@pytest.mark.parametrize(
    "gain_roles, row_roles", QUERY_KEY_GAINS_WITHOUT_PROJECTIONS.values(), ids=QUERY_KEY_GAINS_WITHOUT_PROJECTIONS
)
@pytest.mark.parametrize("family", sorted(QUERY_KEY_NORM_FAMILIES))
def test_a_dropped_query_or_key_norm_gain_cuts_edges_with_its_projection_unmasked(
    family, gain_roles, row_roles, tmp_path
):
    """A dropped q_norm (k_norm) entry zeroes the query (key) features it scales whether or not the mask masks W_Q
    (W_K): the edges equal those of a mask that drops the same rows of W_Q (W_K) instead, in every head for Qwen3's
    shared d_head gain, in one head for OLMo 2's per-row gain. The edges applied these gains only to a masked W_Q /
    W_K: with the gains masked alone every edge read 1.0 (against embed -> L0H0 0.75 with the W_Q rows dropped
    instead of the q_norm entries alone). The expected rows are written out by hand per family (QUERY_KEY_ROWS)."""
    torch.manual_seed(0)
    bridge = boot_tiny(QUERY_KEY_NORM_FAMILIES[family](), tmp_path)
    dropped_gains = {"blocks.0.attn.q_norm.weight": [1, 6], "blocks.1.attn.k_norm.weight": [2]}
    gain_mask = MaskSet.for_bridge(bridge, MaskConfig(roles=gain_roles)).binary()
    gains = dropping(gain_mask, {key: entries for key, entries in dropped_gains.items() if key in gain_mask.kept})
    row_mask = MaskSet.for_bridge(bridge, MaskConfig(roles=row_roles)).binary()
    rows = without_rows(row_mask, {key: rows for key, rows in QUERY_KEY_ROWS[family].items() if key in row_mask.kept})
    assert edges(gains) == edges(rows)

    def read(query: float, key: float) -> float:
        """A head's read profile: the kept fraction of its W_Q and W_K rows, averaged over the masked ones."""
        return (query + key) / 2 if "k_norm.w" in gain_roles else query

    # Every head's W_Q keeps 6 of its 8 rows where the gain is shared; only head 0's where it is split by row.
    assert edges(gains)[("embed", "L0H0")] == pytest.approx(read(6 / 8, 1.0))
    assert edges(gains)[("embed", "L0H3")] == pytest.approx(read(6 / 8 if family == "qwen3" else 1.0, 1.0))
    # Heads 2 and 3 read key/value group 1, whose row 2 only the shared gain scales.
    assert edges(gains)[("L0MLP", "L1H0")] == pytest.approx(read(1.0, 7 / 8))
    assert edges(gains)[("L0MLP", "L1H3")] == pytest.approx(read(1.0, 7 / 8 if family == "qwen3" else 1.0))


QUERY_KEY_GAIN_LAYOUTS = {
    "gemma4": (
        lambda directory: boot_gemma4_with_fewer_global_key_value_heads(directory, per_layer_inputs=False),
        {"blocks.1.attn.q_norm.weight": [1, 6], "blocks.1.attn.k_norm.weight": [3]},
        {"blocks.1.attn.q.weight": [head * 16 + row for head in range(N_HEADS) for row in (1, 6)]}
        | {"blocks.1.attn.k.weight": [3]},
        ("embed", "L1H3", (14 / 16 + 15 / 16) / 2),
    ),
    "cohere": (
        lambda directory: boot_tiny(
            CohereForCausalLM(CohereConfig(num_key_value_heads=2, use_qk_norm=True, **TINY_HF_SIZES)), directory
        ),
        {"blocks.0.attn.q_norm.weight": [1, 6], "blocks.0.attn.k_norm.weight": [10]},
        {"blocks.0.attn.q.weight": [1, 6], "blocks.0.attn.k.weight": [10]},
        ("embed", "L0H2", (1 + 7 / 8) / 2),
    ),
}
"""Query/key norm gains laid out otherwise: Gemma 4's shared gain with each block's own d_head (16 in block 1, whose
one key/value head all four query heads read; 8 in block 0), Cohere's one gain per head stored [n_heads, d_head]
(entries in storage order, one per row of W_Q / W_K). Then the gain entries dropped, the W_Q / W_K rows whose
features they scale, and one edge's weight, all written out by hand."""


@pytest.mark.parametrize("family", sorted(QUERY_KEY_GAIN_LAYOUTS))
def test_query_key_gains_cut_the_rows_of_their_own_block_layout_with_the_projections_unmasked(family, tmp_path):
    """A mask of the query/key norm gains alone cuts the edges that dropping the W_Q / W_K rows they scale does, with
    the rows per head of the gain's own block (Gemma 4) and a gain stored per head (Cohere). Before, such a mask read
    1.0 on every edge, and the first fix (6e4558c) raised on Cohere's [n_heads, d_head] gain, read as a vector."""
    boot, dropped_gains, dropped_rows, (source, target, weight) = QUERY_KEY_GAIN_LAYOUTS[family]
    torch.manual_seed(0)
    bridge = boot(tmp_path)
    gains = dropping(MaskSet.for_bridge(bridge, MaskConfig(roles=("q_norm.w", "k_norm.w"))).binary(), dropped_gains)
    rows = without_rows(MaskSet.for_bridge(bridge, MaskConfig(roles=("W_Q", "W_K"))).binary(), dropped_rows)
    assert edges(gains) == edges(rows)
    assert edges(gains)[(source, target)] == pytest.approx(weight)


def without_columns(mask: BinaryMask, columns: dict[str, list[int]]) -> BinaryMask:
    """``mask`` without the given input columns of [out, in] matrices."""
    kept = {key: value.clone() for key, value in mask.kept.items()}
    for key, indices in columns.items():
        kept[key][:, indices] = False
    return BinaryMask(mask.specs, kept, mask.origin, "cut columns")


def test_a_dropped_sub_layer_norm_gain_cuts_the_features_its_output_projection_reads(tmp_path):
    """BitNet normalises inside each sub-layer, in front of its output projection: attn_sub_norm over the heads'
    concatenated outputs before W_O, ffn_sub_norm over the MLP's hidden units before W_out. A dropped entry zeroes
    that head feature (neuron) wherever W_O (W_out) reads it, as dropping that column of W_O (W_out) does. The edges
    ignored these gains (masked since the BitNet adapter): with entries of both dropped every edge read 1.0."""
    torch.manual_seed(0)
    bridge = boot_tiny(BitNetForCausalLM(BitNetConfig(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path)
    mask = MaskSet.for_bridge(bridge).binary()
    features, neurons = [1, 9], [3, 4, 60]  # head 0's feature 1 and head 1's feature 1; three of block 1's neurons
    gains = dropping(
        mask, {"blocks.0.attn.attn_sub_norm.weight": features, "blocks.1.mlp.ffn_sub_norm.weight": neurons}
    )
    columns = without_columns(mask, {"blocks.0.attn.o.weight": features, "blocks.1.mlp.out.weight": neurons})
    assert edges(gains) == edges(columns)
    assert edges(gains)[("L0H0", "L1H0")] < 1.0 and edges(gains)[("L1MLP", "unembed")] < 1.0
    assert edges(gains)[("L0H2", "L1H0")] == 1.0
    # The forward pass: with every entry of block 1's ffn_sub_norm dropped its MLP adds nothing, as without W_out.
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masked(bridge, dropping(mask, {"blocks.1.mlp.ffn_sub_norm.weight": list(range(64))})):
        without_gain = bridge(tokens)
    with torch.no_grad(), masked(bridge, without_columns(mask, {"blocks.1.mlp.out.weight": list(range(64))})):
        without_output = bridge(tokens)
    torch.testing.assert_close(without_gain, without_output)


SUB_NORM_WITHOUT_OUTPUT_PROJECTIONS = {
    "mlp-sub-norm-only": (("mlp_sub_norm.w",), ("W_out",)),
    "both-sub-norms-only": (("attn_sub_norm.w", "mlp_sub_norm.w"), ("W_O", "W_out")),
    "mlp-sub-norm-and-w-in": (("mlp_sub_norm.w", "W_in"), ("W_out", "W_in")),
}
"""Masked roles with BitNet's sub-layer norm gains but not the output projections they scale, and the roles of the
mask that drops those projections' columns instead."""


@pytest.mark.parametrize(
    "gain_roles, column_roles", SUB_NORM_WITHOUT_OUTPUT_PROJECTIONS.values(), ids=SUB_NORM_WITHOUT_OUTPUT_PROJECTIONS
)
def test_a_dropped_sub_layer_norm_gain_cuts_edges_with_its_output_projection_unmasked(
    gain_roles, column_roles, tmp_path
):
    """A dropped attn_sub_norm (ffn_sub_norm) entry zeroes the head feature (neuron) W_O (W_out) reads whether or not
    the mask masks W_O (W_out): the edges equal those of a mask that drops the same columns of W_O (W_out) instead.
    The edges applied these gains only to a masked W_O / W_out: with the gains masked alone every edge read 1.0
    (against 0.875 from L0H0 and 0.953 from L1MLP with the columns dropped)."""
    torch.manual_seed(0)
    bridge = boot_tiny(BitNetForCausalLM(BitNetConfig(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path)
    features, neurons = [1, 9], [3, 4, 60]  # head 0's feature 1 and head 1's feature 1; three of block 1's neurons
    dropped_gains = {"blocks.0.attn.attn_sub_norm.weight": features, "blocks.1.mlp.ffn_sub_norm.weight": neurons}
    gain_mask = MaskSet.for_bridge(bridge, MaskConfig(roles=gain_roles)).binary()
    gains = dropping(gain_mask, {key: entries for key, entries in dropped_gains.items() if key in gain_mask.kept})
    dropped_columns = {"blocks.0.attn.o.weight": features, "blocks.1.mlp.out.weight": neurons}
    column_mask = MaskSet.for_bridge(bridge, MaskConfig(roles=column_roles)).binary()
    columns = without_columns(
        column_mask, {key: entries for key, entries in dropped_columns.items() if key in column_mask.kept}
    )
    assert edges(gains) == edges(columns)
    assert edges(gains)[("L1MLP", "unembed")] == pytest.approx(61 / 64)
    assert edges(gains)[("L0H2", "L1H0")] == 1.0
    if "attn_sub_norm.w" in gain_roles:
        assert edges(gains)[("L0H0", "L1H0")] == pytest.approx(7 / 8)


@pytest.mark.parametrize("roles", [None, ("mlp_sub_norm.w",)], ids=["every-role", "sub-norm-gains-only"])
def test_a_dropped_sub_layer_norm_gain_removes_the_neuron_it_scales(roles, tmp_path):
    """A dropped ffn_sub_norm entry zeroes that normalised hidden unit, the neuron BitNet's W_out reads: kept_neurons
    counts it as removed, as it does a neuron whose W_out column the mask drops, and the forward pass is that of the
    mask without those columns (not of one without their W_in rows: those feed the norm's statistic, which every
    neuron shares). kept_neurons counted 64 of 64 with every role masked, and nothing with the gains masked alone."""
    torch.manual_seed(0)
    bridge = boot_tiny(BitNetForCausalLM(BitNetConfig(num_key_value_heads=2, **TINY_HF_SIZES)), tmp_path)
    every_role = MaskSet.for_bridge(bridge).binary()
    neurons = [3, 4, 60]  # three of block 1's 64
    gains = dropping(
        MaskSet.for_bridge(bridge, MaskConfig(roles=roles)).binary(), {"blocks.1.mlp.ffn_sub_norm.weight": neurons}
    )
    nodes = circuit_graph(gains).nodes.set_index("node")
    assert (nodes.loc["L1MLP", "neurons"], nodes.loc["L1MLP", "kept_neurons"]) == (64, 64 - len(neurons))
    assert (nodes.loc["L0MLP", "neurons"], nodes.loc["L0MLP", "kept_neurons"]) == (64, 64)
    columns = without_columns(every_role, {"blocks.1.mlp.out.weight": neurons})
    assert circuit_graph(columns).nodes.set_index("node").loc["L1MLP", "kept_neurons"] == 64 - len(neurons)
    tokens = torch.randint(5, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masked(bridge, gains):
        without_gains = bridge(tokens)
    with torch.no_grad(), masked(bridge, columns):
        without_columns_logits = bridge(tokens)
    with torch.no_grad():
        whole = bridge(tokens)
    torch.testing.assert_close(without_gains, without_columns_logits)
    assert (without_gains - whole).abs().amax() > 1e-4  # the three neurons mattered
