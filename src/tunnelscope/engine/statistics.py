"""The statistics pass: plan → passes → table, computing only what was asked.

1. **Plan** (:func:`make_plan`): from the metrics asked for and what each declares in the
   registry (:mod:`tunnelscope.metrics.registry`), decide which splits need moments and
   at which level (class means only, or the ``D x D`` scatter too), which stream
   accumulators read the test split, and whether the training split is read at all. A
   CKA-only request reads the test split once and keeps no moments. The plan's memory is
   checked against a budget before anything is allocated.
2. **Passes** (:func:`train_pass`, :func:`test_pass`): one streaming model pass per split
   feeds every accumulator. Training-split point metrics and read-outs are computed right
   after the training pass and its scatter matrices released, so the two splits' ``D x D``
   states never coexist; each point's state is released once its metrics are read.
3. **Table** (:func:`point_rows` and friends): one tidy row per split × point × metric.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from torch import nn

from .. import data as data_mod
from ..capture import DEFAULT_MAX_DIM, Capture, capture_for
from ..capture.cache import DEFAULT_BUDGET, FeatureCache
from ..data.objects import as_dataset
from ..device import resolve_device
from ..errors import ConfigError, MemoryBudgetError
from ..metrics import LEVELS, Metric, Options, PointStats, parse_metrics
from ..metrics.base import Accumulator, ModelAccuracy
from ..metrics.moments import Moments
from ..metrics.spectrum import RANK_TOL
from ..models import resolve_model
from ..progress import progress_bar
from ..results import COLUMNS, Results
from ..summary import MODEL_ACCURACY, as_summary
from ..verdict import check_statistics_samples
from ..versions import environment, package_versions
from .distributed import World, current_world
from .input_cache import InputCache, open_input_cache
from .settings import AnalysisSettings, metric_options, settings_from, with_metric_options

TABLE_COLUMNS = ["model", "split", "point", "layer", "depth", "metric", "value", "other_point", "other_layer",
                 "valid"]
SPLITS = ("train", "test")


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What the passes compute: metrics kept, moments per split, whether the training split is read."""

    metrics: list[Metric]
    moments: dict[str, str | None]
    train_cache: bool  # read-outs score the training split from a feature cache
    skipped: dict[str, str] = field(default_factory=dict)  # metric → why it was not computed

    @property
    def train_pass(self) -> bool:
        return self.moments["train"] is not None or self.train_cache

    @property
    def streams(self) -> list[Metric]:
        return [m for m in self.metrics if m.kind == "stream"]

    @property
    def readouts(self) -> list[Metric]:
        return [m for m in self.metrics if m.kind == "readout"]

    def points_metrics(self) -> list[Metric]:
        return [m for m in self.metrics if m.kind == "point"]


def _higher(a: str | None, b: str | None) -> str | None:
    return a if LEVELS[a] >= LEVELS[b] else b


def make_plan(metrics: list[Metric], explicit: bool, widths: Sequence[int], keep_train_cache: bool) -> Plan:
    """The plan for ``metrics`` on points of ``widths``; a metric that does not fit is an
    error when named explicitly, and skipped with its reason under ``default``/``all``."""
    plan = Plan([], {"train": None, "test": None}, keep_train_cache)
    for metric in metrics:
        reason = metric.fits(widths) if metric.fits is not None else None
        if reason and explicit:
            raise ConfigError(reason)
        if reason:
            plan.skipped[metric.name] = reason
            continue
        plan.metrics.append(metric)
        for split in SPLITS:
            plan.moments[split] = _higher(plan.moments[split], metric.moments)
        if metric.kind == "readout":
            plan.moments["train"] = _higher(plan.moments["train"], metric.readout_moments)
            plan.train_cache = plan.train_cache or "train" in metric.readout_splits
    return plan


CGROUP_ROOT = Path("/sys/fs/cgroup")  # where this process's memory limit is read (a test points it elsewhere)


