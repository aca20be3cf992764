"""The metric registry: what each per-layer metric needs and how it is read out.

A metric is registered once, in the module that computes it, and the statistics engine
(:mod:`tunnelscope.engine.statistics`) plans its passes from what the requested metrics
declare. There are four kinds, by where the value comes from:

- **point** (``value``): a number per probe point and split from that split's
  :class:`~tunnelscope.metrics.moments.PointMoments` (``moments="means"`` for class counts,
  means and norms; ``"scatter"`` for the ``D x D`` scatter too), read through a
  :class:`PointStats` that computes shared quantities (eigenvalues, PC1) once;
- **stream**: an accumulator over the test split whose ``compute()`` is an ``L x L``
  matrix (CKA);
- **readout**: fitted on the training split's :class:`PointStats` (``readout_moments``)
  and scored on both splits: a classifier (NCC, ridge) with a value per point, or, with
  ``pairwise``, a value per pair of points (PC1 similarity);

A new point metric is one decorated function::

    @point_metric("trace_w", "tr Σ_W, the within-class variance", moments="scatter")
    def trace_w(stats: PointStats) -> float:
        return float(stats.moments.within_scatter().trace() / stats.moments.n)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from .linalg import RANK_TOL, count_above, numerical_rank, pc1_ratio, top_eigenpair
from .moments import PointMoments

Level = Literal["means", "scatter"]
LEVELS: dict[str | None, int] = {None: 0, "means": 1, "scatter": 2}


@dataclass(frozen=True)
class Options:
    """Settings the metrics read: NCC's ε, the ridge strength, the precision of batch products."""

    eps: float = 0.01
    ridge: float = 1e-3
    matmul_dtype: torch.dtype = torch.float32


