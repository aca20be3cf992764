import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from tunnelscope.errors import ConfigError
from tunnelscope.tunnel import alignment, ood_retained, pearson, strength, summarize, tunnel_length, tunnel_start


def test_tunnel_start_on_a_saturating_curve():
    acc = [0.50, 0.80, 0.93, 0.95, 0.96, 0.96, 0.97]
    # 0.95 * 0.97 = 0.9215 -> first reached at point 3; 0.98 * 0.97 = 0.9506 -> point 5 (0.95 < 0.9506)
    assert tunnel_start(acc, 0.95) == 3 and tunnel_length(acc, 0.95) == 4
    assert tunnel_start(acc, 0.98) == 5 and tunnel_length(acc, 0.98) == 2


def test_no_tunnel_when_accuracy_rises_to_the_end():
    acc = [0.1, 0.2, 0.4, 0.8]
    assert tunnel_start(acc) == 4 and tunnel_length(acc) == 0


def test_single_point_and_ties():
    assert tunnel_start([0.7]) == 1 and tunnel_length([0.7]) == 0
    assert tunnel_start([0.9, 0.9, 0.9]) == 1  # ties: the first point already qualifies
    assert ood_retained([0.4, 0.6, 0.6]) == (100.0, 2)  # max reached again at the end: no tunnel


def test_ood_retained_and_maximum_at_penultimate():
    r, best = ood_retained([0.30, 0.50, 0.40, 0.35])
    assert r == pytest.approx(70.0) and best == 2
    assert ood_retained([0.2, 0.3, 0.5]) == (100.0, 3)


def test_pearson_matches_scipy_and_is_nan_for_constant_curves():
    a, b = [0.5, 0.8, 0.9, 0.9, 0.91], [0.4, 0.6, 0.5, 0.45, 0.41]
    assert pearson(a, b) == pytest.approx(pearsonr(a, b).statistic)
    assert math.isnan(pearson([0.9, 0.9, 0.9], b[:3]))
    assert math.isnan(pearson([0.9], [0.3]))


def test_alignment_and_strength():
    assert alignment(0.9, 5, 0.6, 10) == pytest.approx((0.9 - 0.2) * (0.6 - 0.1))
    assert alignment(0.2, 5, 0.6, 10) == pytest.approx(0.0)
    assert [strength(x) for x in (100, 95, 94.9, 90, 85, 80, 79.9, 10)] == [
        "negligible", "negligible", "weak", "weak", "medium", "medium", "strong", "strong"]


def test_summary_over_several_ood_sets():
    acc_id = [0.6, 0.9, 0.95, 0.95, 0.96]
    out = summarize(acc_id, 5, {"a": ([0.5, 0.7, 0.6, 0.5, 0.49], 5), "b": ([0.3, 0.35, 0.4, 0.4, 0.4], 10)})
    assert out["tunnel_start@0.95"] == 3 and out["tunnel_length@0.95"] == 2  # 0.95 · 0.96 = 0.912 > 0.90
    ra, rb = out["ood"]
    assert ra.retained == pytest.approx(70.0) and ra.best_point == 2 and rb.retained == pytest.approx(100.0)
    assert out["mean_retained"] == pytest.approx(85.0) and out["strength"] == "medium"


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[0.1, 0.2]]])
def test_bad_curves(bad):
    with pytest.raises(ConfigError):
        tunnel_start(bad)
    with pytest.raises(ConfigError):
        alignment(95.0, 5, 0.5, 5)
    with pytest.raises(ConfigError, match="zero at every point"):
        ood_retained([0.0, 0.0])
    assert math.isnan(pearson([0.1, 0.5], [0.2, 0.4]))  # two points: ±1 by construction, not reported


def test_pearson_is_not_reported_for_a_two_point_curve():
    """Through two points ρ is ±1 whatever the curves: NaN, for the point estimate and its interval."""
    from tunnelscope.uncertainty import pearson_rows, tunnel_intervals

    assert math.isnan(pearson([0.6, 0.9], [0.5, 0.3]))
    rows = pearson_rows(np.array([[0.6, 0.9], [0.7, 0.8]]), np.array([[0.5, 0.3], [0.2, 0.4]]))
    assert np.isnan(rows).all()
    cis = tunnel_intervals(np.array([[0.6, 0.9], [0.61, 0.88]]), 5, {"ood": (np.array([[0.5, 0.3], [0.5, 0.32]]), 5)})
    assert all(math.isnan(v) for v in cis["ood"]["ood"]["pearson"])
    three = pearson_rows(np.array([[0.6, 0.9, 0.95]]), np.array([[0.5, 0.3, 0.2]]))
    assert three[0] == pytest.approx(pearsonr([0.6, 0.9, 0.95], [0.5, 0.3, 0.2]).statistic)
