"""Independent float64 numpy references for the metrics, written from METRICS.md alone."""

from __future__ import annotations

import numpy as np


def cov_eigvals(x: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1]


def numerical_rank(x: np.ndarray, tol: float = 1e-3) -> int:
    s = cov_eigvals(x)
    return int((s > tol * s[0]).sum())


def erank(x: np.ndarray) -> float:
    sigma = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = sigma / sigma.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def nc1(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64)
    classes = np.unique(y)
    mu = x.mean(0)
    sw = np.zeros((x.shape[1], x.shape[1]))
    sb = np.zeros_like(sw)
    for c in classes:
        xc = x[y == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc)
        sb += np.outer(mc - mu, mc - mu)
    sw /= len(x)
    sb /= len(classes)
    return float(np.trace(sw @ np.linalg.pinv(sb)) / len(classes))


def cdnv(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64)
    classes = np.unique(y)
    means = {c: x[y == c].mean(0) for c in classes}
    var = {c: ((x[y == c] - means[c]) ** 2).sum(1).mean() for c in classes}
    vals = [(var[a] + var[b]) / (2 * ((means[a] - means[b]) ** 2).sum())
            for i, a in enumerate(classes) for b in classes[i + 1:]]
    return float(np.mean(vals))


def ncc_accuracy(train_x, train_y, x, y) -> float:
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].astype(np.float64).mean(0) for c in classes])
    pred = []
    for row in x.astype(np.float64):
        pred.append(classes[np.argmin([np.linalg.norm(row - m) for m in means])])
    return float(np.mean(np.array(pred) == y))


def hsic1(k: np.ndarray, l: np.ndarray) -> float:
    n = len(k)
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3)))


def minibatch_cka(xs: list[np.ndarray], ys: list[np.ndarray]) -> float:
    """CKA_mb over paired lists of minibatches, linear kernels, float64."""
    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        x, y = x.astype(np.float64), y.astype(np.float64)
        k, l = x @ x.T, y @ y.T
        kl += hsic1(k, l)
        kk += hsic1(k, k)
        ll += hsic1(l, l)
    return kl / np.sqrt(kk * ll)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def hooked_outputs(model, names, x) -> dict:
    """The raw outputs of the modules ``names`` for input ``x``, read by forward hooks of the
    test's own (an independent read of what a capture should see)."""
    import torch

    outs, modules = {}, dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach().clone()))
               for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return outs
