"""Clusterability metric, co-clustering and loss: hand-computed values, the 1/k baseline, and any bridge."""

from __future__ import annotations

import pytest
import torch

from modmask_lens.modularity.bridge_graph import unit_graph_of
from modmask_lens.modularity.clusterability import (
    block_labels,
    cluster_units,
    clusterability,
    edge_clusterability,
    matrix_clusterability,
    unit_spectral_embedding,
)
from modmask_lens.modularity.clusterability_loss import ClusterabilityConfig, ClusterabilityLoss
from modmask_lens.modularity.coclustering import kmeans, spectral_cocluster
from modmask_lens.modularity.mlp import BimtMLP


def test_matrix_clusterability_matches_hand_computed_share_of_squared_weight():
    matrix = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]])
    out_labels = torch.tensor([0, 1])
    in_labels = torch.tensor([0, 1, -1])  # the last input belongs to no cluster
    # inside: W[0,0]^2 (cluster 0) + W[1,1]^2 (cluster 1) = 1 + 9; total 1 + 4 + 9 + 1 = 15
    assert matrix_clusterability(matrix, out_labels, in_labels, 2).item() == pytest.approx(10 / 15)


def test_block_labels_are_contiguous_and_leave_the_remainder_unclustered():
    assert block_labels(7, 3).tolist() == [0, 0, 1, 1, 2, 2, -1]
    assert block_labels(2, 4).tolist() == [-1, -1]


def test_cluster_counts_and_models_without_clustered_matrices_are_refused():
    from transformer_lens.model_bridge import TransformerBridge

    from modmask_lens.core.random import seeded
    from modmask_lens.testing.tiny_models import TINY_NATIVE_CONFIG

    mlp = BimtMLP((4, 6, 6, 2), seed=0)  # the widest clustered axes have 6 units
    for k in (0, -2, 7, [], True):
        with pytest.raises(ValueError, match="k="):
            clusterability(mlp, k=k)
    spectral = clusterability(mlp, k=8, methods=["spectral"], baseline=False)  # co-clusters all 18 units at once
    assert spectral.clusterability.gt(0).any()
    widest = clusterability(mlp, k=6, methods=["blocks"], baseline=False).set_index("key")
    assert widest.loc["linears.1.weight", "clusterability"] > 0  # 6 x 6: one unit per cluster on each side
    assert (widest.drop("linears.1.weight")[["clusterability", "chance"]] == 0).all().all()  # 4 or 2 units: none
    with pytest.raises(ValueError, match="k="):
        ClusterabilityLoss(mlp, ClusterabilityConfig(n_clusters=0))
    with seeded(0):
        attention_only = TransformerBridge.boot_native(TINY_NATIVE_CONFIG | {"attn_only": True})
    with pytest.raises(ValueError, match="heads=True"):
        clusterability(attention_only, k=4)
    assert len(clusterability(attention_only, k=2, methods=["blocks"], heads=True, baseline=False)) > 0


@pytest.mark.parametrize("k", [2, 4, 8])
def test_random_weights_in_equal_blocks_give_one_over_k(k):
    matrix = torch.randn(512, 256, generator=torch.Generator().manual_seed(0))
    value = matrix_clusterability(matrix, block_labels(512, k), block_labels(256, k), k)
    assert value.item() == pytest.approx(1 / k, rel=0.05)


