"""The tunnel's metrics from per-layer probe accuracies (METRICS.md §3, §4).

Every function takes accuracy curves ordered by probe point, ``1 … penultimate``, as
fractions in [0, 1] (or percentages: only ratios and correlations are taken, except in
:func:`alignment`, which needs fractions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr

from .errors import ConfigError
from .summary import MEAN_RETAINED, STRENGTH, length_key, start_key

Curve = Sequence[float] | np.ndarray
"""An accuracy curve, one value per probe point: a sequence of floats or a 1-D array."""

STRENGTHS = ((95.0, "negligible"), (90.0, "weak"), (80.0, "medium"), (-math.inf, "strong"))


def _curve(acc: Curve, name: str) -> np.ndarray:
    values = np.asarray(acc, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D sequence of accuracies, one per probe point")
    if not np.isfinite(values).all():
        raise ConfigError(f"{name} holds NaN or Inf (a probe that diverged?): {values.tolist()}")
    return values


def tunnel_start(acc_id: Curve, tau: float = 0.95) -> int:
    """``l* = min{l : acc_ID(l) >= τ · acc_ID(penultimate)}``, 1-based."""
    values = _curve(acc_id, "acc_id")
    if not 0 < tau <= 1:
        raise ConfigError(f"tau must be in (0, 1], got {tau}")
    return int(np.argmax(values >= tau * values[-1])) + 1


def tunnel_length(acc_id: Curve, tau: float = 0.95) -> int:
    """Number of probe points after the tunnel start (0: no tunnel)."""
    return len(_curve(acc_id, "acc_id")) - tunnel_start(acc_id, tau)


def ood_retained(acc_ood: Curve) -> tuple[float, int]:
    """``(r, l_m)``: ``r = 100 · a_p / a_m`` with ``a_m = max_l acc_OOD(l)`` at ``l_m`` (1-based,
    the first maximum) and ``a_p = acc_OOD(penultimate)``. ``r = 100`` means no tunnel."""
    values = _curve(acc_ood, "acc_ood")
    best = int(np.argmax(values))
    if values[best] <= 0:
        raise ConfigError("OOD probe accuracy is zero at every point; % retained is undefined")
    return float(100.0 * values[-1] / values[best]), best + 1


PEARSON_MIN_POINTS = 3  # through two points every line fits: ρ = ±1 by construction


def pearson(acc_id: Curve, acc_ood: Curve) -> float:
    """Pearson correlation of the ID and OOD curves; NaN when either is constant or has fewer than
    :data:`PEARSON_MIN_POINTS` points (two points give ±1 whatever the curves)."""
    a, b = _curve(acc_id, "acc_id"), _curve(acc_ood, "acc_ood")
    if len(a) != len(b):
        raise ConfigError(f"ID and OOD curves differ in length ({len(a)} vs {len(b)})")
    if len(a) < PEARSON_MIN_POINTS or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(pearsonr(a, b).statistic)


RANK_COLLAPSE_SHARE = 0.5  # the rank has collapsed once it stays at or below this share of its maximum


def rank_collapse_layer(rank: Curve, share: float = RANK_COLLAPSE_SHARE) -> int | None:
    """The first layer (1-based) from which the numerical rank stays at or below ``share`` of its
    maximum over the curve, after that maximum; None when the last layer's rank is above it."""
    values = _curve(rank, "rank")
    peak = int(np.argmax(values))
    below = values <= share * values[peak]
    if not below[-1]:
        return None
    above_after_peak = [i for i in range(peak, len(values)) if not below[i]]
    return (above_after_peak[-1] + 1 if above_after_peak else peak) + 1


RANK_DECLINE_SHARE = 0.9  # the rank's decline starts at the last layer at or above this share of its maximum


def rank_decline_layer(rank: Curve, share: float = RANK_DECLINE_SHARE) -> int | None:
    """Where the rank's collapse starts: the last layer (1-based), from its maximum up to the
    collapse (:func:`rank_collapse_layer`), whose rank is still at least ``share`` of the maximum;
    None when the rank does not collapse. A rank falling steadily from its peak starts there."""
    collapse = rank_collapse_layer(rank)
    if collapse is None:
        return None
    values = _curve(rank, "rank")
    peak = int(np.argmax(values))
    high = [i for i in range(peak, collapse - 1) if values[i] >= share * values[peak]]
    return (high[-1] if high else peak) + 1


def alignment(acc_id_penultimate: float, classes_id: int, acc_ood_penultimate: float, classes_ood: int) -> float:
    """``A = (α_ID - 1/C_ID)(α_OOD - 1/C_OOD)``, accuracies as fractions in [0, 1]."""
    for value in (acc_id_penultimate, acc_ood_penultimate):
        if not 0 <= value <= 1:
            raise ConfigError(f"alignment takes accuracies as fractions in [0, 1], got {value}")
    if classes_id < 2 or classes_ood < 2:
        raise ConfigError("alignment needs at least 2 classes on each side")
    return float((acc_id_penultimate - 1 / classes_id) * (acc_ood_penultimate - 1 / classes_ood))


def strength(mean_retained: float) -> str:
    """Tunnel strength from the mean % OOD retained: negligible, weak, medium or strong."""
    for bound, label in STRENGTHS:
        if mean_retained >= bound:
            return label
    return "strong"


@dataclass
class OODSummary:
    """Per OOD dataset: % retained, where its maximum is, Pearson ρ and alignment."""

    name: str
    retained: float
    best_point: int
    pearson: float
    alignment: float
    retained_in_sample: float = math.nan  # the plug-in, when ``retained`` is the cross-fitted estimate


def summarize(acc_id: Curve, classes_id: int, ood: Mapping[str, tuple[Curve, int]],
              taus: Sequence[float] = (0.95, 0.98)) -> dict:
    """All tunnel metrics for one model: ``ood`` maps a name to ``(acc_ood curve, classes)``."""
    values = _curve(acc_id, "acc_id")
    out: dict = {"points": len(values)}
    for tau in taus:
        out[start_key(tau)] = tunnel_start(values, tau)
        out[length_key(tau)] = tunnel_length(values, tau)
    rows = []
    for name, (curve, classes) in ood.items():
        retained, best = ood_retained(curve)
        rows.append(OODSummary(name, retained, best, pearson(values, curve),
                               alignment(values[-1], classes_id, _curve(curve, name)[-1], classes)))
    out["ood"] = rows
    if rows:
        out[MEAN_RETAINED] = float(np.mean([r.retained for r in rows]))
        out[STRENGTH] = strength(out[MEAN_RETAINED])
    return out
