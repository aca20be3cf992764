"""Confidence intervals: the bootstrap for one run's probe accuracies and tunnel metrics, and
Student-t intervals for a mean over training seeds.

The probes are trained once; what varies under resampling is which test samples they are
scored on. Each resample draws the test samples of every dataset with replacement
(independently per dataset, the same draw for every point of a dataset, so that a curve
stays a curve), and, when several probe seeds were trained, one seed per resample (a
two-level bootstrap). Every metric is recomputed on each resample; its interval is the
percentile interval of the resampled values (``inverted_cdf``, so an integer metric such as
the tunnel start gets integer bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .summary import MEAN_RETAINED, start_key
from .tunnel import PEARSON_MIN_POINTS

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


def curve_samples(correct: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """``(resamples, L)`` accuracy curves from per-seed correctness matrices ``(M, L)`` (bool).

    Each resample picks a seed uniformly and ``M`` test rows with replacement."""
    rng = rng or np.random.default_rng(0)
    mats = [np.asarray(c, dtype=np.float64) for c in correct]
    m, width = mats[0].shape
    if m == 0:
        return np.full((resamples, width), np.nan)
    seeds = rng.integers(0, len(mats), resamples)
    counts = rng.multinomial(m, np.full(m, 1.0 / m), size=resamples).astype(np.float64)  # (B, M)
    out = np.empty((resamples, width))
    for k, mat in enumerate(mats):
        rows = seeds == k
        out[rows] = counts[rows] @ mat / m
    return out


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN resamples (NaN where all are NaN)."""
    samples = np.asarray(samples, dtype=np.float64)
    tail = 100 * (1 - level) / 2
    finite = np.isfinite(samples)
    lo = np.full(samples.shape[1:], np.nan)
    hi = np.full(samples.shape[1:], np.nan)
    flat_ok = finite.reshape(len(samples), -1)
    flat = samples.reshape(len(samples), -1)
    lo_f, hi_f = lo.reshape(-1), hi.reshape(-1)
    for j in range(flat.shape[1]):
        values = flat[flat_ok[:, j], j]
        if len(values):
            lo_f[j], hi_f[j] = np.percentile(values, [tail, 100 - tail], method="inverted_cdf")
    return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)


def tunnel_starts(curves: np.ndarray, tau: float) -> np.ndarray:
    """The 1-based tunnel start of every row of ``curves`` (METRICS.md §3)."""
    return np.argmax(curves >= tau * curves[:, -1:], axis=1) + 1


def retained(curves: np.ndarray) -> np.ndarray:
    """% OOD retained of every row: ``100 · last / max`` (NaN where the maximum is 0)."""
    best = curves.max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, 100 * curves[:, -1] / best, np.nan)


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows; NaN where either row is constant, and everywhere for
    rows shorter than :data:`~tunnelscope.tunnel.PEARSON_MIN_POINTS`."""
    if a.shape[1] < PEARSON_MIN_POINTS:
        return np.full(len(a), np.nan)
    da, db = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((da * da).sum(1) * (db * db).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (da * db).sum(1) / norm, np.nan)


def tunnel_intervals(id_curves: np.ndarray, classes_id: int, ood: dict[str, tuple[np.ndarray, int]],
                     taus: Sequence[float] = (0.95, 0.98), level: float = LEVEL) -> dict:
    """Intervals of the tunnel's metrics from resampled curves (points ``1 … penultimate``).

    ``id_curves`` is ``(B, L)``; ``ood`` maps a name to ``((B, L) curves, classes)``. Returns
    ``{"tunnel_start@τ": [lo, hi], ..., "mean_retained": [lo, hi], "ood": {name: {"retained",
    "pearson", "alignment"}: [lo, hi]}}``."""
    def pair(values: np.ndarray) -> list[float]:
        lo, hi = interval(values[:, None], level)
        return [float(lo[0]), float(hi[0])]

    out: dict = {}
    for tau in taus:
        out[start_key(tau)] = pair(tunnel_starts(id_curves, tau).astype(np.float64))
    out["ood"] = {}
    kept = []
    for name, (curves, classes) in ood.items():
        r = retained(curves)
        kept.append(r)
        align = (id_curves[:, -1] - 1 / classes_id) * (curves[:, -1] - 1 / classes)
        out["ood"][name] = {"retained": pair(r), "pearson": pair(pearson_rows(id_curves, curves)),
                            "alignment": pair(align)}
    if kept:
        out[MEAN_RETAINED] = pair(np.mean(kept, axis=0))
    return out


def mean_ci(values, level: float = LEVEL) -> tuple[float, float]:
    """Mean of finite ``values`` and the half-width of its Student-t interval (0 for one value;
    NaN for none): the spread over training seeds."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), 0.0
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


__all__ = ["DEFAULT_RESAMPLES", "mean_ci", "LEVEL", "curve_samples", "interval", "pearson_rows", "retained",
           "tunnel_intervals", "tunnel_starts"]
