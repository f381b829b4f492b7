"""Analyses and report views of masks on mixture-of-experts models, against counts made by hand from each family's
storage layout: one row per neuron (hidden unit i of expert e is neuron ``e * d_expert + i``, a shared expert's
units follow), fused gate/up halves counted for their one neuron."""

from __future__ import annotations

import pytest
import torch
from conftest import D_EXPERT, D_SHARED, MOE, N_EXPERTS

from modmask_lens import BinaryMask, MaskConfig, MaskSet
from modmask_lens.analysis import circuit_graph, unit_importance
from modmask_lens.testing.tiny_models import boot_tiny
from modmask_lens.viz import write_report

D_MODEL = 32
ROUTED = N_EXPERTS * D_EXPERT


def random_mask(bridge, kinds=("linear", "norm"), keep=0.6, seed=0) -> BinaryMask:
    template = MaskSet.for_bridge(bridge, MaskConfig(kinds=kinds)).binary()
    generator = torch.Generator().manual_seed(seed)
    kept = {key: torch.rand(kept.shape, generator=generator) < keep for key, kept in template.kept.items()}
    return BinaryMask(template.specs, kept, template.origin, "random")


@pytest.fixture(scope="module")
def qwen2_moe(tmp_path_factory):
    return boot_tiny(MOE["qwen2_moe"](), tmp_path_factory.mktemp("qwen2_moe"))


def by_neuron(mask: BinaryMask, layer: int) -> dict[tuple[str, int], tuple[int, int]]:
    frame = mask.kept_fraction(by="neuron")
    frame = frame[frame.layer == layer]
    return {(row.role, row.neuron): (row.kept, row.total) for row in frame.itertuples()}


def test_neuron_rows_of_routed_and_shared_experts_count_each_neuron_s_weights(qwen2_moe):
    """Qwen2-MoE: ``gate_up_proj[e]`` holds unit i's gate row i and up row ``D_EXPERT + i``, ``down_proj[e]`` its
    column i; the shared expert's units are neurons ``ROUTED + j``. The router and the shared expert's gate are no
    neuron tensors."""
    mask = random_mask(qwen2_moe)
    gate_up, down = (mask.kept[f"blocks.1.mlp.experts.{name}"] for name in ("gate_up_proj", "down_proj"))
    expected = {}
    for expert in range(N_EXPERTS):
        for unit in range(D_EXPERT):
            neuron = expert * D_EXPERT + unit
            halves = int(gate_up[expert, unit].sum()) + int(gate_up[expert, D_EXPERT + unit].sum())
            expected["W_experts_in", neuron] = (halves, 2 * D_MODEL)
            expected["W_experts_out", neuron] = (int(down[expert, :, unit].sum()), D_MODEL)
    shared = {role: mask.kept[f"blocks.1.mlp.shared_expert.{part}.weight"] for role, part in _SHARED_PARTS.items()}
    for unit in range(D_SHARED):
        expected["W_gate", ROUTED + unit] = (int(shared["W_gate"][unit].sum()), D_MODEL)
        expected["W_in", ROUTED + unit] = (int(shared["W_in"][unit].sum()), D_MODEL)
        expected["W_out", ROUTED + unit] = (int(shared["W_out"][:, unit].sum()), D_MODEL)
    assert by_neuron(mask, 1) == expected


_SHARED_PARTS = {"W_gate": "gate", "W_in": "in", "W_out": "out"}


def test_interleaved_transposed_stacks_and_their_biases_count_per_neuron(tmp_path):
    """GPT-OSS: ``gate_up_proj[e]`` is ``[d_model, 2 * D_EXPERT]`` with unit i's gate and up columns 2i and 2i + 1
    (its bias ``[e, 2 * D_EXPERT]`` alike), ``down_proj[e]`` is ``[D_EXPERT, d_model]``; ``down_proj_bias`` has no
    neurons."""
    bridge = boot_tiny(MOE["gpt_oss"](), tmp_path)
    mask = random_mask(bridge, kinds=("linear", "bias"))
    experts = "blocks.1.mlp.experts"
    gate_up, bias, down = (
        mask.kept[f"{experts}.{name}"] for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj")
    )
    expected = {}
    for expert in range(N_EXPERTS):
        for unit in range(D_EXPERT):
            neuron, pair = expert * D_EXPERT + unit, [2 * unit, 2 * unit + 1]
            expected["W_experts_in", neuron] = (int(gate_up[expert][:, pair].sum()), 2 * D_MODEL)
            expected["b_experts_in", neuron] = (int(bias[expert, pair].sum()), 2)
            expected["W_experts_out", neuron] = (int(down[expert, unit].sum()), D_MODEL)
    assert by_neuron(mask, 1) == expected


def test_unit_importance_pools_a_neuron_over_its_expert_stacks(qwen2_moe):
    mask = random_mask(qwen2_moe)
    ranked = unit_importance(mask, "neuron")
    layer_1 = ranked[ranked.layer == 1].set_index("neuron")
    assert len(layer_1) == ROUTED + D_SHARED
    gate_up, down = (mask.kept[f"blocks.1.mlp.experts.{name}"] for name in ("gate_up_proj", "down_proj"))
    expert, unit = 3, D_EXPERT - 1
    kept = int(gate_up[expert, unit].sum() + gate_up[expert, D_EXPERT + unit].sum() + down[expert, :, unit].sum())
    assert (layer_1.loc[expert * D_EXPERT + unit, "kept"], layer_1.loc[expert * D_EXPERT + unit, "total"]) == (
        kept,
        3 * D_MODEL,
    )


