"""Multinomial logistic regression with an L2 penalty, solved to a gradient tolerance.

The objective is scikit-learn's ``LogisticRegression`` objective divided by ``C·N``: the mean
cross-entropy plus ``‖W‖² / (2·C·N)``, intercept unpenalised. :func:`fit_logistic` minimises it
by L-BFGS and stops when the largest absolute gradient entry is at most ``tol``, so a fit that
says it converged is at scikit-learn's stopping point.

What makes it fast, without changing the optimum:

- The passes over the features (the logits ``W·Xᵀ`` and the gradient ``(P − Y)·X``, the only
  work that grows with ``N``) run in float32 with the class axis first, the layout in which a
  skinny matrix product runs at full speed; the loss is summed in float64 and the optimiser's
  state (weights, gradients, curvature pairs) is float64.
- A second-order start: once the plain solver has run as many iterations as building the
  feature covariance ``S = XᵀX/N`` costs in passes, it switches to a preconditioned L-BFGS whose
  initial inverse Hessian is ``γ·(S + δI)⁻¹`` (per class), so strongly correlated features
  (real networks' layers) need about a third of the iterations. Easy problems finish before
  the switch and never pay for ``S``. ``δ`` follows the penalty (:func:`damping`). A warm start
  at a weaker penalty (the path of Cs) reuses ``S`` and its start's ``(S + δI)⁻¹`` as they are:
  the softmax curvature ``ω`` falls as the classes separate (measured at the optima of 2,048 units
  and 100 classes: 25-3,000x below its value at the zero start), so the ideal ``δ = penalty/ω`` of
  each later fit is no smaller than the first fit's, and making a new inverse per C costs more
  than it saves (2,048 x 100: 18.0 → 14.2 s, 157 → 133 evaluations for two points).

:func:`standardise` centres and scales features the way scikit-learn's ``StandardScaler`` does
(population standard deviation; a constant feature is left at zero), accumulating in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .metrics.moments import add_gram, symmetrise

HISTORY = 10  # curvature pairs kept (scikit-learn's L-BFGS keeps 10)
ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
MIN_STEP = 1e-10  # a line search that needs a smaller step has failed
DAMPING = 1e-3  # the least δ of the preconditioner, relative to the unit variance of standardised features
MIN_SWITCH = 8  # iterations before the preconditioner is considered at all
EVALUATION_BLOCK_BYTES = 4 * 2**20  # features larger than 4 such blocks are evaluated a block of rows at a time


@dataclass
class LogisticFit:
    """A fitted probe on standardised features: ``weight`` ``(D, C)`` and ``bias`` ``(C,)`` in
    float64, the final penalised mean loss, the largest absolute gradient entry, the L-BFGS
    iterations and function evaluations used, whether the preconditioner was switched on,
    and whether the fit reached ``tol`` with finite weights."""

    weight: Tensor
    bias: Tensor
    loss: float
    grad_max: float
    iterations: int
    evaluations: int
    preconditioned: bool
    converged: bool
    preconditioner: Tensor | None = field(default=None, repr=False)  # (S + δI)⁻¹, for a warm start to reuse
    covariance: Tensor | None = field(default=None, repr=False)  # S, for a warm start at another δ
    delta: float = math.nan  # the δ of the preconditioner
    penalty: float = math.nan  # the penalty it was fitted with
    pairs: list[tuple[Tensor, Tensor, float]] = field(default_factory=list, repr=False)  # its last curvature pairs

    @property
    def finite(self) -> bool:
        """Whether the weights, bias and loss are all finite."""
        return bool(torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()) and math.isfinite(self.loss)


SUM_ROWS = 512  # rows converted to float64 at a time by column_sums


def column_sums(x: Tensor, square: bool = False) -> Tensor:
    """``Σ_i x_i`` (or ``Σ_i x_i²``) over the rows of ``x``, in float64, a block of rows at a time:
    8x faster on the CPU than ``x.sum(0, dtype=float64)``, which converts element by element
    across the rows."""
    out = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], SUM_ROWS):
        block = x[lo:lo + SUM_ROWS].double()
        out += (block.square_() if square else block).sum(0)
    return out


def standardise(x: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``((x - mean) / std, mean, std)``: the float32 standardised features and the float64 mean
    and population standard deviation (a constant feature's std is 1, so it stays at zero).
    ``in_place``: overwrite ``x`` (float32) instead of making a standardised copy."""
    n = x.shape[0]
    mean = column_sums(x) / max(1, n)
    centred = x.sub_(mean.float()) if in_place and x.dtype == torch.float32 else x.float() - mean.float()
    std = (column_sums(centred, square=True) / max(1, n)).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return centred.div_(std.float()), mean, std