def _read_int(path: Path) -> int | None:
    """The integer in a one-line file, or None (missing, unreadable, ``max``, not a number)."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None


def _own_cgroup_dirs(root: Path) -> list[Path]:
    """The memory cgroup folders that limit this process: its own (from /proc/self/cgroup) and
    the root of the mount (a container sees its own cgroup there)."""
    dirs = [root, root / "memory"]
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers in ("", "memory") or "memory" in controllers.split(","):
                rel = path.lstrip("/")
                dirs += [root / rel, root / "memory" / rel] if rel else []
    return dirs


def cgroup_headroom(root: Path | None = None) -> int | None:
    """Bytes this process's memory cgroup still allows (limit minus usage; cgroup v2
    ``memory.max``/``memory.current`` or v1 ``memory.limit_in_bytes``/``memory.usage_in_bytes``),
    the smallest over the cgroups found; None without a limit."""
    base = root or CGROUP_ROOT
    room = []
    for folder in _own_cgroup_dirs(base):
        for limit_file, usage_file in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, usage = _read_int(folder / limit_file), _read_int(folder / usage_file)
            if limit is not None and limit < 1 << 60 and usage is not None:  # v1 says "no limit" with ~2^63
                room.append(max(0, limit - usage))
    return min(room) if room else None


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new state on ``device``: on a Linux CPU, MemAvailable or what the memory
    cgroup (a container's limit) still allows, whichever is less; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    host = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
    if host is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [m for m in (host, cgroup_headroom()) if m is not None]
    return min(limits) if limits else None


def planned_bytes(plan: Plan, widths: Sequence[int], num_classes: int, samples: dict[str, int] | None = None) -> int:
    """Peak bytes of the plan's state: one split's moments at a time (``samples`` per split: a
    point wider than its split keeps rows, not a ``D x D`` scatter), plus the joint covariance
    of full-data CKA, plus eigen-solver workspace for the widest point (or its Gram)."""
    counts = samples or {}
    moments = max((Moments.planned_bytes(num_classes, list(widths), plan.moments[s] == "scatter", counts.get(s))
                   for s in SPLITS if plan.moments[s] is not None), default=0)
    joint = 3 * 8 * sum(widths) ** 2 if any(m.name == "cka_full" for m in plan.metrics) else 0
    side = min([max(widths, default=0), *[n for n in counts.values() if n]])
    workspace = 4 * 8 * side**2 if plan.moments["test"] == "scatter" else 0
    return moments + joint + workspace


def check_memory(plan: Plan, widths: Sequence[int], num_classes: int, budget: int | None,
                 samples: dict[str, int] | None = None) -> int:
    """Refuse, in one line, a plan whose state exceeds ``budget`` bytes; returns its planned bytes."""
    need = planned_bytes(plan, widths, num_classes, samples)
    if budget is not None and need > budget:
        raise MemoryBudgetError(
            f"the statistics need about {need / 2**30:.1f} GiB ({len(widths)} points up to {max(widths)} dims) "
            f"but the budget is {budget / 2**30:.1f} GiB; lower max_dim (--max-dim), reduce further "
            "(--reduce gap or project:D), take fewer points, or drop rank/pc1/erank/nc1/ridge from the metrics")
    return need


# ---------------------------------------------------------------------------------------------- passes
def run_pass(capture: Capture, split, accumulators: Sequence, batch_size: int, device: torch.device,
             progress=None, description: str = "", generator: torch.Generator | None = None) -> int:
    """One model pass over ``split``: every accumulator's ``update`` sees every batch.

    ``generator`` shuffles the order (for extra CKA passes). Returns the samples read.
    """
    seen = 0
    for feats, y in capture.stream(split, batch_size, device, progress=progress, description=description,
                                   generator=generator):
        for acc in accumulators:
            acc.update(feats, y)
        seen += len(y)
    return seen


def _pass(run: Run, split, accumulators: Sequence, description: str, generator: torch.Generator | None = None) -> int:
    """:func:`run_pass` over this process's batches of ``split`` (all of them in one process);
    the caller sums the accumulators over processes."""
    world = run.world
    local = world.local(split, run.batch_size, generator)  # a shuffle is dealt out already shuffled
    return run_pass(run.capture, local, accumulators, run.batch_size, run.device, run.bars, description,
                    generator=None if world.parallel else generator)


@dataclass
class Run:
    """The state of one statistics computation, shared by the passes and the table."""

    capture: Capture
    plan: Plan
    options: Options
    num_classes: int
    batch_size: int
    device: torch.device
    bars: object
    rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invalid: dict[str, set[str]] = field(default_factory=lambda: {"train": set(), "test": set()})
    readouts: dict[str, dict] = field(default_factory=dict)  # metric → {split: accumulator}
    streams: dict[str, Accumulator] = field(default_factory=dict)
    passes: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)  # each point's reduced width
    gram_side: dict[str, list[str]] = field(default_factory=dict)  # split → points wider than its samples
    world: World = field(default_factory=World)  # the processes sharing the passes (one by default)
    inputs: InputCache = field(default_factory=lambda: InputCache(None, None, "not opened"))  # the input point's cache

    def note_gram_side(self, split: str, moments: Moments) -> None:
        """Record which points of ``split`` kept rows (statistics from the N x N side)."""
        if moments.rows:
            self.gram_side[split] = [moments.names[i] for i in sorted(moments.rows)]

    def add(self, split: str, point: str, metric: str, value: float, other: str | None = None,
            uses_train: bool = False) -> None:
        """One table row; NaN and not valid where the point's features were not finite."""
        bad = point in self.invalid[split] or (other is not None and other in self.invalid[split])
        bad = bad or (uses_train and point in self.invalid["train"])  # read-outs fitted on the training split
        value = float("nan") if bad else float(value)
        cap = self.capture
        layers = len(cap.points)
        self.rows.append({"model": None, "split": split, "point": point, "layer": cap.layer(point),
                          "depth": cap.layer(point) / layers, "metric": metric, "value": value, "other_point": other,
                          "other_layer": cap.layer(other) if other is not None else None,
                          "valid": not bad and math.isfinite(value)})