def test_the_circuit_view_s_moe_mlp_node_holds_its_experts_router_and_shared_expert(qwen2_moe):
    """Layer 1's MLP node: kept weights of its expert stacks, routers (router and shared-expert gate) and shared
    expert; its neurons are the routed and shared ones, alive when every masked matrix holding them keeps a weight;
    the embed -> L1MLP edge averages the kept fraction of every MLP reader per residual dimension, gated by ln2."""
    mask = random_mask(qwen2_moe, keep=0.02, seed=1)
    kept = {key.removeprefix("blocks.1.mlp."): tensor for key, tensor in mask.kept.items()}
    gate_up, down = kept["experts.gate_up_proj"], kept["experts.down_proj"]
    shared = {role: kept[f"shared_expert.{part}.weight"] for role, part in _SHARED_PARTS.items()}
    routers = [kept["gate.weight"], kept["shared_expert_gate.weight"]]
    graph = circuit_graph(mask)
    node = graph.nodes.set_index("node").loc["L1MLP"]
    matrices = [gate_up, down, *shared.values(), *routers]
    assert (node.kept, node.total) == (sum(int(m.sum()) for m in matrices), sum(m.numel() for m in matrices))
    # Like a dense MLP's separate gate and up matrices, each half of the fused gate/up must keep a weight.
    routed_alive = gate_up[:, :D_EXPERT].any(dim=2) & gate_up[:, D_EXPERT:].any(dim=2) & down.any(dim=1)
    shared_alive = shared["W_gate"].any(dim=1) & shared["W_in"].any(dim=1) & shared["W_out"].any(dim=0)
    assert (node.neurons, node.kept_neurons) == (ROUTED + D_SHARED, int(routed_alive.sum() + shared_alive.sum()))
    assert 0 < node.kept_neurons < node.neurons
    readers = [gate_up.flatten(0, 1), shared["W_gate"], shared["W_in"], *routers]  # each [rows, d_model]
    read = torch.stack([reader.float().mean(dim=0) for reader in readers]).mean(dim=0)
    gain = mask.kept["blocks.1.ln2.weight"].float()
    edges = graph.edges.set_index(["source", "target"]).weight
    torch.testing.assert_close(edges["embed", "L1MLP"], float((gain * read).mean()))
    writers = [down.transpose(1, 2).flatten(0, 1), shared["W_out"].T]  # each [rows, d_model]
    write = torch.stack([writer.float().mean(dim=0) for writer in writers]).mean(dim=0)
    unembed = mask.kept["unembed.weight"].float().mean(dim=0)  # W_U is [vocab, d_model]
    final_gain = mask.kept["ln_final.weight"].float()
    torch.testing.assert_close(edges["L1MLP", "unembed"], float((write * final_gain * unembed).mean()))


def test_a_gpt_oss_neuron_is_alive_only_while_both_interleaved_halves_keep_a_weight(tmp_path):
    """GPT-OSS's ``gate_up_proj[e]`` is ``[d_model, 2 * d_expert]`` with unit i's gate column ``2i`` and up column
    ``2i + 1``; ``down_proj[e]`` is ``[d_expert, d_model]``. The circuit view counted a neuron whose up column lost
    every weight as kept."""
    mask = random_mask(boot_tiny(MOE["gpt_oss"](), tmp_path), keep=0.05, seed=1)
    gate_up, down = mask.kept["blocks.1.mlp.experts.gate_up_proj"], mask.kept["blocks.1.mlp.experts.down_proj"]
    gate, up = gate_up[..., 0::2].any(dim=1), gate_up[..., 1::2].any(dim=1)
    alive = gate & up & down.any(dim=2)
    assert int(((gate | up) & down.any(dim=2)).sum()) > int(alive.sum())  # the mask tells the two rules apart
    node = circuit_graph(mask).nodes.set_index("node").loc["L1MLP"]
    assert (node.neurons, node.kept_neurons) == (alive.numel(), int(alive.sum()))


def test_the_report_of_moe_masks_shows_each_mlp_node_s_experts_and_neurons(qwen2_moe, tmp_path):
    masks = {name: random_mask(qwen2_moe, keep=0.02, seed=seed) for seed, name in enumerate(["first", "second"])}
    html = write_report(tmp_path / "report.html", qwen2_moe, masks, torch.tensor([3, 7, 10])).read_text()
    for name, mask in masks.items():
        node = circuit_graph(mask).nodes.set_index("node").loc["L1MLP"]
        assert f"kept neurons {node.kept_neurons} / {ROUTED + D_SHARED}" in html, name
    graph = circuit_graph(masks["first"])
    routers = graph.node_roles[(graph.node_roles.node == "L1MLP") & (graph.node_roles.role == "W_router")]
    assert len(routers) == 2  # the router and the shared expert's gate, shown as one role
    assert f"W_router {routers.kept.sum() / routers.total.sum():.1%}" in html and "W_experts_in" in html
