"""The logistic-regression solver behind the default probe, against float64 numpy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunnelscope.logistic import column_sums, fit_logistic, standardise, stopping_tolerance, transposed_features


def _problem(n: int, d: int, c: int, seed: int, rank: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated, post-ReLU class features (a low-rank latent code mixed up to ``d`` units): the
    ill-conditioned kind real layers give."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, rank, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    mix = torch.randn(rank, d, generator=g) / rank**0.5
    x = torch.relu((centres[y] + 1.5 * torch.randn(n, rank, generator=g)) @ mix + 0.1 * torch.randn(n, d, generator=g))
    return x, y


def _objective_and_gradient(xs: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, penalty: float):
    """The penalised mean cross-entropy and its gradient in float64 numpy."""
    logits = xs @ w + b
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean() + 0.5 * penalty * (w**2).sum()
    p[np.arange(n), y] -= 1
    return loss, xs.T @ p / n + penalty * w, p.sum(0) / n


def test_standardise_matches_a_float64_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    x, _ = _problem(500, 40, 3, seed=1)
    x[:, 5] = 7.0  # a constant feature stays at zero, as scikit-learn leaves it
    x[:, 6] += 1000.0  # a large offset is centred without losing the variation
    xs, mean, std = standardise(x)
    ref = StandardScaler().fit(x.double().numpy())
    np.testing.assert_allclose(mean.numpy(), ref.mean_, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(std.numpy(), ref.scale_, rtol=1e-6)  # from the float32 centred copy
    np.testing.assert_allclose(xs.numpy(), ref.transform(x.double().numpy()), atol=2e-5)
    assert xs.dtype == torch.float32 and float(xs[:, 5].abs().max()) == 0.0


@pytest.mark.parametrize("precondition", [None, True, False])
def test_a_converged_fit_has_a_float64_gradient_within_tolerance_and_scikit_learns_optimum(precondition):
    from sklearn.linear_model import LogisticRegression

    x, y = _problem(800, 60, 4, seed=2)
    xs, _, _ = standardise(x)
    penalty = 1.0 / len(y)
    fit = fit_logistic(xs, y, 4, penalty, tol=1e-5, precondition=precondition)
    assert fit.converged and fit.iterations > 0 and fit.evaluations >= fit.iterations
    if precondition is not None:
        assert fit.preconditioned is precondition
    xd, yn = xs.double().numpy(), y.numpy()
    w, b = fit.weight.numpy(), fit.bias.numpy()
    loss, gw, gb = _objective_and_gradient(xd, yn, w, b, penalty)
    assert max(np.abs(gw).max(), np.abs(gb).max()) <= 1e-5 * 1.05  # float32 passes, float64 check
    assert loss == pytest.approx(fit.loss, rel=1e-6)
    ref = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(xd, yn)
    ref_loss, _, _ = _objective_and_gradient(xd, yn, ref.coef_.T, ref.intercept_, penalty)
    # strong convexity (penalty) bounds the gap: f - f* <= |∇|² / (2·penalty)
    gap_bound = (np.sum(gw**2) + np.sum(gb**2)) / (2 * penalty)
    assert ref_loss - 1e-9 <= loss <= ref_loss + gap_bound + 1e-9
    np.testing.assert_allclose(w, ref.coef_.T, atol=5e-3 * np.abs(ref.coef_).max())


def test_more_parameters_than_samples_still_reach_the_optimums_accuracy():
    """P = (D+1)·C = 6,120 parameters for 1,000 samples: scikit-learn's default tolerance stops
    early there; the scaled tolerance lands on the optimum's test predictions."""
    from sklearn.linear_model import LogisticRegression

    x, y = _problem(1500, 120, 40, seed=3, rank=24)
    xs, _, _ = standardise(x)
    train, test = slice(0, 1000), slice(1000, None)
    tol = stopping_tolerance(1e-4, 1000, 120, 40)
    assert tol == pytest.approx(1e-4 * 1000 / (121 * 40))
    fit = fit_logistic(xs[train], y[train], 40, 1.0 / 1000, tol=tol)
    assert fit.converged
    ours = (xs[test].double() @ fit.weight + fit.bias).argmax(1).numpy()
    ref = LogisticRegression(C=1.0, max_iter=20_000, tol=1e-9).fit(xs[train].double().numpy(), y[train].numpy())
    optimum = ref.predict(xs[test].double().numpy())
    truth = y[test].numpy()
    assert abs((ours == truth).mean() - (optimum == truth).mean()) <= 0.003
    assert (ours == optimum).mean() >= 0.99


def test_a_starved_or_poisoned_fit_is_not_converged():
    x, y = _problem(300, 20, 3, seed=4)
    xs, _, _ = standardise(x)
    starved = fit_logistic(xs, y, 3, 1 / 300, max_iter=2)
    assert not starved.converged and starved.iterations == 2 and starved.finite
    poisoned = xs.clone()
    poisoned[0, 0] = float("nan")
    bad = fit_logistic(poisoned, y, 3, 1 / 300)
    assert not bad.converged and not bad.finite


