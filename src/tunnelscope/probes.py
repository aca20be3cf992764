"""Softmax linear probes for every probe point (METRICS.md §2), with a convergence record.

Three protocols:

- ``lbfgs`` (default): multinomial logistic regression on standardised features with an L2
  penalty (scikit-learn's objective), solved by :mod:`tunnelscope.logistic` (L-BFGS with
  float32 passes over the features and a feature-covariance preconditioner) until the
  largest absolute gradient of the mean objective is at most ``tol`` (1e-4, scikit-learn's
  default) times ``min(1, N/P)`` for ``P`` parameters: scikit-learn's stopping rule where
  the samples outnumber the parameters, tighter where they do not, so that the accuracy is
  the optimum's. Deterministic; a probe that stops at ``max_iter`` first is reported as not
  converged. The penalty's ``C`` is chosen per point on data by default: a seeded
  ``val_fraction`` (10%) of the training split is held out, a probe is fitted on the rest
  for every ``C`` of ``c_grid`` (0.01, 0.1, 1, 10; strongest penalty first, each fit
  warm-started from the one before), and the ``C`` with the best validation accuracy is kept
  (ties: the lower validation cross-entropy; a ``C`` whose fit did not converge is kept only
  when none converged). The kept probe is that fit: it has seen 90% of
  the training rows, and every ``C`` of the grid is scored on the test split too, so that
  the headline can be recomputed under each (:attr:`ProbeResult.grid`). A fixed ``C``
  (``--probe-c``) fits once on every training row, as does a training split too small to
  hold out :data:`MIN_VALIDATION` samples (then ``C = 1``, scikit-learn's default).
- ``harun``: the papers' protocol (Harun et al. 2024, App. A.2): weights N(0, 0.01²), bias 0;
  AdamW lr 1e-3, weight decay 0; batch 128; 30 epochs; cross-entropy with label smoothing
  0.1; no feature standardisation. A fixed budget: a probe whose epoch-mean training loss
  still fell by more than ``converge_rtol`` (1%) over the last sixth of the epochs is
  reported as not converged (it under-trains on small datasets and unstandardised
  features). Selection ``last`` (the final weights), ``val`` (a seeded 10% of train held
  out, best epoch on it), or ``test`` (best epoch on the test split: the papers' behaviour,
  labelled so in every output).
- ``ridge``: least squares on one-hot targets in closed form (exact; a fast proxy).

The ``harun`` probes of every point are trained jointly: every point sees the same
minibatch, points of equal width are stacked into one batched matmul, and AdamW updates all
of them at once. AdamW acts elementwise and each probe's initial weights come from its own
seeded generator, so the joint result equals training the probes one by one (tested). The
gradient of the smoothed cross-entropy is written out rather than taken by autograd, and
AdamW's update is applied in place; both are tested against ``torch.optim.AdamW`` on an
``nn.Linear``. Features may be memory-mapped arrays (a spilled feature cache): minibatches
are then read from disk as they are needed.

Every result records, per point: test and train accuracy, the final training loss, whether
the probe converged, the iterations or epochs used, and which test samples it classified
right (for bootstrap intervals).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .logistic import LogisticFit, fit_logistic, standardise, stopping_tolerance, transposed_features
from .progress import progress_bar

SELECTIONS = ("last", "val", "test")
PROTOCOLS = ("lbfgs", "harun", "ridge")
DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0)  # lbfgs: the Cs chosen from on a validation split
FALLBACK_C = 1.0  # scikit-learn's default: the C of a training split too small to hold out a validation part
MIN_VALIDATION = 50  # validation samples needed to choose C on data
C_REFERENCE = "C="  # the results table's rows of one C of the grid have reference "C=<C>"


def c_reference(c: float) -> str:
    """The ``reference`` of the results rows that hold the probes fitted at ``C = c`` (``"C=0.1"``)."""
    return f"{C_REFERENCE}{c:g}"
OBJECTIVE = "mean cross-entropy + ‖W‖²/(2·C·N) on standardised features"
STOPPING = "max |gradient| <= tol · min(1, N/P), P = (D+1)·C parameters"
PROTOCOL_NOTES = {
    "lbfgs": "L2-regularised logistic regression on standardised features, L-BFGS to convergence (default)",
    "harun": "the papers' protocol (Harun et al. 2024): AdamW, 30 epochs, fixed budget",
    "ridge": "closed-form ridge regression on one-hot targets (a fast proxy)",
}


@dataclass
class ProbeConfig:
    """Everything that changes a probe's number."""

    protocol: str = "lbfgs"
    epochs: int = 30  # harun
    batch_size: int = 128  # harun
    lr: float = 1e-3  # harun
    weight_decay: float = 0.0  # harun
    label_smoothing: float = 0.1  # harun
    init_std: float = 0.01  # harun
    select: str = "last"
    val_fraction: float = 0.1
    seed: int = 0
    C: float | None = None  # lbfgs: inverse L2 strength (scikit-learn's); None: chosen per point from c_grid
    c_grid: tuple[float, ...] = DEFAULT_C_GRID  # lbfgs: the candidates when C is None, fitted in increasing order
    max_iter: int = 1000  # lbfgs
    tol: float = 1e-4  # lbfgs: converged when max |gradient of the mean objective| <= tol
    converge_rtol: float = 0.01  # harun: converged when the loss fell by at most this share over the last epochs
    ridge: float = 1e-3  # ridge: λ = ridge · tr(Σ)/D
    seeds: int = 1  # probes trained per point; see train_probe_seeds

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ConfigError(f"unknown probe selection {self.select!r}; valid: {', '.join(SELECTIONS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown probe protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if self.protocol != "harun" and self.select != "last":
            raise ConfigError(f"selection {self.select!r} needs epochs; protocol {self.protocol!r} is fitted once")
        if self.epochs < 1 or self.batch_size < 1 or self.max_iter < 1 or self.seeds < 1:
            raise ConfigError("probe epochs, batch_size, max_iter and seeds must be >= 1")
        if not ((self.C is None or self.C > 0) and self.tol > 0 and self.lr > 0):
            raise ConfigError("probe C, tol and lr must be > 0")
        grid = tuple(sorted({float(c) for c in self.c_grid}))
        if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
            raise ConfigError(f"probe c_grid must hold one or more finite values > 0, got {list(self.c_grid)}")
        self.c_grid = grid
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"probe val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class GridProbe:
    """One ``C`` of the grid at one point, fitted on the training rows not held out: its accuracy
    and cross-entropy on the held-out rows, which test samples it classifies right, and whether
    it converged."""

    val_accuracy: float
    val_loss: float
    correct: np.ndarray
    converged: bool


@dataclass
class ProbeResult:
    """Per point: accuracy on the evaluation split and on the training rows, the final training
    loss, whether it converged, the epochs (harun) or iterations (lbfgs) used, which evaluation
    samples it got right, and the points whose loss diverged (their accuracy is NaN)."""

    accuracy: dict[str, float]
    train_accuracy: dict[str, float]
    epoch: dict[str, int]
    diverged: list[str]
    weights: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # (W (D, C), b (C,)) on the CPU
    config: dict = field(default_factory=dict)
    train_loss: dict[str, float] = field(default_factory=dict)
    converged: dict[str, bool] = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)  # bool per evaluation sample
    c: dict[str, float] = field(default_factory=dict)  # lbfgs: the C each point's probe used
    grid: dict[str, dict[float, GridProbe]] = field(default_factory=dict)  # lbfgs with C chosen: every C's fit

    @property
    def unconverged(self) -> list[str]:
        """Points whose probe did not converge (diverged ones included)."""
        return [n for n, ok in self.converged.items() if not ok]


