"""Bootstrap intervals: their coverage on synthetic data, and the vectorised tunnel metrics
against the per-curve definitions."""

import numpy as np
import pytest

from tunnelscope.tunnel import ood_retained, tunnel_start
from tunnelscope.uncertainty import curve_samples, interval, pearson_rows, retained, tunnel_intervals, tunnel_starts


def _correct(p: np.ndarray, m: int, rng) -> np.ndarray:
    """Which of ``m`` test samples a probe with true accuracy ``p[l]`` gets right, per layer."""
    return rng.random((m, len(p))) < p


def test_intervals_cover_the_true_accuracy_and_retained_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    p_id = np.array([0.70, 0.85, 0.90, 0.91])
    p_ood = np.array([0.80, 0.88, 0.75, 0.60])
    true_retained = 100 * p_ood[-1] / p_ood.max()
    trials, hits_acc, hits_ret = 300, np.zeros(4), 0
    for t in range(trials):
        id_samples = curve_samples([_correct(p_id, 400, rng)], 400, np.random.default_rng(t))
        ood_samples = curve_samples([_correct(p_ood, 300, rng)], 400, np.random.default_rng(t + 10_000))
        lo, hi = interval(id_samples)
        hits_acc += (lo <= p_id) & (p_id <= hi)
        r_lo, r_hi = tunnel_intervals(id_samples, 5, {"ood": (ood_samples, 5)})["ood"]["ood"]["retained"]
        hits_ret += r_lo <= true_retained <= r_hi
    coverage = hits_acc / trials
    assert ((coverage > 0.90) & (coverage < 0.99)).all(), coverage
    assert 0.88 < hits_ret / trials < 0.99, hits_ret / trials


def test_an_interval_widens_with_fewer_samples_and_vanishes_for_a_constant_probe():
    rng = np.random.default_rng(1)
    p = np.array([0.8])
    small = np.diff(np.array(interval(curve_samples([_correct(p, 50, rng)], 500))).ravel())[0]
    large = np.diff(np.array(interval(curve_samples([_correct(p, 5000, rng)], 500))).ravel())[0]
    assert small > 4 * large > 0
    lo, hi = interval(curve_samples([np.ones((30, 2), bool)], 200))
    assert lo.tolist() == hi.tolist() == [1.0, 1.0]


def test_probe_seeds_widen_the_interval():
    rng = np.random.default_rng(2)
    a, b = _correct(np.array([0.6]), 2000, rng), _correct(np.array([0.8]), 2000, rng)
    lo1, hi1 = interval(curve_samples([a], 1000))
    lo2, hi2 = interval(curve_samples([a, b], 1000))
    assert hi2[0] - lo2[0] > 5 * (hi1[0] - lo1[0]) and lo2[0] < 0.62 and hi2[0] > 0.78


def test_vectorised_metrics_equal_the_definitions_row_by_row():
    rng = np.random.default_rng(3)
    curves, other = rng.random((50, 7)), rng.random((50, 7))
    for tau in (0.95, 0.98, 0.5):
        assert tunnel_starts(curves, tau).tolist() == [tunnel_start(c, tau) for c in curves]
    assert retained(other) == pytest.approx([ood_retained(c)[0] for c in other])
    assert pearson_rows(curves, other) == pytest.approx([np.corrcoef(a, b)[0, 1] for a, b in zip(curves, other)])
    assert np.isnan(pearson_rows(np.ones((1, 7)), other[:1])[0])


def test_integer_metrics_get_integer_bounds():
    rng = np.random.default_rng(4)
    samples = curve_samples([_correct(np.array([0.5, 0.9, 0.92, 0.93]), 200, rng)], 300)
    lo, hi = tunnel_intervals(samples, 2, {})["tunnel_start@0.95"]
    assert lo == int(lo) and hi == int(hi) and 1 <= lo <= hi <= 4