def test_a_path_of_penalties_reaches_each_optimum_from_the_shared_covariance():
    x, y = _problem(1000, 80, 5, seed=4)
    xs, _, _ = standardise(x)
    xd, yn = xs.double().numpy(), y.numpy()
    previous = None
    for c in (0.01, 0.1, 1.0, 10.0):
        penalty = 1.0 / (c * len(y))
        fit = fit_logistic(xs, y, 5, penalty, tol=1e-5, precondition=True if previous is None else None,
                           start=previous)
        assert fit.converged and fit.preconditioned
        if previous is not None:  # S and (S + δI)⁻¹ made once, at the strongest penalty, for the whole path
            assert fit.covariance is previous.covariance and fit.preconditioner is previous.preconditioner
            assert fit.delta == previous.delta
        _, gw, gb = _objective_and_gradient(xd, yn, fit.weight.numpy(), fit.bias.numpy(), penalty)
        assert max(np.abs(gw).max(), np.abs(gb).max()) <= 1e-5 * 1.05
        previous = fit


def test_a_strong_penalty_is_preconditioned_with_its_own_damping(monkeypatch):
    import tunnelscope.logistic as logistic

    x, y = _problem(2000, 120, 5, seed=5)
    xs, _, _ = standardise(x)
    penalty = 1.0 / (0.01 * len(y))  # C = 0.01
    damped = fit_logistic(xs, y, 5, penalty, tol=1e-5, precondition=True)
    monkeypatch.setattr(logistic, "damping", lambda penalty, classes: logistic.DAMPING)
    undamped = fit_logistic(xs, y, 5, penalty, tol=1e-5, precondition=True)
    assert damped.converged and undamped.converged
    assert damped.loss == pytest.approx(undamped.loss, rel=1e-7)  # one optimum
    np.testing.assert_allclose(damped.weight.numpy(), undamped.weight.numpy(), atol=1e-3)
    assert damped.iterations < undamped.iterations  # the Hessian's λI is in the preconditioner, not ignored


def test_column_sums_cross_blocks_of_rows_as_float64_numpy_sums():
    x, _ = _problem(1300, 30, 3, seed=6)  # 1,300 rows: three blocks of 512, the last partial
    x[:, 3] += 1e4  # large values keep their float64 digits
    ref = x.double().numpy()
    np.testing.assert_allclose(column_sums(x).numpy(), ref.sum(0), rtol=1e-14)
    np.testing.assert_allclose(column_sums(x, square=True).numpy(), (ref**2).sum(0), rtol=1e-14)


def test_a_shared_transposed_copy_gives_the_same_fit():
    x, y = _problem(900, 50, 4, seed=7)
    xs, _, _ = standardise(x)
    rows = xs[:700]  # the fitted rows of a held-out split are a leading slice
    alone = fit_logistic(rows, y[:700], 4, 1e-3, tol=1e-5)
    shared = fit_logistic(rows, y[:700], 4, 1e-3, tol=1e-5, transposed=transposed_features(xs)[:, :700])
    assert alone.iterations == shared.iterations
    assert torch.equal(alone.weight, shared.weight) and torch.equal(alone.bias, shared.bias)


def test_blocks_of_rows_give_the_float64_objective_gradient_and_fit(monkeypatch):
    """Features larger than four blocks are evaluated a block of rows at a time (800 x 60 float32
    with blocks of 8 KiB: 24 blocks of 34 rows, the last partial); the loss and gradient equal
    float64 numpy's and the fit converges to a float64-checked gradient within tolerance."""
    from tunnelscope import logistic

    monkeypatch.setattr(logistic, "EVALUATION_BLOCK_BYTES", 8 * 1024)
    x, y = _problem(800, 60, 4, seed=3)
    xs, _, _ = standardise(x)
    assert logistic.block_rows(xs) == 34 and not transposed_features(xs).is_contiguous()
    penalty = 1.0 / len(y)
    theta = torch.randn(4, 61, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    loss, grad = logistic._Objective(xs, y, 4, penalty)(theta)
    xd, yn = xs.double().numpy(), y.numpy()
    ref_loss, gw, gb = _objective_and_gradient(xd, yn, theta[:, :60].T.numpy(), theta[:, 60].numpy(), penalty)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(grad[:, :60].numpy(), gw.T, atol=1e-6 * np.abs(gw).max())
    np.testing.assert_allclose(grad[:, 60].numpy(), gb, atol=1e-6 * np.abs(gw).max())
    fit = fit_logistic(xs, y, 4, penalty, tol=1e-5)
    _, gw, gb = _objective_and_gradient(xd, yn, fit.weight.numpy(), fit.bias.numpy(), penalty)
    assert fit.converged and max(np.abs(gw).max(), np.abs(gb).max()) <= 1e-5 * 1.05
