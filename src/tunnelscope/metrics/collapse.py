"""Neural collapse at every probe point (METRICS.md §6; Papyan et al. 2020, Galanti et al.)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..features import point_views
from ..summary import EFFECTIVE_DEPTH
from .base import PointAccuracy
from .moments import PointMoments
from .registry import Metric, Options, PointStats, Presentation, point_metric, register

PINV_RTOL = 1e-15 ** 0.5


def nc1(m: PointMoments) -> float:
    """``tr(Σ_W Σ_B⁺) / C`` over the classes present.

    ``Σ_W = (1/N) Σ_c Σ_{i∈c} (h_i - μ_c)(h_i - μ_c)ᵀ``, ``Σ_B = (1/C) Σ_c (μ_c - μ)(μ_c - μ)ᵀ``
    with ``μ`` the global mean. With ``M`` the ``D x C`` matrix of ``μ_c - μ``,
    ``Σ_B⁺ = C (M⁺)ᵀ M⁺``, so only a ``C x C`` pseudo-inverse is needed.
    """
    keep = m.present()
    c = int(keep.sum())
    if c < 2:
        return float("nan")
    dev = (m.class_means()[keep] - m.mean()).T  # D x C
    # M always has a null direction (Σ n_c (μ_c - μ) = 0) that rounding makes ~eps·|μ| instead of 0.
    # Singular values of M below sqrt(1e-15)·s_max are dropped: the same cut as numpy's default
    # pinv(Σ_B) (eigenvalues below 1e-15·λ_max), since Σ_B's eigenvalues are M's squared / C.
    pinv = torch.linalg.pinv(dev, rtol=PINV_RTOL)  # C x D
    # tr(Σ_W Σ_B⁺) / C = tr(Σ_W · C (M⁺)ᵀ M⁺) / C = tr(M⁺ Σ_W (M⁺)ᵀ), Σ_W = S_W / N
    return float(torch.trace(m.within_projected(pinv)) / m.n)


def cdnv(m: PointMoments) -> float:
    """Mean over class pairs of ``(Var_i + Var_j) / (2 ‖μ_i - μ_j‖²)``."""
    keep = m.present()
    if int(keep.sum()) < 2:
        return float("nan")
    var = m.class_variances()[keep]
    means = m.class_means()[keep]
    i, j = torch.triu_indices(len(var), len(var), offset=1)
    dist2 = ((means[i] - means[j]) ** 2).sum(1)
    return float(((var[i] + var[j]) / (2 * dist2)).mean())


class NCCAccuracy(PointAccuracy):
    """Nearest-class-centre accuracy per point, with class means fixed beforehand (from train).

    ``argmin_c ‖h - μ_c‖`` over the classes present in the means; a sample whose class has
    no mean counts as an error. Distances are taken relative to the mean of the class
    means, in ``dtype`` (float64 by default; float32 changes a decision only at ties
    closer than float32 rounding).
    """

    def __init__(self, means: dict[str, Tensor], dtype: torch.dtype = torch.float64) -> None:
        first = next(iter(means.values()), None)  # none when no point has finite features: every row NaN
        super().__init__(list(means), first.device if first is not None else torch.device("cpu"))
        self.dtype = dtype
        self.means = {k: v.double() for k, v in means.items()}
        # argmin_c ‖x - μ_c‖² = argmin_c (‖μ_c - r‖² - 2 (x - r)ᵀ(μ_c - r)) for any r; r = mean of the μ_c
        self._terms: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for name, mu in self.means.items():
            ok = torch.isfinite(mu).all(1)
            ref = mu[ok].mean(0)
            centred = torch.where(ok[:, None], mu - ref, torch.zeros_like(mu))
            norms = torch.where(ok, (centred * centred).sum(1), torch.full_like(ok, float("inf"), dtype=mu.dtype))
            self._terms[name] = (ref.to(dtype), (2 * centred).T.contiguous().to(dtype), norms.to(dtype))

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        self.seen += len(labels)
        views = point_views(features, self.dtype)
        for name, (ref, twice_centred_t, norms) in self._terms.items():
            xs = views[name] - ref
            self.correct[name] += ((norms - xs @ twice_centred_t).argmin(1) == labels).sum()


def effective_depth(ncc_train_error: list[float], eps: float = 0.01) -> int | None:
    """1-based index of the first point whose NCC train error is ``<= eps``; None if none."""
    for i, err in enumerate(ncc_train_error, start=1):
        if err == err and err <= eps:
            return i
    return None


@point_metric("nc1", "neural collapse NC1 = tr(Σ_W Σ_B⁺)/C", default=True,
              shown=Presentation("nc1", "NC1 = tr(Σ_W Σ_B⁺)/C", bounds=(0, None), direction="lower", log_scale=True,
                                 figure="collapse"))
def _nc1(stats: PointStats) -> float:
    return nc1(stats.moments)


@point_metric("cdnv", "class-distance normalised variance", moments="means", default=True,
              shown=Presentation("cdnv", "CDNV", bounds=(0, None), direction="lower", log_scale=True,
                                 figure="collapse"))
def _cdnv(stats: PointStats) -> float:
    return cdnv(stats.moments)


@point_metric("trace_w", "tr Σ_W, the within-class variance (mean squared distance to the class mean)",
              moments="means", shown=Presentation("trace_w", "tr Σ_W (within-class variance)", bounds=(0, None)))
def trace_w(stats: PointStats) -> float:
    """``tr Σ_W = (1/N) Σ_c n_c Var_c``, from class counts and norms only (no ``D x D`` state)."""
    m = stats.moments
    keep = m.present()
    return float((m.cn[keep] * m.class_variances()[keep]).sum() / m.n)


@point_metric("trace_b", "tr Σ_B, the between-class variance (mean over classes of ‖μ_c - μ‖²)", moments="means",
              shown=Presentation("trace_b", "tr Σ_B (between-class variance)", bounds=(0, None)))
def trace_b(stats: PointStats) -> float:
    """``tr Σ_B = (1/C) Σ_c ‖μ_c - μ‖²`` over the classes present (Σ_B as in :func:`nc1`)."""
    m = stats.moments
    keep = m.present()
    return float(((m.class_means()[keep] - m.mean()) ** 2).sum(1).mean())


def effective_depth_summary(train_accuracy: dict[str, float], points: list[str], eps: float) -> dict:
    """The summary's effective depth (Galanti et al.): the first of ``points`` whose NCC train
    error is at most ``eps``, and its name; None for both when no NCC accuracy was measured."""
    depth = effective_depth([1 - train_accuracy[p] for p in points], eps) if train_accuracy else None
    return {EFFECTIVE_DEPTH: depth, "effective_depth_point": points[depth - 1] if depth else None, "ncc_eps": eps}


def _effective_depth_summary(values: dict[str, dict[str, float]], points: list[str], options: Options) -> dict:
    return effective_depth_summary(values["train"], points, options.eps)


register(Metric(
    "ncc", "nearest-class-centre accuracy on train and test (class means from train)", row="ncc_acc",
    readout=lambda train, opts: NCCAccuracy({n: s.moments.class_means() for n, s in train.items()}, opts.matmul_dtype),
    readout_moments="means", summarise=_effective_depth_summary, options=(("eps", "ncc_eps"),),
    shown=Presentation("ncc_acc", "nearest-class-centre accuracy", bounds=(0, 1), direction="higher",
                       figure="collapse", terminal=True, short="NCC")))

__all__ = ["NCCAccuracy", "cdnv", "effective_depth", "effective_depth_summary", "nc1", "trace_b", "trace_w"]