def _init(names: Sequence[str], dims: Sequence[int], classes: int, std: float, seed: int) -> list[Tensor]:
    """One weight matrix ``(D, C)`` per point from a generator seeded by the point's name and
    ``seed``: the same whether the probe is trained alone or with others."""
    weights = []
    for name, d in zip(names, dims):
        g = torch.Generator().manual_seed((zlib.crc32(name.encode()) + 100_003 * seed) % 2**63)
        weights.append(torch.randn(d, classes, generator=g) * std)
    return weights


FeatureArray = Tensor | np.ndarray


class _Rows:
    """Every point's feature rows, gathered by index one width group at a time.

    Resident: each group's features stacked once as ``(N, G, D)`` on the device, so a
    minibatch is one ``index_select`` and a run of consecutive rows is a view. Streamed
    (memory-mapped caches that exceed the budget): a minibatch is read from each point's
    array on demand, so the probes never hold more than a batch of features in memory.
    Both return ``(G, B, D)`` contiguous blocks, the layout the batched matmuls want.
    """

    def __init__(self, feats: dict[str, FeatureArray], groups: list[list[str]], device: torch.device,
                 resident: bool):
        self.groups, self.device, self.resident = groups, device, resident
        self.n = len(next(iter(feats.values())))
        if resident:
            self.stacked = [torch.stack([_tensor(feats[n]) for n in g], 1).to(device) for g in groups]
        else:
            self.arrays = [[feats[n] for n in g] for g in groups]

    def gather(self, idx: Tensor) -> list[Tensor]:
        """``(G, B, D)`` float32 per group for the rows ``idx`` (a sorted index on the device)."""
        if self.resident:
            return [x.index_select(0, idx).transpose(0, 1).contiguous() for x in self.stacked]
        rows = idx.cpu().numpy()
        return [torch.stack([_tensor(a[rows]) for a in arrays]).to(self.device) for arrays in self.arrays]

    def span(self, lo: int, hi: int) -> list[Tensor]:
        """Rows ``lo:hi`` of every group, as ``(G, B, D)``: a slice, no gather."""
        if self.resident:
            return [x[lo:hi].transpose(0, 1).contiguous() for x in self.stacked]
        return [torch.stack([_tensor(np.asarray(a[lo:hi])) for a in arrays]).to(self.device)
                for arrays in self.arrays]

    def chunks(self, index: Tensor | None = None, chunk: int = 4096):
        """``(rows, per-group features)`` in chunks over ``index`` (sorted; default all rows, read as slices)."""
        if index is None:
            for lo in range(0, self.n, chunk):
                hi = min(lo + chunk, self.n)
                yield torch.arange(lo, hi, device=self.device), self.span(lo, hi)
            return
        for lo in range(0, len(index), chunk):
            idx = index[lo : lo + chunk]
            yield idx, self.gather(idx)