def train_pass(run: Run, split, cache: FeatureCache, gather: bool = True) -> None:
    """Read the training split (if the plan needs it): its point metrics, then the read-outs
    fitted on its moments; its scatter matrices are released before the test pass. With several
    processes the feature cache is gathered whole only when ``gather`` (someone else reads it:
    the probes); the read-outs alone score each process's own rows."""
    level = run.plan.moments["train"]
    if not run.plan.train_pass:
        return
    moments = (Moments(run.num_classes, run.options.matmul_dtype, scatter=level == "scatter", samples=len(split),
                       skip=run.inputs.skip()) if level else None)
    accs = ([moments] if moments else []) + ([cache] if run.plan.train_cache else [])
    _pass(run, split, accs, "train pass")
    run.world.reduce([moments] if moments else [])
    if run.plan.train_cache and gather:
        run.world.gather(cache, run.batch_size)
    run.passes.append("train")
    if moments is None:
        return
    run.note_gram_side("train", moments)
    cached = run.inputs.stats("train", moments)  # the input point's, on a cache hit
    stats = {name: cached.get(name) or PointStats(m) for name, m in moments.points.items()}  # eigenvalues, PC1 once
    _derive_shared(run, stats)
    for metric in run.plan.readouts:  # fitted once, before point_rows releases the scatter; a copy per split
        fitted = metric.new_readout(stats, run.options)
        run.readouts[metric.name] = {s: fitted if i == 0 else copy.deepcopy(fitted)
                                     for i, s in enumerate(metric.readout_splits)}
    point_rows(run, "train", moments, stats)


