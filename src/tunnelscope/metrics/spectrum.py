"""Rank and spectrum of a probe point's representation (METRICS.md §3, §5)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..features import point_views
from .base import Accumulator

# Re-exported for callers of this module (the `x as x` form marks them public).
from .linalg import RANK_TOL as RANK_TOL
from .linalg import eigen as eigen
from .linalg import eigenvalues as eigenvalues
from .linalg import numerical_rank as numerical_rank
from .linalg import pc1_ratio as pc1_ratio
from .linalg import top_eigenvector as top_eigenvector
from .registry import Metric, Options, PointStats, Presentation, point_metric, register


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


class PC1Similarity(Accumulator):
    """Nguyen et al.'s cross-layer PC1 similarity: ``|cos|`` between the PC1 *scores* of every
    pair of points over the examples of one split.

    Each point's features are centred by a fitted mean and projected on its fitted PC1
    direction (both from the training split), giving one score per example; the scores of
    two points are compared by the absolute cosine of their centred score vectors, so
    points of any widths compare. On the split the directions were fitted on, this is the
    cosine between the first left singular vectors of the centred feature matrices.
    """

    def __init__(self, directions: dict[str, tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.names = list(directions)
        self.directions = {k: (mu.double(), v.double()) for k, (mu, v) in directions.items()}
        device = next(iter(self.directions.values()))[0].device if directions else "cpu"
        count = len(self.names)
        # a score is x·v − μ·v: the features are projected as they are, with no centred copy
        self.offsets = torch.tensor([float(mu @ v) for mu, v in self.directions.values()], dtype=torch.float64,
                                    device=device)
        self.total = torch.zeros(count, dtype=torch.float64, device=device)
        self.gram = torch.zeros(count, count, dtype=torch.float64, device=device)
        self.seen = 0
        self.add_state("total", self.total)
        self.add_state("gram", self.gram)
        self.add_state("seen", 0)

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        if not self.names:
            return
        views = point_views(features, torch.float64)
        scores = torch.stack([views[n] @ v for n, (_, v) in self.directions.items()], dim=1).sub_(self.offsets)
        self.total += scores.sum(0)
        self.gram += scores.T @ scores
        self.seen += len(labels)

    def compute(self) -> dict[tuple[str, str], float]:
        """``|cos|`` of the centred score vectors for every ordered pair of points (NaN for a
        point whose scores do not vary)."""
        mean = self.total / self.seen
        cov = self.gram / self.seen - torch.outer(mean, mean)
        scale = cov.diagonal().clamp_min(0).sqrt()
        sim = (cov.abs() / torch.outer(scale, scale)).clamp_max(1.0)
        sim = torch.where(torch.outer(scale, scale) > 0, sim, torch.full_like(sim, float("nan")))
        return {(a, b): float(sim[i, j]) for i, a in enumerate(self.names) for j, b in enumerate(self.names)}


def _pc1_directions(train: dict[str, PointStats], options: Options) -> PC1Similarity:
    """PC1 directions and means of the training split (points with non-finite features get none)."""
    return PC1Similarity({name: (stats.moments.mean(), stats.pc1) for name, stats in train.items()
                          if int(stats.moments.nonfinite) == 0})


@point_metric("rank", "numerical rank of the centred covariance (eigenvalues > 1e-3 · s1)", default=True,
              shown=Presentation("rank", "numerical rank (eigenvalues > 1e-3·s₁)", bounds=(1, None), direction="higher",
                                 log_scale=True, figure="rank", terminal=True, digits=0))
def _rank(stats: PointStats) -> float:
    return stats.covariance_rank(RANK_TOL)


@point_metric("erank", "effective rank (RankMe) of the uncentred features", default=True,
              shown=Presentation("erank", "effective rank (RankMe)", bounds=(1, None), direction="higher",
                                 log_scale=True, figure="rank", digits=1))
def _erank(stats: PointStats) -> float:
    return effective_rank(stats.second_moment_eigenvalues, stats.moments.count)


@point_metric("pc1", "share of variance on the first principal component", default=True,
              shown=Presentation("pc1", "variance share of PC1", bounds=(0, 1), direction="higher", figure="pc1"))
def _pc1(stats: PointStats) -> float:
    return stats.pc1_share


register(Metric(
    "pc1_sim", "|cos| between the PC1 scores of every pair of points (Nguyen et al.), train and test",
    readout=_pc1_directions, readout_moments="scatter", pairwise=True, default=True,
    shown=Presentation("pc1_sim", "|cos| of PC1 scores", shape="matrix", bounds=(0, 1), figure="pc1")))