def _tensor(x: FeatureArray) -> Tensor:
    return (torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x).float()


class _Group:
    """Probes of equal width, stacked and transposed: weights ``(G, C, D)``, biases ``(G, C, 1)``,
    trained with a written-out gradient and an in-place AdamW step."""

    def __init__(self, names: list[str], weights: list[Tensor], device: torch.device) -> None:
        self.names = names
        self.w = torch.stack([w.t() for w in weights]).contiguous().to(device)
        self.b = torch.zeros(len(names), weights[0].shape[1], 1, device=device)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (self.w, self.b)]
        self.loss_sum = torch.zeros(len(names), dtype=torch.float64, device=device)  # this epoch's
        self.loss_rows = 0

    def logits(self, x: Tensor) -> Tensor:
        """``(G, C, B)`` for features ``x`` of shape ``(G, B, D)``."""
        return torch.baddbmm(self.b, self.w, x.transpose(1, 2))

    def step(self, x: Tensor, target: Tensor, cfg: ProbeConfig, step: int) -> None:
        """One AdamW step on the mean smoothed cross-entropy of every probe in the group.

        The gradient is written out (softmax minus the smoothed one-hot target, over the
        batch size) instead of taken by autograd; the update is ``torch.optim.AdamW``'s
        (tested against both). The batch's loss is added to the epoch's sum."""
        batch = x.shape[1]
        log_p = torch.log_softmax(self.logits(x), 1)  # (G, C, B)
        self.loss_sum -= (log_p * target).sum((1, 2), dtype=torch.float64)
        self.loss_rows += batch
        grad_logits = log_p.exp_().sub_(target).div_(batch)
        grads = (torch.bmm(grad_logits, x), grad_logits.sum(2, keepdim=True))
        b1, b2 = 0.9, 0.999
        step_size = cfg.lr / (1 - b1**step)
        bc2_sqrt = math.sqrt(1 - b2**step)
        for p, g, (m, v) in zip((self.w, self.b), grads, self.state):
            p.mul_(1 - cfg.lr * cfg.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, v.sqrt().div_(bc2_sqrt).add_(1e-8), value=-step_size)

    def epoch_loss(self) -> Tensor:
        """Mean training loss per probe over this epoch's minibatches; resets the sums."""
        loss = self.loss_sum / max(1, self.loss_rows)
        self.loss_sum = torch.zeros_like(self.loss_sum)
        self.loss_rows = 0
        return loss.cpu()

    def weights(self, i: int) -> tuple[Tensor, Tensor]:
        """Point ``i``'s ``(W (D, C), b (C,))``."""
        return self.w[i].t(), self.b[i, :, 0]