class PointStats:
    """One point's moments on one split, with derived quantities computed once and shared
    by every metric that asks (eigenvalues, PC1). Only vectors are kept: the ``D x D``
    scatter is rebuilt from the moments when needed (``O(C D²)``, against ``O(D³)`` for an
    eigen-decomposition), so that holding every point's stats costs no ``D x D`` memory; a
    point wider than its samples answers from the ``N x N`` Gram side instead
    (:class:`~tunnelscope.metrics.moments.PointMoments`)."""

    DERIVED = ("covariance_eigenvalues", "second_moment_eigenvalues", "pc1", "centred_top", "pc1_share")  # cached
    WIDE = 512  # from this width, rank and PC1 come from Lanczos and one LDLᵀ, not the full centred spectrum

    def __init__(self, moments: PointMoments) -> None:
        self.moments = moments
        self.memo: dict[Hashable, Any] = {}  # other derived quantities, by key (:meth:`once`)
        self._held: list[Tensor] | None = None  # the scatter while :meth:`scatter_held` keeps it

    @contextmanager
    def scatter_held(self) -> Iterator[PointStats]:
        """Within the block the ``D x D`` scatter is built once and shared by every derived
        quantity (covariance, second moment: 0.23 s a build at 4,096 units); it is freed after."""
        self._held = []
        try:
            yield self
        finally:
            self._held = None

    def _scatter(self) -> Tensor | None:
        """The point's scatter: the held one inside :meth:`scatter_held`, else built afresh; None
        for a point kept as rows (it answers from the ``N x N`` side and needs no ``D x D`` matrix)."""
        if self.moments.rows is not None:
            return None
        if self._held is None:
            return self.moments.scatter()
        if not self._held:
            self._held.append(self.moments.scatter())
        return self._held[0]

    def covariance(self) -> Tensor:
        """The centred covariance (``D x D`` side; see :meth:`scatter_held`)."""
        return self.moments.covariance(self._scatter())

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for, its stored value after (for derived
        quantities that take a setting, e.g. a read-out's weights at one strength)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def computed(self) -> dict[str, Any]:
        """What has been derived so far (cached properties and :meth:`once` values), to hand to
        the same point's stats in another process (:meth:`adopt`)."""
        return {**{k: self.__dict__[k] for k in self.DERIVED if k in self.__dict__}, "memo": dict(self.memo)}

    def adopt(self, computed: dict[str, Any]) -> None:
        """Take over quantities another process derived from the same moments (:meth:`computed`)."""
        self.memo.update(computed.get("memo", {}))
        self.__dict__.update({k: v for k, v in computed.items() if k in self.DERIVED})

    @cached_property
    def covariance_eigenvalues(self) -> Tensor:
        """Eigenvalues of the centred covariance, descending."""
        return self.moments.covariance_eigenvalues(self._scatter())

    @cached_property
    def second_moment_eigenvalues(self) -> Tensor:
        """Eigenvalues of the uncentred ``Hᵀ H``, descending."""
        return self.moments.second_moment_eigenvalues(self._scatter())

    @cached_property
    def pc1(self) -> Tensor:
        """The first principal direction (unit vector)."""
        top, vector = self.centred_top
        return vector if vector is not None else self.moments.principal_direction(top, self._scatter())

    def _wide(self) -> bool:
        """Whether the centred quantities skip the full spectrum: a point of :data:`WIDE` units or
        more answered from its ``D x D`` scatter, whose centred eigenvalues are not at hand. Its
        erank still takes every eigenvalue of the uncentred matrix; rank, PC1 and PC1's share need
        only the top eigenpair (Lanczos, 15 products on MLP layers), the trace, and how many
        eigenvalues exceed ``tol · s₁`` (one ``LDLᵀ``): 2.2 s → 1.1 s per point and split at 4,096."""
        at_hand = "covariance_eigenvalues" in self.__dict__
        return self.moments.rows is None and self.moments.dims >= self.WIDE and not at_hand

    @cached_property
    def centred_top(self) -> tuple[float, Tensor | None]:
        """The covariance's largest eigenvalue ``s₁``, with its eigenvector when Lanczos found it
        (wide points; the full spectrum's top otherwise)."""
        if self._wide():
            pair = top_eigenpair(self.covariance())
            if pair is not None:
                return pair
        return float(self.covariance_eigenvalues[0]), None

    def covariance_rank(self, tol: float = RANK_TOL) -> int:
        """The numerical rank ``#{i : s_i > tol · s₁}`` of the centred covariance."""
        top = self.centred_top[0]  # first: where Lanczos gives way, the full spectrum is at hand after it
        if not self._wide() or not top > 0:
            return numerical_rank(self.covariance_eigenvalues, tol)
        return self.once(("covariance_rank", tol), lambda: count_above(self.covariance(), tol * top))

    @cached_property
    def pc1_share(self) -> float:
        """``s₁ / Σ s_i``, the share of variance along the first principal component."""
        top = self.centred_top[0]
        if not self._wide():
            return pc1_ratio(self.covariance_eigenvalues)
        scatter = self._scatter()
        assert scatter is not None  # a wide point answers from its D x D side
        total = float(scatter.diagonal().sum()) / float(self.moments.n - 1)  # the covariance's trace
        return max(top, 0.0) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class Presentation:
    """How a row of the results table is shown, wherever it is shown: the CLI's per-layer table
    (``terminal``, under ``short``), the run figures (``figure``: the hand-drawn figure that
    draws it, or ``""`` for the generic one, a panel per metric), the report and the dynamics
    heatmaps (``title``). ``shape`` says whether the row is a value per point (``curve``) or per
    pair of points (``matrix``); ``bounds`` and ``direction`` (which way is *more* of what it
    measures) label axes; ``digits`` is how many decimals a table shows."""

    row: str
    title: str
    shape: Literal["curve", "matrix"] = "curve"
    bounds: tuple[float | None, float | None] = (None, None)
    direction: Literal["higher", "lower", ""] = ""
    log_scale: bool = False
    figure: str = ""
    terminal: bool = False
    short: str = ""
    digits: int = 3

    @property
    def column(self) -> str:
        """The head of its column in the CLI table."""
        return self.short or self.row


PRESENTATIONS: dict[str, Presentation] = {}


def present(shown: Presentation) -> Presentation:
    """Register how the table rows named ``shown.row`` are shown (a row presented twice is a
    programming error). Metrics registered with ``shown`` are presented by :func:`register`."""
    if shown.row in PRESENTATIONS:
        raise ValueError(f"rows {shown.row!r} are presented twice")
    PRESENTATIONS[shown.row] = shown
    return shown


def presentation(row: str) -> Presentation:
    """How rows named ``row`` are shown: their registered presentation, or a plain curve titled by name."""
    return PRESENTATIONS.get(row) or Presentation(row, row.replace("_", " "))


@dataclass(frozen=True)
class Metric:
    """A registered per-layer metric (see the module docstring for the kinds)."""

    name: str
    description: str
    default: bool = True
    row: str = ""  # its name in the results table (``name`` when empty)
    moments: Level | None = None
    value: Callable[[PointStats], float] | None = None
    stream: Callable[[list[str], Options], Any] | None = None
    repeatable: bool = False  # a stream that later shuffled passes may feed again (``cka_passes``)
    min_batch: int = 1
    fits: Callable[[Sequence[int]], str | None] | None = None  # why points of these widths do not fit
    readout: Callable[[dict[str, PointStats], Options], Any] | None = None
    readout_moments: Level | None = None
    pairwise: bool = False  # the readout's compute() maps (point, point) pairs to values
    readout_splits: tuple[str, ...] = ("train", "test")  # the splits a readout is scored on
    summarise: Callable[[dict[str, dict[str, float]], list[str], Options], dict] | None = None
    # (option, analysis setting) pairs: ``ncc[eps=0.05]`` sets the setting ``ncc_eps``
    options: tuple[tuple[str, str], ...] = ()
    shown: Presentation | None = None  # how its rows are shown (its ``row`` is the table name)

    def __post_init__(self) -> None:
        given = [k for k, fn in (("point", self.value), ("stream", self.stream), ("readout", self.readout)) if fn]
        if len(given) != 1:
            raise ValueError(f"metric {self.name!r} must give exactly one of value, stream or readout, not "
                             f"{given or 'none'}")
        if self.value is not None and self.moments is None:
            raise ValueError(f"point metric {self.name!r} must say which moments it reads")
        if self.readout is not None and self.readout_moments is None:
            raise ValueError(f"readout metric {self.name!r} must say which training moments it is fitted on")

    @property
    def kind(self) -> Literal["point", "stream", "readout"]:
        """Where its value comes from (the tag checked at registration): ``point``, ``stream`` or ``readout``."""
        return "point" if self.value is not None else "stream" if self.stream is not None else "readout"

    @property
    def table_name(self) -> str:
        return self.row or self.name

    def point_value(self, stats: PointStats) -> float:
        """A point metric's value on one point's statistics."""
        return self._needs(self.value, "point")(stats)

    def new_stream(self, names: list[str], options: Options) -> Any:
        """A stream metric's accumulator over the points ``names``."""
        return self._needs(self.stream, "stream")(names, options)

    def new_readout(self, train: dict[str, PointStats], options: Options) -> Any:
        """A readout metric's scorer, fitted on the training split's statistics."""
        return self._needs(self.readout, "readout")(train, options)

    def _needs(self, function: Callable[..., Any] | None, kind: str) -> Callable[..., Any]:
        if function is None:
            raise TypeError(f"metric {self.name!r} is a {self.kind} metric, not a {kind} one")
        return function


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (a name registered twice is a programming error)."""
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    if metric.shown is not None and metric.shown.row != metric.table_name:
        raise ValueError(f"metric {metric.name!r} rows are named {metric.table_name!r}, not {metric.shown.row!r}")
    REGISTRY[metric.name] = metric
    if metric.shown is not None:
        present(metric.shown)
    return metric


def point_metric(name: str, description: str, moments: Level = "scatter", default: bool = False,
                 shown: Presentation | None = None
                 ) -> Callable[[Callable[[PointStats], float]], Callable[[PointStats], float]]:
    """Decorator registering ``fn(stats: PointStats) -> float`` as a point metric (``shown``: how
    its rows are shown; without it, a generic curve titled by its name)."""
    def wrap(fn: Callable[[PointStats], float]) -> Callable[[PointStats], float]:
        register(Metric(name, description, default=default, moments=moments, value=fn, shown=shown))
        return fn
    return wrap


def metric_names(metrics: str | Sequence[str], known: Sequence[str], default: Sequence[str],
                 aliases: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The one parser of metric requests: ``"default"``, ``"all"``, a comma list or a sequence
    of names from ``known`` (``aliases`` expand to several) → the names, once each, in order."""
    if isinstance(metrics, str):
        if metrics in ("default", "all"):
            return list(default if metrics == "default" else known)
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    names = [n for m in metrics for n in (aliases or {}).get(m, (m,))]
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        also = f", the aliases {'/'.join(aliases)}" if aliases else ""
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(known)}{also}, "
                          "or default/all")
    return list(dict.fromkeys(names))


def parse_metrics(metrics: str | Sequence[str]) -> tuple[list[Metric], bool]:
    """``"default"``, ``"all"``, a comma list or names → the registered metrics, and whether
    they were named one by one (so a metric that does not fit is an error, not a skip)."""
    explicit = not (isinstance(metrics, str) and metrics in ("default", "all"))
    names = metric_names(metrics, list(REGISTRY), [m.name for m in REGISTRY.values() if m.default])
    return [REGISTRY[m] for m in names], explicit