def block_rows(xs: Tensor) -> int:
    """Rows of features that one evaluation reads together: all of them for features up to four
    :data:`EVALUATION_BLOCK_BYTES`, else blocks of that size, so that both products of a block
    (logits, then gradient) read it from the cache: one pass over memory per evaluation, not two
    (1.2-1.3x faster at 9,000 x 2,048 and 10 classes, equal at 100 classes; measured)."""
    whole = xs.numel() * xs.element_size() <= 4 * EVALUATION_BLOCK_BYTES
    return max(1, xs.shape[0]) if whole else max(32, EVALUATION_BLOCK_BYTES // (xs.element_size() * xs.shape[1]))


def transposed_features(xs: Tensor) -> Tensor:
    """``Xᵀ`` as the logits pass reads it: a contiguous copy for features evaluated whole
    (:func:`block_rows`; that pass is 1.1-1.5x faster on it), else a view. Made once per set of
    features and given to every fit on them (or on their first rows: ``[:, :n]``)."""
    return xs.t().contiguous() if block_rows(xs) >= xs.shape[0] else xs.t()


class _Objective:
    """The penalised mean cross-entropy of one problem and its gradient, as one ``(C, D + 1)``
    float64 parameter matrix (weights, then the bias column)."""

    def __init__(self, xs: Tensor, y: Tensor, num_classes: int, penalty: float,
                 transposed: Tensor | None = None) -> None:
        self.xs, self.n, self.dims, self.penalty = xs, xs.shape[0], xs.shape[1], penalty
        self.num_classes, self.rows = num_classes, block_rows(xs)
        self.xs_t = (transposed_features(xs) if transposed is None else transposed) if self.rows >= self.n else None
        self.labels = y.view(1, -1)
        blocks = [y[lo:lo + self.rows] for lo in range(0, self.n, self.rows)]
        # where each block's one-hot targets sit in its flattened (C, rows) softmax
        self.targets = [labels * len(labels) + torch.arange(len(labels), device=y.device) for labels in blocks]
        self.evaluations = 0

    def __call__(self, theta: Tensor) -> tuple[float, Tensor]:
        """``(loss, gradient)`` at ``theta``; the passes over the features in float32, a block of
        rows at a time (:func:`block_rows`), the loss summed in float64."""
        self.evaluations += 1
        w, b = theta[:, : self.dims], theta[:, self.dims]
        weight, bias = w.float(), b.float()[:, None]
        grad32 = torch.zeros(self.num_classes, self.dims + 1, dtype=torch.float32, device=self.xs.device)
        cross = 0.0
        for lo, targets in zip(range(0, self.n, self.rows), self.targets):
            hi = min(self.n, lo + self.rows)
            block = self.xs[lo:hi]
            logits = torch.addmm(bias, weight, block.t() if self.xs_t is None else self.xs_t[:, lo:hi])  # (C, rows)
            top = logits.amax(0)
            shifted = logits.sub_(top)  # the logits are not needed again: shifted, then exponentiated, in place
            labels = self.labels[:, lo:hi]
            shifted_true = shifted.gather(0, labels).sum(dtype=torch.float64)
            exp = shifted.exp_()
            total = exp.sum(0)
            cross += float(torch.log(total).sum(dtype=torch.float64) - shifted_true)
            residual = exp.div_(total)  # softmax, then minus the one-hot target: (C, rows)
            residual.view(-1)[targets] -= 1
            grad32[:, : self.dims].addmm_(residual, block)
            grad32[:, self.dims] += residual.sum(1)
        loss = cross / self.n + 0.5 * self.penalty * float(w.square().sum())
        grad = grad32.double().div_(self.n)
        grad[:, : self.dims].add_(w, alpha=self.penalty)
        return loss, grad

    def covariance(self) -> Tensor:
        """``S = XᵀX / N`` of the standardised features (float64, ``(D, D)``)."""
        s = torch.zeros(self.dims, self.dims, dtype=torch.float64, device=self.xs.device)
        if add_gram(s, self.xs):  # the upper triangle by syrk on the CPU
            symmetrise(s)
        return s.div_(self.n)

    def covariance_cost(self, num_classes: int) -> int:
        """What building the preconditioner costs, in evaluations (by arithmetic: ``N·D²``
        for ``S`` and ``D³`` to invert it, against ``2·N·D·C`` for an evaluation)."""
        return math.ceil((self.dims + self.dims**2 / self.n) / (2 * num_classes))


def damping(penalty: float, num_classes: int) -> float:
    """δ of the preconditioner ``(S + δI)⁻¹`` for a fit at ``penalty``: each class's block of the
    Hessian is about ``ω·S + penalty·I``, ``ω`` the mean softmax curvature ``p(1 - p)``, which is
    ``(C - 1)/C²`` at the zero start; so ``δ = penalty / ω``, and at least :data:`DAMPING`."""
    curvature = (num_classes - 1) / num_classes**2 if num_classes > 1 else 0.25
    return max(DAMPING, penalty / curvature)


def preconditioner(covariance: Tensor, delta: float) -> Tensor:
    """``(S + δI)⁻¹`` in float32 (applied in float32: it only steers the solver)."""
    s = covariance.clone()
    s.diagonal().add_(delta)
    return torch.cholesky_inverse(torch.linalg.cholesky(s)).float()


class _History:
    """L-BFGS curvature pairs and the two-loop recursion, with an optional per-class feature
    preconditioner as the initial inverse Hessian."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Tensor, Tensor, float]] = []
        self.preconditioner: Tensor | None = None

    def add(self, step: Tensor, change: Tensor) -> None:
        curvature = float((step * change).sum())
        if curvature > 1e-16:  # always true for this strongly convex objective, short of round-off
            self.pairs = [*self.pairs[1 - HISTORY :], (step, change, 1.0 / curvature)]

    def _initial(self, q: Tensor) -> Tensor:
        if self.preconditioner is None:
            return q.clone()
        out = q.clone()
        dims = self.preconditioner.shape[0]
        out[:, :dims] = (q[:, :dims].float() @ self.preconditioner).double()
        return out

    def direction(self, grad: Tensor) -> Tensor:
        """The quasi-Newton step ``−H·grad``."""
        q = -grad
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * float((s * q).sum())
            alphas.append(a)
            q = q.sub(y, alpha=a)
        r = self._initial(q)
        if self.pairs:
            s, y, _ = self.pairs[-1]
            r.mul_(float((s * y).sum()) / float((y * self._initial(y)).sum()))
        elif self.preconditioner is None:
            r.mul_(min(1.0, 1.0 / float(grad.abs().sum())))
        for (s, y, rho), a in zip(self.pairs, reversed(alphas)):
            r.add_(s, alpha=a - rho * float((y * r).sum()))
        return r


def stopping_tolerance(tol: float, samples: int, dims: int, num_classes: int) -> float:
    """The gradient tolerance a fit stops at: ``tol · min(1, N / P)`` for ``P = (D + 1)·C`` parameters.

    scikit-learn's ``max |∇| <= tol`` pins the optimum down when the samples outnumber the
    parameters; with more parameters than samples (a wide layer with many classes) the
    objective is flat along directions the data barely constrain, and a fit stopped at ``tol``
    can score 2 pp away from the optimum's accuracy (measured at D = 2048, C = 100, N = 10,000,
    docs/benchmarks.md). Scaling the tolerance by ``N / P`` keeps every probe within 0.3 pp of
    the optimum at the benchmark's widths and class counts (tests/test_logistic.py)."""
    return tol * min(1.0, samples / ((dims + 1) * num_classes))