def _correct(groups: list[_Group], rows: _Rows, labels: Tensor, index: Tensor | None = None) -> dict[str, np.ndarray]:
    """Per point, whether each of ``rows`` (those in ``index``, default all) is classified right."""
    out: dict[str, list[np.ndarray]] = {n: [] for g in groups for n in g.names}
    for idx, xs in rows.chunks(index):
        y = labels[idx]
        for g, x in zip(groups, xs):
            pred = g.logits(x).argmax(1)  # (G, B)
            for i, n in enumerate(g.names):
                out[n].append((pred[i] == y).cpu().numpy())
    return {n: np.concatenate(v) if v else np.zeros(0, bool) for n, v in out.items()}


def _mean(correct: dict[str, np.ndarray]) -> dict[str, float]:
    return {n: float(c.mean()) if len(c) else math.nan for n, c in correct.items()}


def still_falling(losses: Sequence[float], rtol: float) -> bool:
    """Whether an epoch-loss history still fell by more than ``rtol`` (relative to its last value)
    over its last sixth (at least one epoch); one epoch alone cannot show convergence."""
    if len(losses) < 2:
        return True
    k = max(1, round(len(losses) / 6))
    last, before = losses[-1], losses[-1 - k]
    if not (math.isfinite(last) and math.isfinite(before)):
        return True
    return before - last > rtol * abs(last)


def train_probes(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],  # noqa: PLR0913 (train and test features and labels, classes, config, device)
                 test_labels: Tensor, num_classes: int, config: ProbeConfig | None = None,
                 device: str | torch.device = "cpu", progress: bool | None = None,
                 resident: bool | None = None, chosen_c: Mapping[str, float] | None = None) -> ProbeResult:
    """Train a softmax probe per point on ``train`` features and score it on ``test``.

    ``train[point]`` is ``(N, D_point)`` and ``test[point]`` ``(M, D_point)``, in the same
    point order: tensors, numpy arrays, or memory-mapped arrays. ``resident`` (default:
    unless any array is memory-mapped) stacks the ``harun`` features on the device; otherwise
    each minibatch is read from the arrays as it is needed. ``chosen_c`` (``lbfgs``) fixes each
    point's ``C`` (fitted on every training row), overriding the config. Returns a :class:`ProbeResult`.
    """
    cfg = config or ProbeConfig()
    dev = torch.device(device)
    names = list(train)
    if list(test) != names:
        raise ConfigError("train and test features must hold the same probe points in the same order")
    if cfg.protocol == "lbfgs":
        return _train_lbfgs(train, train_labels, test, test_labels, num_classes, cfg, dev, chosen_c)
    if cfg.protocol == "ridge":
        return _train_ridge(train, train_labels, test, test_labels, num_classes, cfg, dev)
    return _train_harun(train, train_labels, test, test_labels, num_classes, cfg, dev, progress, resident)


def _train_harun(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],  # noqa: PLR0913 (train and test features and labels, classes, config, device)
                 test_labels: Tensor, num_classes: int, cfg: ProbeConfig, dev: torch.device,
                 progress: bool | None, resident: bool | None) -> ProbeResult:
    """The joint AdamW trainer of the ``harun`` protocol (see the module docstring)."""
    names = list(train)
    if resident is None:
        resident = not any(isinstance(x, np.memmap) for x in [*train.values(), *test.values()])
    groups = _harun_groups(train, num_classes, cfg, dev)
    data = _harun_data(train, train_labels, test, test_labels, [g.names for g in groups], cfg, dev, resident)
    track = _Tracking(best={name: (-1.0, 0) for name in names}, history={name: [] for name in names})
    step = 0
    with progress_bar(progress) as bars:
        task = bars.add_task("probes", total=cfg.epochs, info=f"{len(names)} points")
        for epoch in range(1, cfg.epochs + 1):
            step = _harun_epoch(groups, data, epoch, step, num_classes, cfg)
            _record_epoch(groups, track)
            if cfg.select != "last":
                _remember_best(groups, track, _selection_accuracy(groups, data, cfg), epoch)
            bars.update(task, completed=epoch)
    chosen_epoch = _restore_best(groups, track, names, cfg.epochs)
    return _harun_result(groups, data, track, names, chosen_epoch, cfg)


