"""Rank and spectrum of a probe point's representation (METRICS.md §3, §5)."""

from __future__ import annotations

import torch
from torch import Tensor

# Re-exported for callers of this module (the `x as x` form marks them public).
from .linalg import eigen as eigen
from .linalg import eigenvalues as eigenvalues
from .linalg import top_eigenvector as top_eigenvector
from .registry import PointStats, point_metric

RANK_TOL = 1e-3


def numerical_rank(eigenvalues: Tensor, tol: float = RANK_TOL) -> int:
    """``#{i : s_i > tol · s_1}`` for covariance eigenvalues ``s`` (METRICS.md §3)."""
    top = eigenvalues.max()
    if not torch.isfinite(top) or top <= 0:
        return 0
    return int((eigenvalues > tol * top).sum())


def pc1_ratio(eigenvalues: Tensor) -> float:
    """Share of variance along the first principal component, ``s_1 / Σ s_i``."""
    clipped = eigenvalues.clamp_min(0)
    total = clipped.sum()
    return float(clipped.max() / total) if total > 0 else float("nan")


def effective_rank(second_moment_eigenvalues: Tensor, n_samples: int | None = None) -> float:
    """RankMe: entropy of the normalised singular values of the uncentred feature matrix.

    Takes the eigenvalues of ``Hᵀ H`` (``H`` is ``N x D``); singular values are the square
    roots of the largest ``min(N, D)`` of them. ``p_i = σ_i / Σ σ_j + 1e-7``,
    ``erank = exp(-Σ p_i log p_i)``.
    """
    vals = torch.sort(second_moment_eigenvalues, descending=True).values
    if n_samples is not None:
        vals = vals[: min(n_samples, len(vals))]
    sigma = vals.clamp_min(0).sqrt()
    total = sigma.sum()
    if total <= 0:
        return float("nan")
    p = sigma / total + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


def pc1_cos2(first_components: dict[str, Tensor]) -> dict[tuple[str, str], float]:
    """Squared cosine between the PC1 directions of every pair of points of equal width."""
    out = {}
    names = list(first_components)
    for a in names:
        for b in names:
            u, v = first_components[a], first_components[b]
            out[(a, b)] = float((u @ v) ** 2 / ((u @ u) * (v @ v))) if u.shape == v.shape else float("nan")
    return out


@point_metric("rank", "numerical rank of the centred covariance (eigenvalues > 1e-3 · s1)", default=True)
def _rank(stats: PointStats) -> float:
    return numerical_rank(stats.covariance_eigenvalues)


@point_metric("erank", "effective rank (RankMe) of the uncentred features", default=True)
def _erank(stats: PointStats) -> float:
    return effective_rank(stats.second_moment_eigenvalues, stats.moments.count)


@point_metric("pc1", "share of variance on PC1, and squared cosine of PC1 between points", default=True,
              pair_vector=lambda stats: stats.pc1, pairs=pc1_cos2, pairs_row="pc1_cos2")
def _pc1(stats: PointStats) -> float:
    return pc1_ratio(stats.covariance_eigenvalues)