def _initial_preconditioner(objective: _Objective, history: _History, delta: float, precondition: bool | None,
                            start: LogisticFit | None) -> tuple[float, Tensor | None]:
    """Set ``history``'s preconditioner before the first iteration: a warm start's ``S`` and its
    ``(S + δI)⁻¹`` at the start's stronger penalty (see the module docstring), or one made now
    when ``precondition`` is True; returns the δ in use and ``S`` (None: not made yet)."""
    if start is not None and start.covariance is not None and precondition is not False:
        if start.preconditioner is not None:
            history.preconditioner = start.preconditioner
            return start.delta, start.covariance
        history.preconditioner = preconditioner(start.covariance, delta)
        return delta, start.covariance
    if precondition:
        covariance = objective.covariance()
        history.preconditioner = preconditioner(covariance, delta)
        return delta, covariance
    return delta, None


def fit_logistic(xs: Tensor, y: Tensor, num_classes: int, penalty: float, tol: float = 1e-4,  # noqa: PLR0913 (the solver's keyword options)
                 max_iter: int = 1000, precondition: bool | None = None,
                 start: LogisticFit | None = None, transposed: Tensor | None = None) -> LogisticFit:
    """Minimise the mean cross-entropy of ``xs @ W + b`` plus ``penalty/2 · ‖W‖²`` by L-BFGS
    until the largest absolute gradient entry is at most ``tol`` (or ``max_iter`` iterations).

    ``xs`` is ``(N, D)`` float32, standardised (:func:`standardise`); ``y`` holds class indices.
    ``precondition``: ``None`` (default) switches the feature preconditioner on once the plain
    solver has spent what building it costs; ``True`` from the start; ``False`` never.
    ``start``: a fit of the same features to begin from (a warm start along a path of
    penalties; zero weights without it). Its feature covariance is reused when it built one.
    ``transposed``: :func:`transposed_features` of ``xs``, when the caller fits the same features
    more than once (made here without it).
    """
    objective = _Objective(xs, y.long(), num_classes, penalty, transposed)
    history = _History()
    switch_at = max(MIN_SWITCH, objective.covariance_cost(num_classes))  # never more than twice the best choice
    delta, covariance = _initial_preconditioner(objective, history, damping(penalty, num_classes), precondition, start)
    theta = torch.zeros(num_classes, objective.dims + 1, dtype=torch.float64, device=xs.device)
    if start is not None:
        theta[:, : objective.dims] = start.weight.t()
        theta[:, objective.dims] = start.bias
        for move, change, _ in start.pairs:  # the same curvature, shifted by the change of penalty on W
            shifted = change.clone()
            shifted[:, : objective.dims].add_(move[:, : objective.dims], alpha=penalty - start.penalty)
            history.add(move, shifted)
    loss, grad = objective(theta)
    iterations = 0
    while (grad_max := float(grad.abs().max())) > tol and iterations < max_iter and math.isfinite(loss):
        if precondition is None and history.preconditioner is None and iterations >= switch_at:
            covariance = objective.covariance()
            history.preconditioner = preconditioner(covariance, delta)
        direction = history.direction(grad)
        slope = float((grad * direction).sum())
        if not slope < 0:  # not a descent direction (round-off): restart from the gradient
            history.pairs = []
            direction = history.direction(grad)
            slope = float((grad * direction).sum())
        step, (new_loss, new_grad) = 1.0, objective(theta + direction)
        while not new_loss <= loss + ARMIJO * step * slope and step > MIN_STEP:
            step /= 2
            new_loss, new_grad = objective(theta + step * direction)
        if step <= MIN_STEP:
            break
        history.add(step * direction, new_grad - grad)
        theta, loss, grad = theta + step * direction, new_loss, new_grad
        iterations += 1
    dims = objective.dims
    return LogisticFit(theta[:, :dims].t().contiguous(), theta[:, dims].clone(), loss, grad_max, iterations,
                       objective.evaluations, history.preconditioner is not None,
                       converged=grad_max <= tol and math.isfinite(loss), preconditioner=history.preconditioner,
                       covariance=covariance, delta=delta, penalty=penalty, pairs=history.pairs)


__all__ = ["LogisticFit", "block_rows", "column_sums", "fit_logistic", "standardise", "transposed_features"]
