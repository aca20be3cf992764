"""Softmax linear probes for every probe point, trained jointly (METRICS.md §2).

``train_probes`` fits one linear softmax probe per point on frozen features, all in the
same steps: every point sees the same minibatch, points of equal width are stacked into
one batched matmul, and AdamW updates all of them at once. AdamW acts elementwise and
each probe's initial weights come from its own seeded generator, so the joint result
equals training the probes one by one with the same seed (tested). The gradient of the
smoothed cross-entropy is written out rather than taken by autograd, and AdamW's update
is applied in place; both are tested against ``torch.optim.AdamW`` on an ``nn.Linear``.
Features may be memory-mapped arrays (a spilled feature cache): minibatches are then read
from disk as they are needed.

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

import numpy as np
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
    """One weight matrix ``(D, C)`` per point from a generator seeded by the point's name and
    ``seed``: the same whether the probe is trained alone or with others."""
    weights = []
    for name, d in zip(names, dims):
        g = torch.Generator().manual_seed((zlib.crc32(name.encode()) + 100_003 * seed) % 2**63)
        weights.append(torch.randn(d, classes, generator=g) * std)
    return weights


Features = Tensor | np.ndarray


class _Rows:
    """Every point's feature rows, gathered by index one width group at a time.

    Resident: each group's features stacked once as ``(N, G, D)`` on the device, so a
    minibatch is one ``index_select``. Streamed (memory-mapped caches that exceed the
    budget): a minibatch is read from each point's array on demand, so the probes never
    hold more than a batch of features in memory.
    """

    def __init__(self, feats: dict[str, Features], groups: list[list[str]], device: torch.device, resident: bool):
        self.groups, self.device, self.resident = groups, device, resident
        self.n = len(next(iter(feats.values())))
        if resident:
            self.stacked = [torch.stack([_tensor(feats[n]) for n in g], 1).to(device) for g in groups]
        else:
            self.arrays = [[feats[n] for n in g] for g in groups]

    def gather(self, idx: Tensor) -> list[Tensor]:
        """``(B, G, D)`` float32 per group for the rows ``idx`` (a sorted index on the device)."""
        if self.resident:
            return [x.index_select(0, idx) for x in self.stacked]
        rows = idx.cpu().numpy()
        return [torch.stack([_tensor(a[rows]) for a in arrays], 1).to(self.device) for arrays in self.arrays]

    def chunks(self, index: Tensor | None = None, chunk: int = 8192):
        """``(rows, per-group features)`` in chunks over ``index`` (sorted; default all rows)."""
        index = torch.arange(self.n, device=self.device) if index is None else index
        for lo in range(0, len(index), chunk):
            idx = index[lo : lo + chunk]
            yield idx, self.gather(idx)


def _tensor(x: Features) -> Tensor:
    return (torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x).float()


class _Group:
    """Probes of equal width, stacked and transposed: weights ``(G, C, D)``, biases ``(G, C, 1)``,
    and their AdamW moments. Transposed because ``(C, D) @ (D, B)`` products with a long
    output dimension run several times faster on the CPU than ``(B, D) @ (D, C)`` ones."""

    def __init__(self, names: list[str], weights: list[Tensor], device: torch.device) -> None:
        self.names = names
        self.w = torch.stack([w.t() for w in weights]).contiguous().to(device)
        self.b = torch.zeros(len(names), weights[0].shape[1], 1, device=device)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (self.w, self.b)]

    def logits(self, x: Tensor) -> Tensor:
        """``(G, C, B)`` for features ``x`` of shape ``(B, G, D)``."""
        return torch.baddbmm(self.b, self.w, x.permute(1, 2, 0))

    def step(self, x: Tensor, target: Tensor, cfg: "ProbeConfig", step: int) -> None:
        """One AdamW step on the mean smoothed cross-entropy of every probe in the group.

        The gradient is written out (softmax minus the smoothed one-hot target, over the
        batch size) instead of taken by autograd; the update is ``torch.optim.AdamW``'s
        (tested against both)."""
        grad_logits = torch.softmax(self.logits(x), 1).sub_(target).div_(x.shape[0])  # (G, C, B)
        grads = (torch.bmm(grad_logits, x.transpose(0, 1)), grad_logits.sum(2, keepdim=True))
        b1, b2 = 0.9, 0.999
        step_size = cfg.lr / (1 - b1**step)
        bc2_sqrt = math.sqrt(1 - b2**step)
        for p, g, (m, v) in zip((self.w, self.b), grads, self.state):
            p.mul_(1 - cfg.lr * cfg.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(1e-8), value=-step_size)

    def weights(self, i: int) -> tuple[Tensor, Tensor]:
        """Point ``i``'s ``(W (D, C), b (C,))``."""
        return self.w[i].t(), self.b[i, :, 0]


def _accuracy(groups: list[_Group], rows: _Rows, labels: Tensor, index: Tensor | None = None) -> dict[str, float]:
    """Per point, the share of ``rows`` (those in ``index``, default all) classified right."""
    correct = {n: 0 for g in groups for n in g.names}
    total = 0
    for idx, xs in rows.chunks(index):
        y = labels[idx]
        total += len(idx)
        for g, x in zip(groups, xs):
            pred = g.logits(x).argmax(1)  # (G, B)
            for i, n in enumerate(g.names):
                correct[n] += int((pred[i] == y).sum())
    return {n: c / max(1, total) for n, c in correct.items()}