@dataclass
class _HarunData:
    """The ``harun`` trainer's rows and labels: the training split (the rows it fits, and those
    held out for selection) and the evaluation split."""

    rows: _Rows
    labels: Tensor
    eval_rows: _Rows
    eval_labels: Tensor
    fit_idx: Tensor
    val_idx: Tensor | None


@dataclass
class _Tracking:
    """Per point over the epochs: the training-loss history, divergence, and the best epoch so far
    (its selection accuracy, epoch and weights)."""

    best: dict[str, tuple[float, int]]
    history: dict[str, list[float]]
    snapshots: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    diverged: set[str] = field(default_factory=set)


def _harun_groups(train: dict[str, FeatureArray], num_classes: int, cfg: ProbeConfig,
                  dev: torch.device) -> list[_Group]:
    """The probes, initialised per point and stacked into one group per feature width."""
    names = list(train)
    dims = [train[n].shape[1] for n in names]
    weights = dict(zip(names, _init(names, dims, num_classes, cfg.init_std, cfg.seed)))
    by_dim: dict[int, list[str]] = {}
    for name, d in zip(names, dims):
        by_dim.setdefault(d, []).append(name)
    return [_Group(ns, [weights[n] for n in ns], dev) for ns in by_dim.values()]


def _harun_data(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],
                test_labels: Tensor, group_names: list[list[str]], cfg: ProbeConfig, dev: torch.device,
                resident: bool) -> _HarunData:
    """Rows and labels on the device; with ``select="val"`` a seeded share of train held out for selection."""
    labels = train_labels.long().to(dev)
    eval_labels = test_labels.long().to(dev)
    rows = _Rows(train, group_names, dev, resident)
    eval_rows = _Rows(test, group_names, dev, resident)
    fit_idx = torch.arange(len(labels), device=dev)
    val_idx = None
    if cfg.select == "val":
        fit_idx, val_idx = (i.to(dev) for i in validation_split(len(labels), cfg))
    return _HarunData(rows, labels, eval_rows, eval_labels, fit_idx, val_idx)


def validation_split(rows: int, cfg: ProbeConfig) -> tuple[Tensor, Tensor]:
    """``(fit, held out)`` row indices: a seeded ``cfg.val_fraction`` of ``rows`` (at least one)
    held out for selection, sorted; the rest in the seeded order the ``harun`` epochs permute."""
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(cfg.seed + 7))
    n_val = max(1, int(round(cfg.val_fraction * rows)))
    return perm[n_val:], perm[:n_val].sort().values


def _harun_epoch(groups: list[_Group], data: _HarunData, epoch: int, step: int, num_classes: int,
                 cfg: ProbeConfig) -> int:
    """One epoch of AdamW steps over the fitted rows in a seeded order; the step count after it."""
    n = len(data.fit_idx)
    smooth = cfg.label_smoothing
    epoch_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = data.fit_idx[torch.randperm(n, generator=epoch_gen).to(data.fit_idx.device)]
    for lo in range(0, n, cfg.batch_size):
        idx = order[lo : lo + cfg.batch_size].sort().values
        y = data.labels[idx]
        target = F.one_hot(y, num_classes).t().float().mul_(1 - smooth).add_(smooth / num_classes)  # (C, B)
        step += 1
        for g, x in zip(groups, data.rows.gather(idx)):
            g.step(x, target, cfg, step)
    return step


def _record_epoch(groups: list[_Group], track: _Tracking) -> None:
    """Note the points whose weights are no longer finite and each probe's epoch-mean training loss."""
    for g in groups:
        bad = ~(torch.isfinite(g.w).flatten(1).all(1) & torch.isfinite(g.b).flatten(1).all(1))
        track.diverged |= {name for name, b in zip(g.names, bad.tolist()) if b}
        for name, loss in zip(g.names, g.epoch_loss().tolist()):
            track.history[name].append(loss)


def _selection_accuracy(groups: list[_Group], data: _HarunData, cfg: ProbeConfig) -> dict[str, float]:
    """Per point, the accuracy that selects the epoch: on the held-out train rows (``val``) or on test."""
    if cfg.select == "val":
        return _mean(_correct(groups, data.rows, data.labels, data.val_idx))
    return _mean(_correct(groups, data.eval_rows, data.eval_labels))


