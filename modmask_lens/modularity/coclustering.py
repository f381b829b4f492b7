"""Spectral co-clustering of a bipartite graph (Dhillon 2001), with the rows and columns clustered *together*.

Dhillon, "Co-clustering documents and words using bipartite spectral graph partitioning" (KDD 2001), as in
scikit-learn's ``SpectralCoclustering``: normalise the non-negative affinity ``A`` to ``D_r^{-1/2} A D_c^{-1/2}`` (row
and column sums), take its singular vectors 2 .. l+1 with ``l = ceil(log2 k)``, scale them back by ``D^{-1/2}``, stack
rows and columns into one point set, and run one k-means on it. Cluster c is then the rows *and* columns labelled c,
so the pairing of row and column clusters is part of the result (the clusterability reference code instead k-means
the two sides separately, which pairs its clusters arbitrarily).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


def kmeans(
    points: Float[Tensor, "n dim"], k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300
) -> Int[Tensor, " n"]:
    """Lloyd's k-means with k-means++ seeding; the labelling with the lowest inertia over ``n_init`` restarts.

    Deterministic for a given ``seed``. Defaults as scikit-learn's ``SpectralCoclustering`` (``n_init=10``; its
    ``KMeans`` ``max_iter=300``; ``KMeans`` alone now defaults to one k-means++ start).
    """
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k={k}: choose between 1 and the number of points ({points.shape[0]})")
    generator = torch.Generator().manual_seed(seed)
    best_labels, best_inertia = None, math.inf
    for _ in range(n_init):
        centres = _kmeans_plus_plus(points, k, generator)
        for _ in range(max_iter):
            labels = torch.cdist(points, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            counts = torch.bincount(labels, minlength=k)[:, None]
            updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
            if torch.equal(updated, centres):
                break
            centres = updated
        labels = torch.cdist(points, centres).argmin(1)
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def _kmeans_plus_plus(points: Float[Tensor, "n dim"], k: int, generator: torch.Generator) -> Float[Tensor, "k dim"]:
    """Arthur & Vassilvitskii 2007: each next centre drawn with probability proportional to squared distance."""
    centres = [points[torch.randint(points.shape[0], (1,), generator=generator)].squeeze(0)]
    for _ in range(k - 1):
        squared = torch.cdist(points, torch.stack(centres)).min(1).values ** 2
        if float(squared.sum()) == 0.0:  # fewer distinct points than k: repeat one
            centres.append(centres[-1])
            continue
        centres.append(points[torch.multinomial(squared, 1, generator=generator)].squeeze(0))
    return torch.stack(centres)


@dataclass(frozen=True, eq=False)
class BipartiteSpectralEmbedding:
    """Dhillon's embedding of the rows and columns of an affinity matrix, computed once for several k.

    Attributes:
        rows: ``D_r^{-1/2} U[:, 1:]``, one point per row.
        columns: ``D_c^{-1/2} V[:, 1:]``, one point per column.
        max_k: the most clusters it has vectors for.
    """

    rows: Float[Tensor, "n_rows vector"]
    columns: Float[Tensor, "n_columns vector"]
    max_k: int

    @classmethod
    def of(cls, affinity: Float[Tensor, "n_rows n_columns"], max_k: int) -> BipartiteSpectralEmbedding:
        """Embed the rows and columns of a non-negative ``affinity`` with enough vectors for up to ``max_k`` clusters.

        Rows or columns with no weight at all get a tiny degree instead of a division by zero. A matrix of m
        disconnected parts has its top singular value m times, and LAPACK returns a basis of that subspace aligned
        with the parts, so dropping the first vector puts several parts at one point; a seeded rotation of the
        subspace (the same for rows and columns, so the product is unchanged) makes every part a point of its own,
        as scikit-learn's randomized SVD does.
        """
        if (affinity < 0).any():
            raise ValueError("affinity must be non-negative; pass |W| (or a root of summed squares), not W")
        affinity = affinity.double()
        row_scale = affinity.sum(1).clamp_min(1e-12).rsqrt()
        column_scale = affinity.sum(0).clamp_min(1e-12).rsqrt()
        left, singular_values, right_t = torch.linalg.svd(
            row_scale[:, None] * affinity * column_scale[None, :], full_matrices=False
        )
        n_repeated = int(torch.isclose(singular_values, singular_values[0], rtol=1e-9, atol=0.0).sum())
        if n_repeated > 1:
            generator = torch.Generator().manual_seed(0)
            rotation, _ = torch.linalg.qr(torch.randn(n_repeated, n_repeated, generator=generator, dtype=torch.float64))
            left = torch.cat([left[:, :n_repeated] @ rotation, left[:, n_repeated:]], dim=1)
            right_t = torch.cat([rotation.T @ right_t[:n_repeated], right_t[n_repeated:]])
        n_vectors = min(1 + _n_vectors(max_k), left.shape[1])
        return cls(
            rows=row_scale[:, None] * left[:, 1:n_vectors],
            columns=column_scale[:, None] * right_t[1:n_vectors].T,
            max_k=max_k,
        )

    def cocluster(self, k: int, seed: int = 0) -> tuple[Int[Tensor, " n_rows"], Int[Tensor, " n_columns"]]:
        """Cluster labels in ``0 .. k-1`` of every row and column: one k-means on the stacked points.

        Raises:
            ValueError: ``k`` above :attr:`max_k` (the embedding lacks the vectors that k needs).
        """
        if k > self.max_k:
            raise ValueError(
                f"k={k}: this embedding has vectors for up to {self.max_k} clusters; compute it again for {k} or more"
            )
        points = torch.cat([self.rows, self.columns])[:, : _n_vectors(k)]
        labels = kmeans(points, k, seed=seed)
        return labels[: self.rows.shape[0]], labels[self.rows.shape[0] :]


def _n_vectors(k: int) -> int:
    """Dhillon's ``l = ceil(log2 k)`` singular vectors (after the first) for k clusters."""
    return max(1, math.ceil(math.log2(k)))


def spectral_cocluster(
    affinity: Float[Tensor, "n_rows n_columns"], k: int, seed: int = 0
) -> tuple[Int[Tensor, " n_rows"], Int[Tensor, " n_columns"]]:
    """Dhillon's spectral co-clustering of a non-negative matrix into ``k`` paired row/column clusters.

    Example:
        >>> rows, columns = spectral_cocluster(weight.abs(), k=4)          # doctest: +SKIP
    """
    return BipartiteSpectralEmbedding.of(affinity, k).cocluster(k, seed)
