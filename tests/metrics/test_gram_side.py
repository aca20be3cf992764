"""Points wider than their samples: statistics from the N x N Gram side equal the D x D path and
float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from references import cov_eigvals, numerical_rank
from references import erank as ref_erank
from references import nc1 as ref_nc1
from tunnelscope.engine import statistics
from tunnelscope.engine.statistics import analyze_layers
from tunnelscope.metrics.collapse import nc1
from tunnelscope.metrics.moments import Moments
from tunnelscope.metrics.ridge import ridge_weights
from tunnelscope.metrics.spectrum import effective_rank, pc1_ratio
from tunnelscope.metrics.spectrum import numerical_rank as ts_rank


def _wide(n: int = 120, d: int = 300, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of ``d`` > ``n`` correlated, offset class features."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    latent = rng.normal(size=(classes, 40))[y] + 0.7 * rng.normal(size=(n, 40))
    x = np.maximum(latent @ rng.normal(size=(40, d)), 0) + 5.0 + 0.01 * rng.normal(size=(n, d))
    return x, y


def _moments(x: np.ndarray, y: np.ndarray, samples: int | None, batch: int = 32) -> Moments:
    acc = Moments(4, torch.float64, samples=samples)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for lo in range(0, len(x), batch):
        acc.update({"a": xt[lo:lo + batch]}, yt[lo:lo + batch])
    return acc


def test_a_point_wider_than_its_samples_keeps_rows_and_matches_the_d_by_d_path_and_numpy():
    x, y = _wide()
    rows = _moments(x, y, samples=len(x))
    full = _moments(x, y, samples=None)
    assert 0 in rows.rows and rows.w2[0] is None and full.w2[0] is not None
    g, f = rows.points["a"], full.points["a"]
    assert g.rows is not None and f.rows is None
    vals = g.covariance_eigenvalues()
    assert len(vals) == x.shape[1]
    np.testing.assert_allclose(vals.numpy(), f.covariance_eigenvalues().numpy(), rtol=1e-8, atol=1e-9 * float(vals[0]))
    np.testing.assert_allclose(vals.numpy(), cov_eigvals(x), rtol=1e-8, atol=1e-9 * float(vals[0]))
    assert ts_rank(vals) == numerical_rank(x) == ts_rank(f.covariance_eigenvalues())
    assert pc1_ratio(vals) == pytest.approx(pc1_ratio(f.covariance_eigenvalues()), rel=1e-10)
    second = g.second_moment_eigenvalues()
    assert effective_rank(second, len(x)) == pytest.approx(ref_erank(x), rel=1e-8)
    assert effective_rank(second, len(x)) == pytest.approx(effective_rank(f.second_moment_eigenvalues(), len(x)),
                                                           rel=1e-8)
    top = vals[0]
    assert abs(float(g.principal_direction(top) @ f.principal_direction(top))) == pytest.approx(1.0, abs=1e-9)
    assert nc1(g) == pytest.approx(ref_nc1(x, y), rel=1e-8) and nc1(g) == pytest.approx(nc1(f), rel=1e-9)
    np.testing.assert_allclose(g.within_scatter().numpy(), f.within_scatter().numpy(), rtol=1e-9, atol=1e-7)
    for ridge in (1e-3, 1.0):
        wg, mg, pg = ridge_weights(g, ridge)
        wf, mf, pf = ridge_weights(f, ridge)
        np.testing.assert_allclose(wg.numpy(), wf.numpy(), rtol=1e-7, atol=1e-9 * float(wf.abs().max()))
        torch.testing.assert_close(mg, mf) and torch.testing.assert_close(pg, pf)


def test_rows_merge_like_one_pass_and_meet_a_d_by_d_shard_as_scatter():
    x, y = _wide(seed=1)
    half = len(x) // 2
    one = _moments(x, y, samples=len(x)).points["a"]
    a, b = _moments(x[:half], y[:half], samples=len(x)), _moments(x[half:], y[half:], samples=len(x))
    merged = a.merge(b).points["a"]
    assert merged.rows is not None and len(merged.rows) == len(x)
    np.testing.assert_allclose(merged.covariance_eigenvalues().numpy(), one.covariance_eigenvalues().numpy(),
                               rtol=1e-8, atol=1e-9 * float(one.covariance_eigenvalues()[0]))
    mixed = _moments(x[:half], y[:half], samples=len(x)).merge(_moments(x[half:], y[half:], samples=None))
    assert mixed.rows == {} and mixed.points["a"].w2 is not None
    np.testing.assert_allclose(mixed.points["a"].covariance_eigenvalues().numpy(),
                               one.covariance_eigenvalues().numpy(), rtol=1e-8,
                               atol=1e-9 * float(one.covariance_eigenvalues()[0]))


def test_planned_bytes_count_rows_for_a_point_wider_than_its_samples():
    square = Moments.planned_bytes(10, [8192], samples=None)
    rows = Moments.planned_bytes(10, [8192], samples=1000)
    assert square - rows == 8 * 8192**2 - (4 * 8192 + 8 * 1000) * 1000


def test_the_engine_switches_to_the_gram_side_for_wide_points_with_the_same_numbers(monkeypatch):
    from tunnelscope import models
    from tunnelscope.data import load

    ds = load("digits[classes=0-4]")
    model = models.build("mlp-3x256", 5, ds.input_shape, seed=0)
    kw = dict(metrics="rank,erank,pc1,nc1,ridge,pc1_sim", max_samples=150, batch_size=64, progress=False,
              precision="float64")
    made: list[Moments] = []

    class Recording(Moments):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    class Square(Moments):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "samples": None})

    monkeypatch.setattr(statistics, "Moments", Recording)
    gram = analyze_layers(model, ds, **kw)
    assert made and all(m.samples == 150 for m in made)
    wide = [p for p in gram.config["points"]]  # every block is 256 wide; the 64-pixel input is not
    assert gram.config["gram_side"] == {"train": wide, "test": wide}
    monkeypatch.setattr(statistics, "Moments", Square)
    square = analyze_layers(model, ds, **kw)
    assert square.config["gram_side"] == {}
    key = ["split", "point", "metric", "other_point"]
    joined = gram.table.merge(square.table, on=key, suffixes=("_g", "_s"))
    assert len(joined) == len(gram.table) == len(square.table)
    close = np.isclose(joined.value_g, joined.value_s, rtol=1e-7, atol=1e-9) | (joined.value_g.isna()
                                                                                & joined.value_s.isna())
    assert close.all(), joined[~close]