def _remember_best(groups: list[_Group], track: _Tracking, acc: dict[str, float], epoch: int) -> None:
    """Keep a copy of each probe whose selection accuracy beats its best so far."""
    for g in groups:
        for i, name in enumerate(g.names):
            if acc[name] > track.best[name][0]:
                track.best[name] = (acc[name], epoch)
                track.snapshots[name] = (g.w[i].clone(), g.b[i].clone())


def _restore_best(groups: list[_Group], track: _Tracking, names: list[str], epochs: int) -> dict[str, int]:
    """Put the selected epochs' weights back into the groups; the epoch chosen per point (the last when none was)."""
    chosen_epoch = {name: epochs for name in names}
    for g in groups:
        for i, name in enumerate(g.names):
            if name in track.snapshots:
                g.w[i], g.b[i] = track.snapshots[name]
                chosen_epoch[name] = track.best[name][1]
    return chosen_epoch


def _harun_result(groups: list[_Group], data: _HarunData, track: _Tracking, names: list[str],
                  chosen_epoch: dict[str, int], cfg: ProbeConfig) -> ProbeResult:
    """Score the final probes on the evaluation split and the fitted rows, and gather the result."""
    correct = _correct(groups, data.eval_rows, data.eval_labels)
    accuracy = _mean(correct)
    train_index = None if cfg.select != "val" else data.fit_idx.sort().values
    train_accuracy = _mean(_correct(groups, data.rows, data.labels, train_index))
    history, diverged = track.history, track.diverged
    converged = {name: name not in diverged and not still_falling(history[name], cfg.converge_rtol) for name in names}
    for name in diverged:
        accuracy[name] = train_accuracy[name] = math.nan
    cfg_out = asdict(cfg)
    if cfg.select == "test":
        cfg_out["note"] = "selected on the test split (the papers' behaviour): accuracies are optimistic"
    weights_out: dict[str, tuple[Tensor, Tensor]] = {}
    for g in groups:
        for i, name in enumerate(g.names):
            weight, bias = g.weights(i)
            weights_out[name] = (weight.cpu(), bias.cpu())
    return ProbeResult(accuracy, train_accuracy, chosen_epoch, sorted(diverged), weights_out, cfg_out,
                       train_loss={n: history[n][-1] for n in names}, converged=converged,
                       iterations={n: cfg.epochs for n in names}, correct=correct)


def _train_lbfgs(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],
                 test_labels: Tensor, num_classes: int, cfg: ProbeConfig, dev: torch.device,
                 chosen_c: Mapping[str, float] | None = None) -> ProbeResult:
    """Multinomial logistic regression per point on standardised features, L2 penalty, by
    :func:`tunnelscope.logistic.fit_logistic`: ``CE + ‖W‖² / (2·C·N)`` (scikit-learn's objective
    divided by ``C·N``; intercept unpenalised) until ``max |∇| <= tol · min(1, N / P)``. ``C`` is
    ``chosen_c[point]``, else ``cfg.C``, else chosen on a validation split (module docstring)."""
    y, yt = train_labels.long().to(dev), test_labels.long().to(dev)
    split, selection = _c_selection(len(y), cfg, chosen_c)
    out = ProbeResult({}, {}, {}, [], {}, {**asdict(cfg), "objective": OBJECTIVE, "stopping": STOPPING,
                                           "c_selection": selection})
    if split is not None:  # the rows reordered once, fitted rows first, so that both parts are slices
        order, n_fit = torch.cat(split), len(split[0])
        y = y[order.to(dev)]
    for name in train:
        x = train[name] if split is None else _rows_of(train[name], order)
        # statistics of every training row (no labels); the reordered rows are a copy of our own
        xs, mean, std = standardise(_tensor(x).to(dev), in_place=split is not None)
        del x
        xt = (_tensor(test[name]).to(dev) - mean.float()).div_(std.float())
        if split is None:
            c = chosen_c[name] if chosen_c is not None else (cfg.C or FALLBACK_C)
            fit, fitted = _fit_c(xs, y, num_classes, c, cfg), len(y)
        else:
            c, fit = _choose_c(xs, y, n_fit, num_classes, cfg, (xt, yt), out.grid.setdefault(name, {}))
            fitted = n_fit
        out.c[name] = c
        out.iterations[name] = fit.iterations
        if not fit.finite:
            out.diverged.append(name)
            out.accuracy[name] = out.train_accuracy[name] = math.nan
            out.correct[name] = np.zeros(len(yt), bool)
        else:
            out.train_accuracy[name] = float((_scores(fit, xs[:fitted]).argmax(1) == y[:fitted]).double().mean())
            del xs
            out.correct[name] = (_scores(fit, xt).argmax(1) == yt).cpu().numpy()
            out.accuracy[name] = float(out.correct[name].mean()) if len(yt) else math.nan
        out.train_loss[name] = fit.loss
        out.converged[name] = fit.converged and fit.finite
        out.epoch[name] = 0
        out.weights[name] = ((fit.weight / std[:, None]).cpu(), (fit.bias - (mean / std) @ fit.weight).cpu())
    return out


