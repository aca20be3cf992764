"""Softmax linear probes for every probe point, trained jointly (METRICS.md §2).

``train_probes`` fits one ``nn.Linear`` probe per point on frozen features, all in the
same steps: every point sees the same minibatch, points of equal width are stacked into
one batched matmul, and one AdamW updates all parameters. AdamW acts elementwise and
each probe's initial weights come from its own seeded generator, so the joint result
equals training the probes one by one with the same seed (tested).

Protocol ``harun`` (Harun et al. 2024, App. A.2): weights N(0, 0.01²), bias 0; AdamW lr
1e-3, weight decay 0; batch 128; 30 epochs; cross-entropy with label smoothing 0.1; no
feature standardisation. Selection ``last`` (default: the final weights), ``val`` (a
seeded 10% of train held out, best epoch on it), or ``test`` (best epoch on the test
split: the papers' behaviour, labelled so in every output).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SpecError
from .progress import progress_bar

SELECTIONS = ("last", "val", "test")
PROTOCOLS = ("harun", "lbfgs", "ridge")


@dataclass
class ProbeConfig:
    """Everything that changes a probe's number."""

    protocol: str = "harun"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    init_std: float = 0.01
    select: str = "last"
    val_fraction: float = 0.1
    seed: int = 0
    C: float = 1.0  # lbfgs: inverse L2 strength, as scikit-learn's LogisticRegression
    max_iter: int = 500  # lbfgs
    ridge: float = 1e-3  # ridge: λ = ridge · tr(Σ)/D

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise SpecError(f"unknown probe selection {self.select!r}; valid: {', '.join(SELECTIONS)}")
        if self.protocol not in PROTOCOLS:
            raise SpecError(f"unknown probe protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if self.protocol != "harun" and self.select != "last":
            raise SpecError(f"selection {self.select!r} needs epochs; protocol {self.protocol!r} is fitted once")
        if self.epochs < 1 or self.batch_size < 1:
            raise SpecError("probe epochs and batch_size must be >= 1")


@dataclass
class ProbeResult:
    """Per point: accuracy on the evaluation split, the epoch selected, and whether the loss diverged."""

    accuracy: dict[str, float]
    train_accuracy: dict[str, float]
    epoch: dict[str, int]
    diverged: list[str]
    weights: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # (W (D, C), b (C,)) on the CPU
    config: dict = field(default_factory=dict)


def _init(names: Sequence[str], dims: Sequence[int], classes: int, std: float, seed: int) -> list[Tensor]:
    """One weight matrix per point from a generator seeded by the point's name and ``seed``:
    the same whether the probe is trained alone or with others."""
    weights = []
    for name, d in zip(names, dims):
        g = torch.Generator().manual_seed((zlib.crc32(name.encode()) + 100_003 * seed) % 2**63)
        weights.append(torch.randn(d, classes, generator=g) * std)
    return weights


class _Group:
    """Probes of equal width, stacked: weights ``(G, D, C)``, biases ``(G, 1, C)``."""

    def __init__(self, names: list[str], weights: list[Tensor], device: torch.device) -> None:
        self.names = names
        self.w = torch.stack(weights).to(device).requires_grad_()
        self.b = torch.zeros(len(names), 1, weights[0].shape[1], device=device, requires_grad=True)

    def logits(self, x: Tensor) -> Tensor:  # x: (G, B, D)
        return torch.baddbmm(self.b, x, self.w)


def _accuracy(groups: list[_Group], feats: dict[str, Tensor], labels: Tensor, chunk: int = 8192) -> dict[str, float]:
    correct = {n: 0 for g in groups for n in g.names}
    with torch.no_grad():
        for lo in range(0, len(labels), chunk):
            y = labels[lo : lo + chunk]
            for g in groups:
                x = torch.stack([feats[n][lo : lo + chunk] for n in g.names])
                pred = g.logits(x).argmax(2)
                for i, n in enumerate(g.names):
                    correct[n] += int((pred[i] == y).sum())
    return {n: c / max(1, len(labels)) for n, c in correct.items()}


def train_probes(train: dict[str, Tensor], train_labels: Tensor, test: dict[str, Tensor], test_labels: Tensor,
                 num_classes: int, config: ProbeConfig | None = None, device: str | torch.device = "cpu",
                 progress: bool | None = None) -> ProbeResult:
    """Train a softmax probe per point on ``train`` features and score it on ``test``.

    ``train[point]`` is ``(N, D_point)`` and ``test[point]`` ``(M, D_point)``, in the same
    point order. Returns per-point accuracy (on ``test``; with ``select="test"`` the best
    epoch's, as the papers report), the epoch used, and the points whose loss diverged
    (their accuracy is NaN).
    """
    cfg = config or ProbeConfig()
    dev = torch.device(device)
    names = list(train)
    if list(test) != names:
        raise SpecError("train and test features must hold the same probe points in the same order")
    if cfg.protocol == "lbfgs":
        return _train_lbfgs(train, train_labels, test, test_labels, num_classes, cfg, dev)
    if cfg.protocol == "ridge":
        return _train_ridge(train, train_labels, test, test_labels, num_classes, cfg, dev)
    y_all = train_labels.long().to(dev)
    feats = {n: train[n].float().to(dev) for n in names}
    evals = {n: test[n].float().to(dev) for n in names}
    y_eval = test_labels.long().to(dev)
    # selection split
    if cfg.select == "val":
        g = torch.Generator().manual_seed(cfg.seed + 7)
        perm = torch.randperm(len(y_all), generator=g).to(dev)
        n_val = max(1, int(round(cfg.val_fraction * len(y_all))))
        val_idx, fit_idx = perm[:n_val], perm[n_val:]
        sel_feats, sel_y = {n: feats[n][val_idx] for n in names}, y_all[val_idx]
        feats, y_all = {n: feats[n][fit_idx] for n in names}, y_all[fit_idx]
    elif cfg.select == "test":
        sel_feats, sel_y = evals, y_eval
    dims = [feats[n].shape[1] for n in names]
    weights = dict(zip(names, _init(names, dims, num_classes, cfg.init_std, cfg.seed)))
    by_dim: dict[int, list[str]] = {}
    for n, d in zip(names, dims):
        by_dim.setdefault(d, []).append(n)
    groups = [_Group(ns, [weights[n] for n in ns], dev) for ns in by_dim.values()]
    # each group's training features stacked once, (G, N, D): a step gathers one minibatch per group
    stacked = [torch.stack([feats[name] for name in g.names]) for g in groups]
    params = [p for g in groups for p in (g.w, g.b)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(y_all)
    best = {name: (-1.0, 0) for name in names}
    snapshots: dict[str, tuple[Tensor, Tensor]] = {}
    diverged: set[str] = set()
    with progress_bar(progress) as bars:
        task = bars.add_task("probes", total=cfg.epochs, info=f"{len(names)} points")
        for epoch in range(1, cfg.epochs + 1):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).to(dev)
            for lo in range(0, n, cfg.batch_size):
                idx = order[lo : lo + cfg.batch_size]
                y = y_all[idx]
                loss = 0.0
                for g, xs in zip(groups, stacked):
                    logits = g.logits(xs[:, idx])  # (G, B, C)
                    per_point = F.cross_entropy(logits.transpose(1, 2), y.expand(len(g.names), -1),
                                                label_smoothing=cfg.label_smoothing, reduction="none").mean(1)
                    loss = loss + per_point.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            for g in groups:
                bad = ~torch.isfinite(g.w.detach()).flatten(1).all(1)
                diverged |= {name for name, b in zip(g.names, bad.tolist()) if b}
            if cfg.select != "last":
                acc = _accuracy(groups, sel_feats, sel_y)
                for gi, g in enumerate(groups):
                    for i, name in enumerate(g.names):
                        if acc[name] > best[name][0]:
                            best[name] = (acc[name], epoch)
                            snapshots[name] = (g.w.detach()[i].clone(), g.b.detach()[i].clone())
            bars.update(task, completed=epoch)
    chosen_epoch = {name: cfg.epochs for name in names}
    if cfg.select != "last":
        with torch.no_grad():
            for g in groups:
                for i, name in enumerate(g.names):
                    if name in snapshots:
                        g.w[i], g.b[i] = snapshots[name]
                        chosen_epoch[name] = best[name][1]
    accuracy = _accuracy(groups, evals, y_eval)
    train_accuracy = _accuracy(groups, feats, y_all)
    for name in diverged:
        accuracy[name] = train_accuracy[name] = math.nan
    cfg_out = asdict(cfg)
    if cfg.select == "test":
        cfg_out["note"] = "selected on the test split (the papers' behaviour): accuracies are optimistic"
    weights_out = {name: (g.w.detach()[i].cpu(), g.b.detach()[i, 0].cpu()) for g in groups for i, name in enumerate(g.names)}
    return ProbeResult(accuracy, train_accuracy, chosen_epoch, sorted(diverged), weights_out, cfg_out)


def _train_lbfgs(train: dict[str, Tensor], train_labels: Tensor, test: dict[str, Tensor], test_labels: Tensor,
                 num_classes: int, cfg: ProbeConfig, dev: torch.device) -> ProbeResult:
    """Multinomial logistic regression per point on standardised features, L2 penalty, L-BFGS in float64.

    Minimises ``½‖W‖² + C Σ_i CE_i`` (intercept unpenalised), scikit-learn's objective,
    divided by ``C·N``. Deterministic; each point is solved on its own (L-BFGS's line
    search is not elementwise, so a joint solve would not equal separate ones).
    """
    y, yt = train_labels.long().to(dev), test_labels.long().to(dev)
    acc, train_acc, weights, diverged = {}, {}, {}, []
    for name in train:
        x = train[name].to(dev, torch.float64)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
        xs, xt = (x - mean) / std, (test[name].to(dev, torch.float64) - mean) / std
        w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=dev, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, device=dev, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=cfg.max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")
        scale = 1.0 / (cfg.C * len(y))

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(xs @ w + b, y) + 0.5 * scale * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
                diverged.append(name)
                acc[name] = train_acc[name] = math.nan
            else:
                acc[name] = float(((xt @ w + b).argmax(1) == yt).float().mean())
                train_acc[name] = float(((xs @ w + b).argmax(1) == y).float().mean())
        weights[name] = (w.detach().cpu() / std.cpu()[:, None], (b - (mean / std) @ w).detach().cpu())
    return ProbeResult(acc, train_acc, {n: 0 for n in train}, diverged, weights, asdict(cfg))


def _train_ridge(train: dict[str, Tensor], train_labels: Tensor, test: dict[str, Tensor], test_labels: Tensor,
                 num_classes: int, cfg: ProbeConfig, dev: torch.device) -> ProbeResult:
    """The closed-form ridge probe of :mod:`tunnelscope.metrics.ridge`, fitted on the given features."""
    from .metrics.moments import Moments
    from .metrics.ridge import RidgeAccuracy, ridge_weights

    moments = Moments(num_classes, torch.float64)
    y = train_labels.long().to(dev)
    moments.update({n: x.to(dev) for n, x in train.items()}, y)
    probes = {n: ridge_weights(m, cfg.ridge) for n, m in moments.points.items()}
    test_acc, train_acc = RidgeAccuracy(probes), RidgeAccuracy(probes)
    test_acc.update({n: x.to(dev) for n, x in test.items()}, test_labels.long().to(dev))
    train_acc.update({n: x.to(dev) for n, x in train.items()}, y)
    weights = {n: (w.cpu(), (prior - mu @ w).cpu()) for n, (w, mu, prior) in probes.items()}
    return ProbeResult(test_acc.compute(), train_acc.compute(), {n: 0 for n in train}, [], weights, asdict(cfg))
