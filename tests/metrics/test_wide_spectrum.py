"""Wide points' centred quantities without the full spectrum (Lanczos for the top eigenpair, one
LDLᵀ for the rank), against numpy's float64 eigendecomposition and the full-spectrum path."""

import numpy as np
import pytest
import torch

from references import cov_eigvals, numerical_rank
from tunnelscope.metrics.linalg import count_above, top_eigenpair
from tunnelscope.metrics.moments import Moments
from tunnelscope.metrics.registry import PointStats

RNG = np.random.default_rng(5)


def test_count_above_is_the_count_of_eigenvalues_over_the_threshold():
    for trial in range(120):
        d = int(RNG.integers(2, 50))
        a = RNG.normal(size=(d, d))
        a = a + a.T
        if trial % 3 == 0:
            np.fill_diagonal(a, 0.0)  # zero pivots: LDLᵀ takes 2 x 2 blocks
        if trial % 4 == 0:  # positive semi-definite of low rank, thresholded as the rank is
            b = RNG.normal(size=(d, max(1, d // 4)))
            a = b @ b.T
        values = np.linalg.eigvalsh(a)
        threshold = 1e-3 * values.max() if trial % 4 == 0 else RNG.normal() * np.abs(values).max() / 2
        assert count_above(torch.from_numpy(a), threshold) == int((values > threshold).sum())


def test_top_eigenpair_matches_numpy_and_gives_way_on_a_tiny_gap():
    for d in (40, 300, 700):
        b = RNG.normal(size=(3 * d, d)) * np.linspace(0.2, 2.0, d)
        s = b.T @ b
        theta, vector = top_eigenpair(torch.from_numpy(s))
        values, vectors = np.linalg.eigh(s)
        assert theta == pytest.approx(values[-1], rel=1e-13)
        assert abs(float(vector.numpy() @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(RNG.normal(size=(200, 200)))
    close = (q * np.r_[1.0, 1.0 - 1e-7, np.linspace(0.9, 0.0, 198)]) @ q.T  # s₂ within 10⁻⁷ of s₁
    assert top_eigenpair(torch.from_numpy(close), max_steps=30) is None
    assert top_eigenpair(torch.zeros(50, 50, dtype=torch.float64)) is None  # no variance: the caller's full path


def _wide_stats(x: np.ndarray, y: np.ndarray) -> PointStats:
    moments = Moments(int(y.max()) + 1, torch.float64)
    for lo in range(0, len(x), 250):
        moments.update({"a": torch.from_numpy(x[lo:lo + 250])}, torch.from_numpy(y[lo:lo + 250]))
    return PointStats(moments.points["a"])


@pytest.mark.parametrize("rank", [40, 600])
def test_a_wide_point_gives_the_full_spectrums_rank_share_and_direction(rank):
    d, n = 600, 1500  # wider than PointStats.WIDE, fewer units than samples: the D x D side
    x = RNG.normal(size=(n, rank)) @ RNG.normal(size=(rank, d)) * np.linspace(0.5, 3.0, d)
    x += 1e-4 * RNG.normal(size=(n, d)) + 5.0  # a noise floor below the rank's threshold, and an offset
    y = RNG.integers(0, 3, n)
    wide = _wide_stats(x, y)
    assert wide._wide()
    rank_wide, share_wide, pc1_wide = wide.covariance_rank(), wide.pc1_share, wide.pc1
    assert "covariance_eigenvalues" not in wide.__dict__  # none of them took the full spectrum
    values = cov_eigvals(x)
    assert rank_wide == numerical_rank(x) and (rank_wide == rank or rank == d)
    assert share_wide == pytest.approx(values[0] / values.sum(), rel=1e-10)
    full = _wide_stats(x, y)
    full.WIDE = 10**9  # the full-spectrum path on the same moments
    assert full.covariance_rank() == rank_wide and full.pc1_share == pytest.approx(share_wide, rel=1e-12)
    assert abs(float(full.pc1 @ pc1_wide)) == pytest.approx(1.0, abs=1e-12)