def _c_selection(rows: int, cfg: ProbeConfig, chosen_c: Mapping[str, float] | None
                 ) -> tuple[tuple[Tensor, Tensor] | None, str]:
    """The validation split that ``C`` is chosen on (None when it is not) and how ``C`` was set."""
    if chosen_c is not None:
        return None, "given per point"
    if cfg.C is not None:
        return None, f"fixed at {cfg.C:g}"
    fit_rows, held_out = validation_split(rows, cfg)
    if len(held_out) < MIN_VALIDATION:
        return None, (f"fixed at {FALLBACK_C:g}: {rows} training samples hold out only {len(held_out)} for "
                      f"validation (< {MIN_VALIDATION})")
    return (fit_rows.sort().values, held_out), (
        f"chosen per point from {', '.join(f'{c:g}' for c in cfg.c_grid)} by accuracy on a held-out "
        f"{cfg.val_fraction:.0%} of the training split ({len(held_out)} samples; seed {cfg.seed}); the probe is "
        f"the fit on the other {len(fit_rows)}")


def _fit_c(xs: Tensor, y: Tensor, num_classes: int, c: float, cfg: ProbeConfig,
           start: LogisticFit | None = None, transposed: Tensor | None = None) -> LogisticFit:
    """One probe at ``C = c`` on standardised features ``xs``, to the stopping rule of the module
    (``transposed``: their :func:`~tunnelscope.logistic.transposed_features`, when at hand)."""
    tol = stopping_tolerance(cfg.tol, len(y), xs.shape[1], num_classes)
    return fit_logistic(xs, y, num_classes, 1.0 / (c * len(y)), tol=tol, max_iter=cfg.max_iter, start=start,
                        transposed=transposed)


def _scores(fit: LogisticFit, xs: Tensor) -> Tensor:
    """The logits of standardised features ``xs`` under ``fit`` (float32)."""
    return torch.addmm(fit.bias.float(), xs, fit.weight.float())


def _rows_of(x: FeatureArray, order: Tensor) -> FeatureArray:
    """Rows ``order`` of a feature array (read straight from a memory-mapped one)."""
    return x[order.to(x.device)] if isinstance(x, Tensor) else np.asarray(x[order.numpy()])


def _choose_c(xs: Tensor, y: Tensor, n_fit: int, num_classes: int, cfg: ProbeConfig,
              test: tuple[Tensor, Tensor], grid: dict[float, GridProbe]) -> tuple[float, LogisticFit]:
    """Fit every ``C`` of ``cfg.c_grid`` on the first ``n_fit`` rows of ``xs`` (increasing,
    warm-started), record each in ``grid`` with its scores on the other (held-out) rows and on
    ``test`` (standardised features, labels), and return the best ``C`` on the held-out rows with its fit."""
    xt, yt = test
    xf, yf, xv, yv = xs[:n_fit], y[:n_fit], xs[n_fit:], y[n_fit:]
    transposed = transposed_features(xf)  # one copy for every C
    fits, previous = {}, None
    for c in cfg.c_grid:
        fit = _fit_c(xf, yf, num_classes, c, cfg, start=previous if previous is not None and previous.finite else None,
                     transposed=transposed)
        fits[c], previous = fit, fit
        if fit.finite:
            logits = _scores(fit, xv)
            grid[c] = GridProbe(float((logits.argmax(1) == yv).double().mean()),
                                float(F.cross_entropy(logits.double(), yv)),
                                (_scores(fit, xt).argmax(1) == yt).cpu().numpy(), fit.converged)
        else:
            grid[c] = GridProbe(math.nan, math.nan, np.zeros(len(yt), bool), False)
    scored = [c for c in cfg.c_grid if grid[c].converged] or [c for c in cfg.c_grid if fits[c].finite]
    if not scored:  # every fit diverged
        return cfg.c_grid[0], fits[cfg.c_grid[0]]
    best = max(scored, key=lambda c: (grid[c].val_accuracy, -grid[c].val_loss))
    return best, fits[best]


