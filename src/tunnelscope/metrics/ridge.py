"""A closed-form ridge probe from streamed moments: a fast proxy for linear probes.

Least squares on one-hot targets with an intercept, ``W = (Σ + λI)⁻¹ Cov(h, y)``, where
``Cov(h, y_c) = (n_c / N)(μ_c - μ)`` comes from the class means and ``λ = ridge · tr(Σ)/D``.
Scores ``(h - μ) W + p`` (``p`` the class priors); the prediction is their argmax. Never
the default probe: METRICS.md §2 keeps trained softmax probes for that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..features import point_views
from .base import PointAccuracy
from .moments import PointMoments
from .registry import Metric, Options, PointStats, Presentation, register

DEFAULT_RIDGE = 1e-3


def ridge_weights(m: PointMoments, ridge: float = DEFAULT_RIDGE) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, μ, p)`` of the ridge probe fitted to a point's training moments. A point whose
    features do not vary (``tr Σ = 0``) gets ``W = 0``: its scores are the class priors."""
    n, d = m.n, m.dims
    prior = m.cn / n
    means = torch.nan_to_num(m.class_means() - m.mean())  # μ_c - μ (zero for absent classes)
    cross = (means * prior[:, None]).T  # D x C
    if m.rows is not None:  # wider than the samples: Σ = XᵀX with X = rows/√n, solved on the N x N side
        gram = m.gram() / n  # XXᵀ (a new tensor: the cached Gram stays as it is)
        lam = ridge * torch.trace(gram) / d
        if not lam > 0:
            return torch.zeros_like(cross), m.mean(), prior
        x = m.centred_rows() / n.sqrt()
        gram.diagonal().add_(lam)
        # (XᵀX + λI)⁻¹ B = (B - Xᵀ (XXᵀ + λI)⁻¹ X B) / λ  (Woodbury)
        return (cross - x.T @ torch.linalg.solve(gram, x @ cross)) / lam, m.mean(), prior
    cov = m.scatter() / n
    lam = ridge * torch.trace(cov) / d
    if not lam > 0:  # constant features (a dead layer): nothing to fit, the probe predicts the prior
        return torch.zeros_like(cross), m.mean(), prior
    w = torch.linalg.solve(cov + lam * torch.eye(d, dtype=cov.dtype, device=cov.device), cross)
    return w, m.mean(), prior


class RidgeAccuracy(PointAccuracy):
    """Accuracy of fixed ridge probes per point on a stream of batches, scored in ``dtype``."""

    def __init__(self, probes: dict[str, tuple[Tensor, Tensor, Tensor]], dtype: torch.dtype = torch.float64) -> None:
        first = next(iter(probes.values()), None)  # none when no point has finite features: every row NaN
        super().__init__(list(probes), first[0].device if first is not None else torch.device("cpu"))
        self.dtype = dtype
        self.probes = {k: tuple(t.to(dtype) for t in v) for k, v in probes.items()}

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        self.seen += len(labels)
        views = point_views(features, self.dtype)
        for name, (w, mu, prior) in self.probes.items():
            scores = (views[name] - mu) @ w + prior
            self.correct[name] += (scores.argmax(1) == labels).sum()


def _ridge_readout(train: dict[str, PointStats], options: Options) -> RidgeAccuracy:
    """Ridge probes fitted on each point's training moments (points with non-finite features get none)."""
    def weights(stats: PointStats) -> tuple[Tensor, Tensor, Tensor]:
        return stats.once(("ridge", options.ridge), lambda: ridge_weights(stats.moments, options.ridge))

    probes = {n: weights(s) for n, s in train.items() if int(s.moments.nonfinite) == 0}
    return RidgeAccuracy(probes, options.matmul_dtype)


register(Metric("ridge", "closed-form ridge probe accuracy from the moments (a fast proxy, not a trained probe)",
                row="ridge_acc", readout=_ridge_readout, readout_moments="scatter", options=(("alpha", "ridge"),),
                shown=Presentation("ridge_acc", "ridge probe accuracy (closed-form proxy)", bounds=(0, 1),
                                   direction="higher")))