def _derive_shared(run: Run, stats: dict[str, PointStats]) -> None:
    """With several processes, what the read-outs derive from each point's training moments
    (eigenvalues, PC1, ridge weights) is computed by the point's owner (:func:`_my_points`) and
    handed to the others, instead of by every process for every point."""
    if not run.world.parallel or not run.plan.readouts:
        return
    mine = {name: stats[name] for name in _my_points(run, {n: s.moments.dims for n, s in stats.items()})}
    for metric in run.plan.readouts:
        metric.new_readout(mine, run.options)  # derives this process's share; the scorer itself is not kept
    for name, computed in run.world.union({name: s.computed() for name, s in mine.items()}).items():
        stats[name].adopt(computed)


def test_pass(run: Run, split, extra: Sequence, model_accuracy: ModelAccuracy | None, cka_passes: int,
              seed: int) -> Moments | None:
    """Read the test split once for its moments, the streams, the read-outs and the model's
    own accuracy; then the extra shuffled passes of repeatable streams (CKA)."""
    level = run.plan.moments["test"]
    moments = (Moments(run.num_classes, run.options.matmul_dtype, scatter=level == "scatter", samples=len(split),
                       skip=run.inputs.skip()) if level else None)
    names = run.capture.names
    run.streams = {}
    for m in run.plan.streams:
        run.streams[m.name] = m.new_stream(names, run.options)
    accs: list = [a for a in (moments, model_accuracy) if a is not None] + list(run.streams.values())
    accs += [r["test"] for r in run.readouts.values() if "test" in r] + list(extra)
    run.capture.model_output = model_accuracy is not None
    try:
        _pass(run, split, accs, "test pass")
    finally:
        run.capture.model_output = False
    run.passes.append("test")
    if moments is not None:
        run.note_gram_side("test", moments)
    repeat = [run.streams[m.name] for m in run.plan.streams if m.repeatable]
    for extra_pass in range(1, cka_passes if repeat else 1):
        _pass(run, split, repeat, f"CKA pass {extra_pass + 1}/{cka_passes}",
              generator=torch.Generator().manual_seed(seed + 1000 + extra_pass))
        run.passes.append(f"test (shuffled, {extra_pass + 1}/{cka_passes})")
    run.world.reduce([a for a in accs if not isinstance(a, FeatureCache)])  # after every pass: streams once
    for cache in extra:
        run.world.gather(cache, run.batch_size)
    return moments


# ---------------------------------------------------------------------------------------------- table
def point_rows(run: Run, split: str, moments: Moments, stats: dict[str, PointStats] | None = None) -> None:
    """Rows of every point metric on ``split`` (from ``stats``, the split's :class:`PointStats`
    when already made); each point's ``D x D`` state is released after. With several processes
    each computes the metrics of its share of the points and they share the values."""
    points_m = moments.points
    shared = stats if stats is not None else {}
    names = run.capture.names
    for name in names:
        bad = int(points_m[name].nonfinite)
        if bad:
            run.invalid[split].add(name)
            run.warnings.append(f"{split}: {bad} samples with NaN/Inf activations at {name}; "
                                "its metrics are marked invalid")
    absent = [c for c in range(run.num_classes) if points_m[names[0]].cn[c] == 0]
    if absent:
        run.warnings.append(f"{split}: classes absent from the sample: {absent}; class metrics use the others")
    metrics = run.plan.points_metrics()
    mine = set(_my_points(run, {name: points_m[name].dims for name in names}))
    values: dict[str, list[float]] = {}
    for name in names:
        point = points_m.pop(name)  # no view left behind, so that release() frees the state
        one = shared.pop(name, None)
        if name in mine:
            one = one or PointStats(point)
            with one.scatter_held():
                values[name] = [float("nan") if name in run.invalid[split] else metric.point_value(one)
                                for metric in metrics]
        if name == run.inputs.point:
            run.inputs.keep(split, point, one)  # after a cache miss: kept for the next analysis of this data
        del point, one
        moments.release(name)
    if run.world.parallel:  # each process measured its share of the points: every process gets them all
        values = run.world.union(values)
    for name in names:
        for metric, value in zip(metrics, values[name]):
            run.add(split, name, metric.table_name, value)