def _train_ridge(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],
                 test_labels: Tensor, num_classes: int, cfg: ProbeConfig, dev: torch.device) -> ProbeResult:
    """The closed-form ridge probe of :mod:`tunnelscope.metrics.ridge`, fitted on the given features
    (exact, so always converged; its loss is the mean squared error on one-hot targets)."""
    from .metrics.moments import Moments
    from .metrics.ridge import ridge_weights

    moments = Moments(num_classes, torch.float64)
    y, yt = train_labels.long().to(dev), test_labels.long().to(dev)
    moments.update({n: _tensor(x).to(dev) for n, x in train.items()}, y)
    out = ProbeResult({}, {}, {}, [], {}, asdict(cfg))
    for name, point in moments.points.items():
        w, mu, prior = ridge_weights(point, cfg.ridge)

        def scores(feats: FeatureArray, w: Tensor = w, mu: Tensor = mu, prior: Tensor = prior) -> Tensor:
            return (_tensor(feats).to(dev, torch.float64) - mu) @ w + prior

        train_scores = scores(train[name])
        out.correct[name] = (scores(test[name]).argmax(1) == yt).cpu().numpy()
        out.accuracy[name] = float(out.correct[name].mean()) if len(yt) else math.nan
        out.train_accuracy[name] = float((train_scores.argmax(1) == y).double().mean())
        out.train_loss[name] = float((train_scores - F.one_hot(y, num_classes)).square().sum(1).mean())
        out.converged[name], out.iterations[name], out.epoch[name] = True, 0, 0
        out.weights[name] = (w.cpu(), (prior - mu @ w).cpu())
    return out


def merge_probe_results(parts: Sequence[ProbeResult], names: Sequence[str]) -> ProbeResult:
    """One result from results over disjoint sets of points, with the points in ``names`` order."""
    owner = {n: part for part in parts for n in part.accuracy}
    missing = [n for n in names if n not in owner]
    if missing:
        raise ValueError(f"no probe result for points {missing}")
    merged = ProbeResult({}, {}, {}, [], {}, dict(parts[0].config))
    per_point = ("accuracy", "train_accuracy", "epoch", "weights", "train_loss", "converged", "iterations", "correct",
                 "c", "grid")
    for field_name in per_point:
        setattr(merged, field_name, {n: getattr(owner[n], field_name)[n] for n in names
                                     if n in getattr(owner[n], field_name)})
    merged.diverged = [n for n in names if n in owner[n].diverged]
    return merged


def train_probe_seeds(train: dict[str, FeatureArray], train_labels: Tensor, test: dict[str, FeatureArray],
                      test_labels: Tensor, num_classes: int, config: ProbeConfig | None = None,
                      device: str | torch.device = "cpu", progress: bool | None = None) -> list[ProbeResult]:
    """``config.seeds`` probe results per point. Seed ``k`` of ``harun`` draws its own
    initialisation and minibatch order (``seed + k``); ``lbfgs`` and ``ridge`` are deterministic,
    so their seed ``k >= 1`` is fitted on a seeded bootstrap resample of the training rows
    (``lbfgs`` at the ``C`` each point's first probe used). The first result is always the plain one."""
    cfg = config or ProbeConfig()
    results = [train_probes(train, train_labels, test, test_labels, num_classes, cfg, device, progress)]
    for k in range(1, cfg.seeds):
        if cfg.protocol == "harun":
            results.append(train_probes(train, train_labels, test, test_labels, num_classes,
                                        replace(cfg, seed=cfg.seed + k), device, progress))
            continue
        n = len(train_labels)
        rows = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(cfg.seed * 7919 + k)).sort().values
        resampled = {name: _tensor(x)[rows] if not isinstance(x, np.ndarray) else np.asarray(x)[rows.numpy()]
                     for name, x in train.items()}
        results.append(train_probes(resampled, train_labels[rows], test, test_labels, num_classes, cfg, device,
                                    progress, chosen_c=results[0].c or None))
    return results
