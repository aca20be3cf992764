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
from dataclasses import dataclass

import numpy as np

from .summary import MEAN_RETAINED, start_key
from .tunnel import PEARSON_MIN_POINTS

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


DRAW_CHUNK = 16  # resamples drawn at a time by Resamples.draw


@dataclass
class Resamples:
    """One bootstrap draw shared by every metric of a dataset: for each resample, the probe seed
    it uses and how often each test row is drawn (``counts``, ``(B, M)``)."""

    seeds: np.ndarray
    counts: np.ndarray

    @classmethod
    def draw(cls, seeds: int, rows: int, resamples: int, rng: np.random.Generator) -> Resamples:
        """A seed uniformly and ``rows`` test rows with replacement, per resample: the counts of
        ``rows`` uniform draws (multinomial with equal probabilities, drawn 8x faster than by
        ``rng.multinomial``, which draws one binomial per row)."""
        chosen = rng.integers(0, seeds, resamples)
        counts = np.empty((resamples, rows))
        for lo in range(0, resamples, DRAW_CHUNK):  # a few resamples at a time: the draws stay in cache
            n = min(DRAW_CHUNK, resamples - lo)
            draws = rng.integers(0, rows, (n, rows))
            draws += rows * np.arange(n)[:, None]
            counts[lo:lo + n] = np.bincount(draws.ravel(), minlength=n * rows).reshape(n, rows)
        return cls(chosen, counts)

    def curves(self, mats: Sequence[np.ndarray]) -> np.ndarray:
        """``(B, L)`` accuracy curves of the resamples from per-seed ``(M, L)`` matrices."""
        m = self.counts.shape[1]
        out = np.empty((len(self.seeds), mats[0].shape[1]))
        for k, mat in enumerate(mats):  # every resample's product, then this seed's rows: no copy of counts
            rows = self.seeds == k
            out[rows] = (self.counts @ mat)[rows] / m
        return out


def _matrices(correct: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float64) for c in correct]


def resampled_curves(correct: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                     rng: np.random.Generator | None = None) -> tuple[np.ndarray, Resamples | None]:
    """``(resamples, L)`` accuracy curves from per-seed correctness matrices ``(M, L)`` (bool),
    and the draw behind them (None without test rows)."""
    rng = rng or np.random.default_rng(0)
    mats = _matrices(correct)
    m, width = mats[0].shape
    if m == 0:
        return np.full((resamples, width), np.nan), None
    draw = Resamples.draw(len(mats), m, resamples, rng)
    return draw.curves(mats), draw


