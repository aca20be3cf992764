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


@pytest.mark.parametrize("total", [20, 50, 100, 360])
def test_accuracy_intervals_cover_at_least_the_level_near_0_and_1(total):
    """Exact coverage (a sum over the binomial distribution, no simulation) of the per-point
    accuracy interval, for true accuracies across [0.5, 1) including 0.98 and 0.995; the
    bounds against scipy's binomtest (exact method)."""
    from scipy import stats

    from tunnelscope.uncertainty import accuracy_interval

    bounds = [accuracy_interval(k, total) for k in range(total + 1)]
    for k in (0, 1, total // 2, total - 1, total):
        ref = stats.binomtest(k, total).proportion_ci(0.95, method="exact")
        assert bounds[k] == pytest.approx((ref.low, ref.high), abs=1e-9)
    for p in (0.5, 0.7, 0.9, 0.95, 0.98, 0.995):
        pmf = stats.binom.pmf(np.arange(total + 1), total, p)
        coverage = sum(w for w, (lo, hi) in zip(pmf, bounds) if lo <= p <= hi)
        assert coverage >= 0.95 - 1e-9, (p, coverage)


def _crossfit_by_loops(mat: np.ndarray, folds: np.ndarray, weights: np.ndarray) -> float:
    """Cross-fitted % retained written out with plain loops (the reference)."""
    ratios = []
    for fold in folds:
        acc = {}
        for f in (0, 1):
            rows = [i for i in range(len(mat)) if fold[i] == f]
            total = sum(weights[i] for i in rows)
            acc[f] = [sum(weights[i] * mat[i, j] for i in rows) / total for j in range(mat.shape[1])]
        for f in (0, 1):
            other = acc[1 - f]
            best = max(range(len(other)), key=lambda j: (other[j], -j))  # the first maximum
            ratios.append(100 * acc[f][-1] / acc[f][best])
    return float(np.mean(ratios))


def test_crossfitted_retained_matches_a_loop_reference_and_its_resamples():
    from tunnelscope.uncertainty import Resamples, crossfit_folds, crossfit_retained

    rng = np.random.default_rng(4)
    mats = [rng.random((60, 5)) < np.array([0.5, 0.8, 0.8, 0.75, 0.7]) for _ in range(2)]
    folds = crossfit_folds(60, seed=3)
    assert folds.shape == (5, 60) and (folds.sum(1) == 30).all()
    mean = np.mean([m.astype(float) for m in mats], axis=0)
    assert crossfit_retained(mats, folds)[0] == pytest.approx(_crossfit_by_loops(mean, folds, np.ones(60)), abs=1e-9)
    draw = Resamples.draw(2, 60, 7, np.random.default_rng(0))
    values = crossfit_retained(mats, folds, draw)
    for b in range(7):
        ref = _crossfit_by_loops(mats[draw.seeds[b]].astype(float), folds, draw.counts[b])
        assert values[b] == pytest.approx(ref, abs=1e-9)


@pytest.mark.slow
def test_retained_intervals_cover_at_the_level_with_a_flat_or_tied_top():
    """Coverage of the 95% interval of cross-fitted % retained over 600 simulated test sets of
    600 rows per case (rows correlated across layers: half share one difficulty), with the
    library's own bootstrap (400 resamples). The plug-in's interval under-covers when the top
    is flat (measured here too, as the contrast)."""
    from tunnelscope.uncertainty import crossfit_folds, crossfit_retained, resampled_curves

    cases = {"clear peak": [0.5, 0.7, 0.85, 0.7, 0.6], "flat top": [0.6, 0.8, 0.8, 0.8, 0.7],
             "exact tie": [0.6, 0.8, 0.8, 0.7, 0.65]}
    reps, rows, resamples = 600, 600, 400
    coverage, plain = {}, {}
    for name, p in cases.items():
        truth = 100 * p[-1] / max(p)
        rng = np.random.default_rng(11)
        hits = plain_hits = 0
        for rep in range(reps):
            shared = rng.random((rows, 1))
            u = np.where(rng.random((rows, 1)) < 0.5, shared, rng.random((rows, len(p))))
            mat = u < np.array(p)
            curves, draw = resampled_curves([mat], resamples, np.random.default_rng(rep))
            lo, hi = interval(crossfit_retained([mat], crossfit_folds(rows, rep), draw)[:, None])
            hits += lo[0] <= truth <= hi[0]
            lo, hi = interval(retained(curves)[:, None])
            plain_hits += lo[0] <= truth <= hi[0]
        coverage[name], plain[name] = hits / reps, plain_hits / reps
    assert all(0.93 <= c <= 0.97 for c in coverage.values()), (coverage, plain)
    assert plain["flat top"] < 0.93, plain  # the contrast: the plug-in's interval misses there


def test_resample_counts_are_multinomial_with_equal_probabilities():
    from tunnelscope.uncertainty import Resamples

    rows, resamples = 40, 20_000
    draw = Resamples.draw(3, rows, resamples, np.random.default_rng(5))
    assert draw.counts.shape == (resamples, rows) and (draw.counts.sum(1) == rows).all()
    assert (draw.counts == np.round(draw.counts)).all() and draw.counts.min() >= 0
    assert set(np.unique(draw.seeds)) == {0, 1, 2}
    # Multinomial(rows, 1/rows): mean 1, variance 1 - 1/rows, covariance -1/rows between rows; within
    # about five standard errors over 20,000 resamples
    np.testing.assert_allclose(draw.counts.mean(0), 1.0, atol=5 * np.sqrt(1 / resamples))
    cov = np.cov(draw.counts, rowvar=False)
    np.testing.assert_allclose(np.diag(cov), 1 - 1 / rows, atol=5 * np.sqrt(2 / resamples))
    off = cov[~np.eye(rows, dtype=bool)]
    assert abs(off.mean() + 1 / rows) < 0.005