def _block_diagonal(k: int, size: int, noise: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.block_diag(*[torch.rand(size, size, generator=generator) + 1 for _ in range(k)])
    return matrix + noise * torch.rand(matrix.shape, generator=generator)


def test_spectral_cocluster_pairs_row_and_column_clusters_of_a_shuffled_block_matrix():
    k, size = 3, 6
    matrix = _block_diagonal(k, size, noise=0.05)
    generator = torch.Generator().manual_seed(1)
    row_order, column_order = (
        torch.randperm(k * size, generator=generator),
        torch.randperm(k * size, generator=generator),
    )
    rows, columns = spectral_cocluster(matrix[row_order][:, column_order], k)
    true_rows, true_columns = row_order // size, column_order // size
    for cluster in range(k):  # each found row cluster is one true block, paired with that block's columns
        blocks = set(true_rows[rows == cluster].tolist())
        assert len(blocks) == 1
        assert set(true_columns[columns == cluster].tolist()) == blocks


def test_kmeans_separates_two_distant_groups_deterministically():
    points = torch.cat([torch.zeros(5, 2), torch.full((4, 2), 10.0)])
    labels = kmeans(points, 2, seed=3)
    assert len(set(labels[:5].tolist())) == 1 and len(set(labels[5:].tolist())) == 1
    assert labels[0] != labels[-1]
    assert torch.equal(labels, kmeans(points, 2, seed=3))


def test_spectral_clusters_of_a_modular_mlp_find_its_modules():
    mlp = BimtMLP((4, 8, 4), seed=0)
    with torch.no_grad():  # two modules: inputs/hidden/outputs 0-1 / 0-3 / 0-1 and the rest
        for linear in mlp.linears:
            mask = torch.zeros_like(linear.weight)
            half_out, half_in = linear.out_features // 2, linear.in_features // 2
            mask[:half_out, :half_in] = mask[half_out:, half_in:] = 1
            linear.weight.mul_(mask).add_(mask)
    frame = clusterability(mlp, k=2, methods=["spectral"], baseline=False)
    assert frame["clusterability"].tolist() == pytest.approx([1.0, 1.0])


def test_clusterability_frame_on_a_bridge_has_every_mlp_matrix_and_baselines(any_bridge):
    frame = clusterability(any_bridge, k=[2, 4], methods=["blocks", "spectral"])
    n_layers = any_bridge.cfg.n_layers
    roles_per_layer = 3 if any_bridge.cfg.gated_mlp else 2
    assert len(frame) == 2 * 2 * n_layers * roles_per_layer
    assert set(frame["role"]) <= {"W_in", "W_gate", "W_out"}
    blocks = frame[frame["method"] == "blocks"]
    for k in (2, 4):  # i.i.d. weights in equal blocks: about 1/k
        assert blocks[blocks["k"] == k]["chance"].tolist() == pytest.approx([1 / k] * (len(blocks) // 2))
        assert blocks[blocks["k"] == k]["random"].mean() == pytest.approx(1 / k, rel=0.15)
    assert frame["clusterability"].between(0, 1).all()


def test_heads_add_attention_matrices_with_whole_head_groups(any_bridge):
    graph = unit_graph_of(any_bridge)
    clusters = cluster_units(graph, 2, "spectral", heads=True)
    n_groups = graph.axis("blocks.0.attn").n_units
    assert clusters.labels["blocks.0.attn"].shape == (n_groups,)
    frame = clusterability(graph, k=2, methods=["spectral"], heads=True, baseline=False)
    assert {"W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"} <= set(frame["role"])


def test_clusterability_loss_rewards_weight_inside_the_fixed_clusters():
    mlp = BimtMLP((8, 8, 8), seed=0)
    regulariser = ClusterabilityLoss(mlp, ClusterabilityConfig(n_clusters=2))
    before = regulariser.mean_clusterability().item()
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        regulariser.penalty().backward()
        optimizer.step()
    assert regulariser.mean_clusterability().item() > before + 0.3
    assert regulariser.penalty().item() == pytest.approx(-20 * regulariser.mean_clusterability().item())


def test_numpy_cluster_counts_count_and_unknown_methods_are_refused_before_measuring():
    import numpy as np

    mlp = BimtMLP((4, 6, 6, 2), seed=0)
    by_numpy = clusterability(mlp, k=np.int64(3), methods=["blocks"], baseline=False)
    assert by_numpy.equals(clusterability(mlp, k=3, methods=["blocks"], baseline=False))
    several = clusterability(mlp, k=np.arange(2, 4), methods=["blocks"], baseline=False)
    assert several.equals(clusterability(mlp, k=[2, 3], methods=["blocks"], baseline=False))
    assert clusterability(mlp, k=3, methods="blocks", baseline=False).equals(by_numpy)  # one name, not its letters
    for methods in ((), ("blocks", "spectal")):
        with pytest.raises(ValueError, match="choose one or more of"):
            clusterability(mlp, k=3, methods=methods)


def test_an_all_zero_matrix_has_no_clusterability_and_the_loss_leaves_it_out():
    assert torch.isnan(matrix_clusterability(torch.zeros(4, 4), block_labels(4, 2), block_labels(4, 2), 2))
    mlp = BimtMLP((8, 8, 8), seed=0)
    regulariser = ClusterabilityLoss(mlp, ClusterabilityConfig(n_clusters=2))
    second = regulariser.edges[1]
    expected = float(edge_clusterability(second, regulariser.clusters))  # the other matrix's value alone
    with torch.no_grad():
        mlp.linears[0].weight.zero_()
    assert regulariser.mean_clusterability().item() == pytest.approx(expected)
    with torch.no_grad():
        mlp.linears[1].weight.zero_()
    with pytest.raises(ValueError, match="all zero"):
        regulariser.penalty()


def test_clusterability_is_computed_on_the_device_of_the_weights():
    # meta checks devices as CUDA does (only 0-dim CPU tensors mix with it), so it stands in for a GPU here
    mlp = BimtMLP((8, 8, 8), seed=0).to("meta")
    regulariser = ClusterabilityLoss(mlp, ClusterabilityConfig(n_clusters=2))
    values = [edge_clusterability(edge, regulariser.clusters) for edge in regulariser.edges]
    assert [(value.device.type, value.shape) for value in values] == [("meta", torch.Size([]))] * 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_measured_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(512, 128, generator=generator) * 0.02
    matrix[:128, :32] *= 3  # cluster 0 holds more weight: about 0.5 for k = 4
    matrix = matrix.to(dtype)
    labels = block_labels(512, 4), block_labels(128, 4)
    exact = matrix_clusterability(matrix.double(), *labels, 4).item()  # the same weights, summed in float64
    value = matrix_clusterability(matrix, *labels, 4)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize("k", [4, 5, 8])
def test_spectral_cocluster_separates_the_parts_of_an_exactly_disconnected_matrix(k):
    # k parts give singular value 1 k times; a basis of it aligned with the parts put several parts at one point
    matrix = _block_diagonal(k, 3, noise=0.0)
    rows, columns = spectral_cocluster(matrix, k)
    true_labels = torch.arange(k).repeat_interleave(3)
    assert matrix_clusterability(matrix, rows, columns, k).item() == pytest.approx(1.0)
    assert len(set(zip(rows.tolist(), true_labels.tolist()))) == k  # one cluster per part


def test_labels_outside_the_clusters_are_refused():
    matrix = torch.block_diag(*[torch.ones(3, 3)] * 4)
    labels = torch.arange(4).repeat_interleave(3)
    assert matrix_clusterability(matrix, labels, labels, 4).item() == 1.0
    for bad_rows, n_clusters in ((labels, 2), (labels - 2, 4)):  # read 0.5 and 0.0: counted in no cluster
        with pytest.raises(ValueError, match=f"labels must lie in -1 .. {n_clusters - 1}"):
            matrix_clusterability(matrix, bad_rows, labels, n_clusters)


def test_an_embedding_made_for_fewer_clusters_is_refused():
    graph = BimtMLP((16, 16, 16), seed=0).unit_graph()
    embedding = unit_spectral_embedding(graph, 2)  # one singular vector; k = 4 needs two
    with pytest.raises(ValueError, match="up to 2 clusters"):
        cluster_units(graph, 4, "spectral", embedding=embedding)
    assert cluster_units(graph, 2, "spectral", embedding=embedding).n_clusters == 2


def test_an_embedding_of_other_units_is_refused(any_bridge):
    graph = unit_graph_of(any_bridge)
    with_heads = unit_spectral_embedding(graph, 4, heads=True)  # its columns hold the head groups too
    with pytest.raises(ValueError, match="heads"):
        cluster_units(graph, 4, "spectral", heads=False, embedding=with_heads)