def curve_samples(correct: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """``(resamples, L)`` accuracy curves from per-seed correctness matrices ``(M, L)`` (bool).

    Each resample picks a seed uniformly and ``M`` test rows with replacement."""
    return resampled_curves(correct, resamples, rng)[0]


CROSSFIT_SPLITS = 5  # random halvings averaged: the selection's own noise averaged out of the estimate
CROSSFIT_STREAM = 0x63726F7373  # mixed into the seed: the halvings share no stream with the bootstrap


def crossfit_folds(rows: int, seed: int, splits: int = CROSSFIT_SPLITS) -> np.ndarray:
    """``(splits, rows)`` 0/1: ``splits`` seeded random halvings of the test rows."""
    rng = np.random.default_rng([seed, CROSSFIT_STREAM])
    folds = np.zeros((splits, rows), dtype=np.int8)
    for k in range(splits):
        folds[k, rng.permutation(rows)[: rows // 2]] = 1
    return folds


def _crossfit_rows(mat: np.ndarray, weights: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Cross-fitted % retained of each row of ``weights`` (``(B, M)``) on one ``(M, L)`` matrix.

    Every half's weighted correct counts and weight totals come from one product of ``weights``
    with the halves' masked columns (``(M, 2·splits·(L + 1))``), not from ``2·splits`` masked
    copies of ``weights``: the same integer sums, exactly."""
    width = mat.shape[1]
    masks = np.concatenate([folds == f for f in (0, 1)])  # (2·splits, M): half f of halving k at f·splits + k
    columns = np.concatenate([np.column_stack([mat * m[:, None], m]) for m in masks], axis=1)
    sums = (weights @ columns).reshape(len(weights), len(masks), width + 1)
    total = np.zeros(len(weights))
    for k in range(len(folds)):
        halves = [sums[:, f * len(folds) + k, :width] / np.maximum(sums[:, f * len(folds) + k, width:], 1e-12)
                  for f in (0, 1)]
        for f in (0, 1):
            chosen = halves[1 - f].argmax(1)  # the best layer, chosen on the other half
            best = halves[f][np.arange(len(weights)), chosen]
            with np.errstate(invalid="ignore", divide="ignore"):
                total += np.where(best > 0, 100 * halves[f][:, -1] / best, np.nan)
    return total / (2 * len(folds))


def crossfit_retained(correct: Sequence[np.ndarray], folds: np.ndarray, draw: Resamples | None = None
                      ) -> np.ndarray:
    """% OOD retained with the best layer chosen apart from where it is scored (cross-fitting).

    For each halving of the test rows, the best layer is chosen on one half and its accuracy
    and the penultimate point's are taken on the other, both ways round; the ratios are
    averaged over halves and halvings. The plug-in ``100 · a_p / max_l a_l`` chooses and scores
    the best layer on the same rows, so its maximum is biased upwards where the top of the
    curve is flat or tied (the winner's curse) and % retained downwards. ``correct`` are the
    per-seed ``(M, L)`` matrices of points 1 … penultimate. Without ``draw``: the estimate
    (seeds averaged), shape ``(1,)``; with it: one value per resample."""
    mats = _matrices(correct)
    if draw is None:
        return _crossfit_rows(np.mean(mats, axis=0), np.ones((1, mats[0].shape[0])), folds)
    out = np.empty(len(draw.seeds))
    for k, mat in enumerate(mats):
        rows = draw.seeds == k
        out[rows] = _crossfit_rows(mat, draw.counts if rows.all() else draw.counts[rows], folds)
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


def accuracy_interval(correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of an accuracy of ``correct`` out of ``total``: its coverage is at
    least ``level`` for every true accuracy, near 0 and 1 too, where a percentile bootstrap of a
    small test set covers less (NaN, NaN for no sample)."""
    from scipy.stats import beta

    if total <= 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    lo = 0.0 if correct == 0 else float(beta.ppf(tail, correct, total - correct + 1))
    hi = 1.0 if correct == total else float(beta.ppf(1 - tail, correct + 1, total - correct))
    return lo, hi


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
                     taus: Sequence[float] = (0.95, 0.98), level: float = LEVEL,
                     retained_samples: dict[str, np.ndarray] | None = None) -> dict:
    """Intervals of the tunnel's metrics from resampled curves (points ``1 … penultimate``).

    ``id_curves`` is ``(B, L)``; ``ood`` maps a name to ``((B, L) curves, classes)``;
    ``retained_samples`` (by name, ``(B,)``) replaces the plug-in % retained of the resampled
    curves (the cross-fitted one, :func:`crossfit_retained`). Returns ``{"tunnel_start@τ": [lo,
    hi], ..., "mean_retained": [lo, hi], "ood": {name: {"retained", "pearson", "alignment"}:
    [lo, hi]}}``."""
    def pair(values: np.ndarray) -> list[float]:
        lo, hi = interval(values[:, None], level)
        return [float(lo[0]), float(hi[0])]

    out: dict = {}
    for tau in taus:
        out[start_key(tau)] = pair(tunnel_starts(id_curves, tau).astype(np.float64))
    out["ood"] = {}
    kept = []
    for name, (curves, classes) in ood.items():
        r = retained_samples[name] if retained_samples and name in retained_samples else retained(curves)
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


__all__ = ["CROSSFIT_SPLITS", "DEFAULT_RESAMPLES", "LEVEL", "Resamples", "accuracy_interval", "crossfit_folds",
           "crossfit_retained", "curve_samples", "interval", "mean_ci", "pearson_rows", "resampled_curves", "retained",
           "tunnel_intervals", "tunnel_starts"]