def _my_points(run: Run, widths: dict[str, int]) -> list[str]:
    """The points whose metrics this process computes: all alone; with several processes a share
    balanced by the cost of a point's dense linear algebra (``D³``), the same split on every process."""
    return run.world.share({name: float(d) ** 3 for name, d in widths.items()})


SCORE_CHUNK = 4096  # cached rows scored at a time by the read-outs


def _score_from_cache(run: Run, cache: FeatureCache, accs: list, whole: bool) -> None:
    """Feed the cached training features to ``accs`` and sum the counts over the processes (exact
    in any order). A ``whole`` cache (every process holds every row) is dealt in equal chunks;
    otherwise each process holds and scores its own rows."""
    world = run.world
    share = world.size if whole else 1
    chunks = share * max(1, -(-cache.size // (share * SCORE_CHUNK)))  # a multiple of the processes sharing it
    chunk_rows = max(1, -(-cache.size // chunks))
    for chunk, (feats, y) in enumerate(cache.batches(chunk_rows, device=run.device)):
        if not whole or chunk % world.size == world.rank:
            for acc in accs:
                acc.update(feats, y)
    world.reduce(accs)


def readout_rows(run: Run, cache: FeatureCache | None, points: list[str], train_split=None,
                 whole: bool = True) -> dict:
    """Score the read-outs on the training split, from ``cache`` (``whole``: gathered, see
    :func:`_score_from_cache`) or, without one, by reading ``train_split`` again (features too
    large to cache); their rows and summaries."""
    train_accs = [r["train"] for r in run.readouts.values() if "train" in r]
    if train_accs and cache is not None:
        _score_from_cache(run, cache, train_accs, whole)
    elif train_accs:
        _pass(run, train_split, train_accs, "train pass (read-out scoring)")
        run.world.reduce(train_accs)
        run.passes.append("train (read-out scoring)")
    summary: dict = {}
    for metric in run.plan.readouts:
        values = {split: acc.compute() for split, acc in run.readouts[metric.name].items()}
        if metric.pairwise:
            pair_rows(run, metric.table_name, values)
            continue
        for split in SPLITS:
            for name in run.capture.names:  # points without a read-out (non-finite training features): NaN
                run.add(split, name, metric.table_name, values[split].get(name, float("nan")), uses_train=True)
        if metric.summarise is not None:
            valid = {s: {p: (v if p not in run.invalid["train"] else float("nan")) for p, v in vals.items()}
                     for s, vals in values.items()}
            summary.update(metric.summarise(valid, points, run.options))
    return summary


def pair_rows(run: Run, row: str, values: dict[str, dict[tuple[str, str], float]]) -> None:
    """Rows of a pairwise read-out on the splits it was scored on (NaN for pairs with a point it
    could not fit)."""
    names = run.capture.names
    for split in values:
        for a in names:
            for b in names:
                run.add(split, a, row, values[split].get((a, b), float("nan")), b, uses_train=True)


def stream_rows(run: Run) -> dict:
    """Rows of every stream metric on the test split (an ``L x L`` matrix, or a value per
    point) and what they record."""
    names = run.capture.names
    record: dict = {}
    for metric in run.plan.streams:
        acc = run.streams[metric.name]
        computed = acc.compute()
        if isinstance(computed, dict):  # one value per point
            for name in names:
                run.add("test", name, metric.table_name, computed[name])
        else:  # an L x L matrix
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    run.add("test", a, metric.table_name, float(computed[i, j]), b)
        run.warnings.extend(getattr(acc, "notes", lambda: [])())
        record.update(getattr(acc, "record", lambda: {})())
    return record


# ---------------------------------------------------------------------------------------------- entry
def analyze_layers(  # noqa: PLR0913 (a public facade: readable keywords)
    model: nn.Module | str | Path, data: data_mod.Dataset | str, metrics: str | Sequence[str] = "default",
    points: str | Sequence[str] = "blocks", reduce: str = "pool2", batch_size: int = 256,
    device: str | torch.device = "auto", max_samples: int | None = 10_000, seed: int = 0,
    max_dim: int | None = DEFAULT_MAX_DIM, ncc_eps: float = 0.01, ridge: float = 1e-3,
    cache_budget: int = DEFAULT_BUDGET, precision: str = "float32", cka_passes: int = 1,
    data_root: str | Path | None = None, progress: bool | None = None, train_cache: FeatureCache | None = None,
    test_cache: FeatureCache | None = None, include_input: bool = True, model_accuracy: bool = True,
    memory_budget: int | None | Literal["auto"] = "auto", settings: AnalysisSettings | None = None,
) -> Results:
    """Statistics of every probe point of ``model`` on ``data``, from one pass per split.

    ``model`` is a module, a checkpoint path or a model spec (randomly initialised from
    ``seed``); ``data`` a Dataset or a spec. ``metrics`` is ``"default"``, ``"all"`` or
    registered names (:data:`tunnelscope.metrics.METRICS`), with options in the spec grammar
    (``"ncc[eps=0.05],cka[passes=10]"``); only what they need is computed (CKA alone reads the
    test split once). Each split is read at most ``max_samples`` samples (a seeded random
    subset; ``None`` for all). ``batch_size`` is also the CKA minibatch size ``n`` (>= 4).
    ``precision`` is that of the per-batch products of centred features and of the NCC and
    ridge scores (``float32`` default, or ``float64``); every running sum is float64.
    The settings may come whole as ``settings`` (:class:`AnalysisSettings`); keywords left at
    their defaults do not override it. ``train_cache`` / ``test_cache`` (feature caches sized
    for the sampled splits, owned by the caller) are filled by the same passes, for linear
    probes to train from. ``include_input`` adds layer 0 (the input, reduced like the points);
    ``model_accuracy`` records the model's own test accuracy in ``summary["model_accuracy"]``.
    ``memory_budget`` (bytes; ``"auto"``: the memory available now; None: no check) refuses
    a plan that would not fit before anything is allocated. A split sample of fewer than 2
    samples is refused. Inside an initialised ``torch.distributed`` group the processes share
    every pass, by whole batches (:mod:`tunnelscope.engine.distributed`). Returns a
    :class:`~tunnelscope.results.Results` (``dataset``: the ID data's name).
    """
    names, options = metric_options(metrics)
    chosen = with_metric_options(settings_from(settings, locals()), options)
    return layer_statistics(model, data, names, chosen, caches=(train_cache, test_cache),
                            model_accuracy=model_accuracy, cache_budget=cache_budget, memory_budget=memory_budget)


Caches = tuple[FeatureCache | None, FeatureCache | None]


def layer_statistics(model: nn.Module | str | Path, data: data_mod.Dataset | str, metrics: str | Sequence[str],
                     settings: AnalysisSettings, *, caches: Caches = (None, None), model_accuracy: bool = True,
                     cache_budget: int = DEFAULT_BUDGET, memory_budget: int | None | Literal["auto"] = "auto"
                     ) -> Results:
    """:func:`analyze_layers` with its settings whole (the engine's entry point)."""
    s = settings
    wanted, explicit = parse_metrics(metrics)
    _check_settings(wanted, s.batch_size)
    dev = resolve_device(s.device)
    dataset = as_dataset(data, root=s.data_root)
    net, model_name, model_info = resolve_model(model, dev, dataset, seed=s.seed)
    example = next(dataset.test.batches(2, device=dev))[0]
    capture = capture_for(net, s.points_request, reduce=s.reduce, max_dim=s.max_dim, seed=s.seed, example=example,
                          include_input=s.include_input)
    widths = list(capture.widths(example).values())
    train_cache, test_cache = caches
    plan = make_plan(wanted, explicit, widths, train_cache is not None)
    budget = available_memory(dev) if memory_budget == "auto" else memory_budget
    splits = _sample(dataset, s.max_samples, s.seed, plan, train_cache, test_cache)
    world = current_world()
    for split, (_, n) in splits.items():
        if split == "test" or plan.train_pass:
            world.check_batches(n, s.batch_size, f"the {split} split of {dataset.spec}")
    need = check_memory(plan, widths, dataset.num_classes, budget, {k: n for k, (_, n) in splits.items()})
    options = Options(eps=s.ncc_eps, ridge=s.ridge,
                      matmul_dtype=torch.float64 if s.precision == "float64" else torch.float32)
    tic = time.perf_counter()
    inputs = open_input_cache(s.input_cache, capture, splits, plan.moments, widths,
                              {"batch_size": s.batch_size, "precision": s.precision, "classes": dataset.num_classes,
                               "device": dev, "processes": world.size})
    run = Run(capture, plan, options, dataset.num_classes, s.batch_size, dev, None, widths=widths, world=world,
              inputs=inputs)
    run, summary = _passes(run, splits, s, cache_budget, (train_cache, test_cache), model_accuracy)
    record = stream_rows(run)
    for w in run.warnings:
        warnings.warn(w, stacklevel=2)
    recorded = {"model": model_name, "model_info": model_info, "data": dataset.spec, "max_samples": s.max_samples,
                "seed": s.seed, "points": s.points_request, "max_dim": s.max_dim, "batch_size": s.batch_size,
                "cka_passes": s.cka_passes, "eps": s.ncc_eps, "ridge": s.ridge, "precision": s.precision,
                "device": dev, "class_names": dataset.class_names, "data_info": dataset.info,
                "samples": {k: (n if k == "test" or plan.train_pass else 0) for k, (_, n) in splits.items()},
                "gram_side": run.gram_side, "processes": world.size}
    config = _config(recorded, capture, plan, run.passes, run.warnings, record, need)
    config["seconds"] = time.perf_counter() - tic
    config["id_dataset"] = dataset.spec
    config["input_cache"] = inputs.record()
    table = pd.DataFrame(run.rows, columns=TABLE_COLUMNS).assign(model=model_name, dataset=dataset.spec)
    if s.cka_random:
        table = _with_random_reference(net, dataset, table, s, config)
    return Results(table.reindex(columns=COLUMNS), as_summary(summary), config)


def _with_random_reference(net: nn.Module, dataset: data_mod.Dataset, table: pd.DataFrame, s: AnalysisSettings,
                           config: dict) -> pd.DataFrame:
    """``table`` with the ``cka_random`` rows of ``cka[random=K]`` (their record into ``config``)."""
    from .random_reference import cka_random_rows

    if not (table.metric == "cka").any():
        raise ConfigError("cka[random=K] compares the model's CKA with random networks': add cka to the metrics")
    quiet = s.replace(cka_random=0, progress=False)

    def cka_of(copy: nn.Module) -> pd.DataFrame:
        return layer_statistics(copy, dataset, ["cka"], quiet, model_accuracy=False, memory_budget=None).matrix("cka")

    rows, config["cka_random"] = cka_random_rows(net, table, s, cka_of)
    return pd.concat([table, rows], ignore_index=True)


def _passes(run: Run, splits: dict[str, tuple], settings: AnalysisSettings, cache_budget: int, caches: tuple,
            model_accuracy: bool) -> tuple[Run, dict]:
    """The training pass, the test pass and the read-outs; returns the run and the summary."""
    train_cache, test_cache = caches
    run.warnings += [f"{name} not computed: {why}" for name, why in run.plan.skipped.items()]
    own = ModelAccuracy() if model_accuracy else None
    n_train = splits["train"][1]
    reread = (train_cache is None and run.plan.train_cache
              and n_train * sum(run.widths) * 4 > cache_budget)
    if reread:  # scoring reads the training split again rather than caching more than the budget
        run.plan.train_cache = False
    cache_ctx = (FeatureCache(n_train, cache_budget) if train_cache is None
                 else contextlib.nullcontext(train_cache))
    with progress_bar(settings.progress) as bars, cache_ctx as cache:
        run.bars = bars
        train_pass(run, splits["train"][0], cache, gather=train_cache is not None)  # ours: read-outs alone read it
        if cache.spilled_to is not None:
            run.warnings.append(f"feature cache of {cache.nbytes / 2**20:.0f} MiB exceeded the budget "
                                f"({cache_budget / 2**20:.0f} MiB) and was spilled to {cache.spilled_to}")
        test_m = test_pass(run, splits["test"][0], [c for c in (test_cache,) if c is not None], own,
                           settings.cka_passes, settings.seed)
        if test_m is not None:
            point_rows(run, "test", test_m, run.inputs.stats("test", test_m))
        scored = None if reread else cache
        summary = {MODEL_ACCURACY: own.compute() if own is not None else None,
                   **readout_rows(run, scored, run.capture.points, splits["train"][0], whole=train_cache is not None)}
    return run, summary


def _check_settings(wanted: list[Metric], batch_size: int) -> None:
    """Refuse a batch smaller than a wanted metric's minibatch (the other settings are checked
    by :class:`AnalysisSettings`)."""
    for metric in wanted:
        if batch_size < metric.min_batch:
            raise ConfigError(f"batch_size {batch_size} is below {metric.min_batch}, the smallest minibatch "
                              f"{metric.name} allows")


def _sample(dataset: data_mod.Dataset, max_samples: int | None, seed: int, plan: Plan,
            train_cache: FeatureCache | None, test_cache: FeatureCache | None) -> dict[str, tuple]:
    """The seeded split samples, checked for size and against the callers' caches."""
    splits = {"train": data_mod.sample_split(dataset.train, max_samples, seed),
              "test": data_mod.sample_split(dataset.test, max_samples, seed + 1)}
    for split, (_, n) in splits.items():
        if split == "test" or plan.train_pass:
            check_statistics_samples(n, split, dataset.spec)
    for given, (_, n) in ((train_cache, splits["train"]), (test_cache, splits["test"])):
        if given is not None and given.capacity != n:
            raise ConfigError(f"a shared feature cache holds {given.capacity} rows but the split sample has {n}")
    return splits


def _config(s: dict, capture: Capture, plan: Plan, passes: list[str], warned: list[str], record: dict,
            need: int) -> dict:
    """Everything that changes a number: the caller's settings ``s`` and what the plan and passes did."""
    points, seed, dev = s["points"], s["seed"], s["device"]
    sampling = (f"seeded random subset of at most {s['max_samples']} per split (seed {seed} train, {seed + 1} test)"
                if s["max_samples"] else "all samples")
    return {
        "model": s["model"], **s["model_info"], "data": s["data"],
        "points_set": points if isinstance(points, str) else list(points), "points": capture.points,
        "input_point": capture.input_point, "layout": capture.layout, "reduce": str(capture.reduction),
        "max_dim": s["max_dim"], "metrics": [m.name for m in plan.metrics], "skipped_metrics": plan.skipped,
        "passes": passes, "moments": plan.moments, "batch_size": s["batch_size"], "cka_minibatch": s["batch_size"],
        "cka_passes": s["cka_passes"], "cka_batches": record.get("cka_batches"), "samples": s["samples"],
        **{k: record[k] for k in ("cka_blocks", "cka_null") if k in record},
        "sampling": sampling, "seed": seed, "rank_tol": RANK_TOL, "ncc_eps": s["eps"],
        "ridge_lambda": f"{s['ridge']} * tr(Σ)/D", "precision": s["precision"], "device": str(dev),
        "planned_bytes": need, "gram_side": s["gram_side"], "processes": s["processes"],
        "environment": environment(dev),
        "class_names": s["class_names"],
        "data_info": s["data_info"], "versions": package_versions(), "warnings": warned,
    }