def train_probes(train: dict[str, Features], train_labels: Tensor, test: dict[str, Features], test_labels: Tensor,
                 num_classes: int, config: ProbeConfig | None = None, device: str | torch.device = "cpu",
                 progress: bool | None = None, resident: bool | None = None) -> ProbeResult:
    """Train a softmax probe per point on ``train`` features and score it on ``test``.

    ``train[point]`` is ``(N, D_point)`` and ``test[point]`` ``(M, D_point)``, in the same
    point order: tensors, numpy arrays, or memory-mapped arrays. ``resident`` (default:
    unless any array is memory-mapped) stacks the features on the device; otherwise each
    minibatch is read from the arrays as it is needed. Returns per-point accuracy (on
    ``test``; with ``select="test"`` the best epoch's, as the papers report), the epoch
    used, and the points whose loss diverged (their accuracy is NaN).
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
    if resident is None:
        resident = not any(isinstance(x, np.memmap) for x in [*train.values(), *test.values()])
    y_all = train_labels.long().to(dev)
    y_eval = test_labels.long().to(dev)
    dims = [train[n].shape[1] for n in names]
    weights = dict(zip(names, _init(names, dims, num_classes, cfg.init_std, cfg.seed)))
    by_dim: dict[int, list[str]] = {}
    for n, d in zip(names, dims):
        by_dim.setdefault(d, []).append(n)
    groups = [_Group(ns, [weights[n] for n in ns], dev) for ns in by_dim.values()]
    rows = _Rows(train, list(by_dim.values()), dev, resident)
    eval_rows = _Rows(test, list(by_dim.values()), dev, resident)
    fit_idx = torch.arange(len(y_all), device=dev)
    if cfg.select == "val":  # a seeded share of train held out for selection
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(cfg.seed + 7)).to(dev)
        n_val = max(1, int(round(cfg.val_fraction * len(y_all))))
        val_idx, fit_idx = perm[:n_val].sort().values, perm[n_val:]
    n = len(fit_idx)
    best = {name: (-1.0, 0) for name in names}
    snapshots: dict[str, tuple[Tensor, Tensor]] = {}
    diverged: set[str] = set()
    smooth = cfg.label_smoothing
    step = 0
    with progress_bar(progress) as bars:
        task = bars.add_task("probes", total=cfg.epochs, info=f"{len(names)} points")
        for epoch in range(1, cfg.epochs + 1):
            order = fit_idx[torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)).to(dev)]
            for lo in range(0, n, cfg.batch_size):
                idx = order[lo : lo + cfg.batch_size].sort().values
                y = y_all[idx]
                target = F.one_hot(y, num_classes).t().float().mul_(1 - smooth).add_(smooth / num_classes)  # (C, B)
                step += 1
                for g, x in zip(groups, rows.gather(idx)):
                    g.step(x, target, cfg, step)
            for g in groups:
                bad = ~(torch.isfinite(g.w).flatten(1).all(1) & torch.isfinite(g.b).flatten(1).all(1))
                diverged |= {name for name, b in zip(g.names, bad.tolist()) if b}
            if cfg.select != "last":
                acc = (_accuracy(groups, rows, y_all, val_idx) if cfg.select == "val"
                       else _accuracy(groups, eval_rows, y_eval))
                for g in groups:
                    for i, name in enumerate(g.names):
                        if acc[name] > best[name][0]:
                            best[name] = (acc[name], epoch)
                            snapshots[name] = (g.w[i].clone(), g.b[i].clone())
            bars.update(task, completed=epoch)
    chosen_epoch = {name: cfg.epochs for name in names}
    for g in groups:
        for i, name in enumerate(g.names):
            if name in snapshots:
                g.w[i], g.b[i] = snapshots[name]
                chosen_epoch[name] = best[name][1]
    accuracy = _accuracy(groups, eval_rows, y_eval)
    train_accuracy = _accuracy(groups, rows, y_all, fit_idx.sort().values)
    for name in diverged:
        accuracy[name] = train_accuracy[name] = math.nan
    cfg_out = asdict(cfg)
    if cfg.select == "test":
        cfg_out["note"] = "selected on the test split (the papers' behaviour): accuracies are optimistic"
    weights_out = {name: tuple(t.cpu() for t in g.weights(i)) for g in groups for i, name in enumerate(g.names)}
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
        x = _tensor(train[name]).to(dev, torch.float64)
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
        xs, xt = (x - mean) / std, (_tensor(test[name]).to(dev, torch.float64) - mean) / std
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
    moments.update({n: _tensor(x).to(dev) for n, x in train.items()}, y)
    probes = {n: ridge_weights(m, cfg.ridge) for n, m in moments.points.items()}
    test_acc, train_acc = RidgeAccuracy(probes), RidgeAccuracy(probes)
    test_acc.update({n: _tensor(x).to(dev) for n, x in test.items()}, test_labels.long().to(dev))
    train_acc.update({n: _tensor(x).to(dev) for n, x in train.items()}, y)
    weights = {n: (w.cpu(), (prior - mu @ w).cpu()) for n, (w, mu, prior) in probes.items()}
    return ProbeResult(test_acc.compute(), train_acc.compute(), {n: 0 for n in train}, [], weights, asdict(cfg))
