"""``probe_layers``: linear probes at every probe point, in and out of distribution, and the
tunnel's verdict (METRICS.md §2-§4).

For the ID dataset and each OOD dataset, the model runs once over the training split and
once over the test split; the features go to a feature cache, and the probes of every
point are trained jointly from it (:mod:`tunnelscope.probes`). OOD inputs are resized
and converted to the backbone's input shape when they differ, and that is recorded.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..capture import DEFAULT_MAX_DIM, Capture, capture_for
from ..capture.cache import DEFAULT_BUDGET, FeatureCache
from ..data import sample_split
from ..data.objects import as_dataset, ood_dataset
from ..device import resolve_device
from ..errors import InsufficientDataError
from ..io import jsonable
from ..metrics.base import ModelAccuracy
from ..metrics.collapse import NCCAccuracy, effective_depth_summary
from ..models import resolve_model
from ..probes import PROTOCOL_NOTES, ProbeConfig, ProbeResult, c_reference, merge_probe_results, train_probe_seeds
from ..progress import progress_bar
from ..results import COLUMNS, Results
from ..summary import (
    BEST_TRANSFER_LAYER,
    C_SENSITIVITY,
    FLAGS,
    ID_GAIN,
    ID_GAIN_SHARE,
    MEAN_RETAINED,
    MODEL_ACCURACY,
    OOD,
    OOD_SKIPPED,
    POINTS,
    STRENGTH,
    TUNNEL_START,
    VERDICT_VALID,
    as_summary,
    ci_key,
)
from ..tunnel import strength, summarize, tunnel_start
from ..uncertainty import (
    DEFAULT_RESAMPLES,
    LEVEL,
    accuracy_interval,
    crossfit_folds,
    crossfit_retained,
    interval,
    resampled_curves,
    tunnel_intervals,
)
from ..verdict import (
    Flag,
    c_sensitivity_flags,
    check_probe_samples,
    curve_flags,
    model_flags,
    probe_flags,
    verdict,
)
from ..versions import environment, package_versions
from .distributed import World, current_world
from .settings import AnalysisSettings, settings_from


def _read(cache: FeatureCache, **info) -> tuple[FeatureCache, dict, torch.Tensor, dict]:
    """The cache, its arrays (in-memory ones are stacked by the probe trainer, memory-mapped ones
    read a minibatch at a time), its labels, and its description (plus ``info``)."""
    if cache.size != cache.capacity:
        raise ValueError(f"feature cache filled {cache.size} of {cache.capacity} rows")
    info = {"samples": cache.size, "cache_mib": cache.nbytes / 2**20,
            "spilled": str(cache.spilled_to) if cache.spilled_to else None, **info}
    return cache, dict(cache.arrays), torch.from_numpy(cache.labels), info


def class_means(cache: FeatureCache, num_classes: int, device, points: list[str] | None = None) -> dict[str, Tensor]:
    """``(C, D)`` float64 class means of every point (of ``points``) in a feature cache; rows of
    absent classes are NaN. Per-class sums of each batch in float64, with none of the norms and
    products of :class:`~tunnelscope.metrics.moments.Moments` (NCC needs the means alone)."""
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for feats, y in cache.batches(device=device, points=points):
        y = y.long()
        for name, x in feats.items():
            total = sums.setdefault(name, torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=device))
            total.index_add_(0, y, x.double())
        counts += torch.bincount(y, minlength=num_classes).double()
    return {name: total / counts[:, None] for name, total in sums.items()}


def _ncc(train: FeatureCache, test: FeatureCache, num_classes: int, device,
         points: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Nearest-class-centre accuracy per point (of ``points``, default all) on both splits, class
    means from the train cache."""
    means = class_means(train, num_classes, device, points)
    out = {}
    for split, cache in (("train", train), ("test", test)):
        acc = NCCAccuracy(means)
        for feats, y in cache.batches(device=device, points=points):
            acc.update(feats, y)
        out[split] = acc.compute()
    return out


@dataclass
class _Fitted:
    """One dataset's probes: per-seed results, their mean accuracies, and bootstrap curves."""

    results: list[ProbeResult]
    test: dict[str, float]
    train: dict[str, float]
    samples: np.ndarray  # (resamples, points) bootstrap accuracy curves, in point order
    retained: float = math.nan  # cross-fitted % retained over the tunnel's points (an OOD dataset's)
    retained_samples: np.ndarray | None = None  # its value on each resample of ``samples``
    seed: int = 0  # of the resamples and the cross-fitting folds

    @classmethod
    def of(cls, results: list[ProbeResult], names: list[str], resamples: int, seed: int,
           tunnel_cols: list[int] | None = None) -> _Fitted:
        """The probes' accuracies and bootstrap curves; with ``tunnel_cols`` (the columns of
        points 1 … penultimate) also the cross-fitted % retained, on the same resamples."""
        mean = lambda attr: {n: float(np.mean([getattr(r, attr)[n] for r in results])) for n in names}  # noqa: E731
        correct = [np.stack([r.correct[n] for n in names], axis=1) for r in results]
        draw = None
        if resamples:
            samples, draw = resampled_curves(correct, resamples, np.random.default_rng(seed))
        else:
            samples = np.full((0, len(names)), np.nan)
        fit = cls(results, mean("accuracy"), mean("train_accuracy"), samples, seed=seed)
        if tunnel_cols and len(correct[0]) >= 2:
            part = [c[:, tunnel_cols] for c in correct]
            fit.retained = fit.crossfitted(part)
            if draw is not None:
                fit.retained_samples = crossfit_retained(part, crossfit_folds(len(part[0]), seed), draw)
        return fit

    def crossfitted(self, correct: list[np.ndarray]) -> float:
        """The cross-fitted % retained of per-seed ``(test samples, tunnel points)`` correctness
        matrices, on this dataset's folds."""
        return float(crossfit_retained(correct, crossfit_folds(len(correct[0]), self.seed))[0])

    def interval(self, names: list[str]) -> dict[str, tuple[float, float]]:
        """Each point's test-accuracy interval: Clopper-Pearson over the test samples for one probe
        seed (exact coverage near 0 and 1 too); the two-level bootstrap over samples and seeds for
        several."""
        if not len(self.samples):
            return {n: (math.nan, math.nan) for n in names}
        if len(self.results) == 1:
            correct = self.results[0].correct
            return {n: accuracy_interval(int(correct[n].sum()), len(correct[n])) for n in names}
        lo, hi = interval(self.samples)
        return {n: (float(a), float(b)) for n, a, b in zip(names, lo, hi)}


def probe_layers(  # noqa: PLR0913 (a public facade: readable keywords)
    model: nn.Module | str | Path,
    data: data_mod.Dataset | str,
    ood: Sequence[str | data_mod.Dataset] = (),
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    probe: ProbeConfig | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    max_dim: int | None = DEFAULT_MAX_DIM,
    cache_budget: int = DEFAULT_BUDGET,
    cache_dtype: str = "float32",
    taus: Sequence[float] = (0.95, 0.98),
    ncc_eps: float = 0.01,
    data_root: str | Path | None = None,
    progress: bool | None = None,
    id_features: tuple[FeatureCache, FeatureCache] | None = None,
    id_ncc: bool = True,
    include_input: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    model_info: dict | None = None,
    model_accuracy: float | None = None,
    settings: AnalysisSettings | None = None,
) -> Results:
    """Train linear probes at every point on the ID data and on each OOD dataset.

    ``ood`` is a list of dataset specs or Datasets; each gets its own probes, trained on its training
    split and scored on its test split, reading the same backbone. ``probe`` sets the
    protocol (default ``lbfgs``, run to convergence; ``probe.seeds`` probes per point).
    ``max_train`` / ``max_test`` cap the samples read per split (seeded subsets).
    ``include_input`` adds layer 0 (the input, reduced like the points) as a reference; the
    tunnel's metrics read points 1 … penultimate only. Every test accuracy and every tunnel
    metric gets a 95% bootstrap interval over test samples (``resamples``; 0 for none) and
    probe seeds. Nearest-class-centre accuracy is measured on the same cached features (class
    means from each dataset's train split) and gives the ID ``effective_depth`` (first point
    with NCC train error <= ``ncc_eps``). ``id_features`` (train and test caches already
    filled by the statistics pass with the same points, see :func:`tunnelscope.analyze`)
    replaces the ID passes; the caller closes them, and gives ``model_accuracy`` (the model's
    own ID test accuracy) measured in that pass. ``id_ncc=False`` skips the ID
    nearest-class-centre scores when the caller has them already. ``model_info`` describes a
    module passed directly (its training ``step``, or ``untrained``). Refuses datasets with
    one class or too few samples per class; ``summary["flags"]`` and ``summary["verdict"]``
    say what the numbers can and cannot show. The settings may come whole as ``settings``
    (:class:`AnalysisSettings`; without it nothing is capped unless ``max_train`` /
    ``max_test`` say so); keywords left at their defaults do not override it.
    """
    chosen = settings_from(settings or AnalysisSettings(max_samples=None), locals())
    reuse = IdReuse(id_features, id_ncc, model_accuracy)
    return probe_statistics(model, data, ood, chosen, reuse=reuse, model_info=model_info,
                            cache=(cache_budget, cache_dtype), taus=taus)


@dataclass
class IdReuse:
    """What the statistics pass already has for the ID data: its feature caches (train, test),
    whether it measured NCC (``id_ncc=False``: it did), and the model's own accuracy."""

    features: tuple[FeatureCache, FeatureCache] | None = None
    id_ncc: bool = True
    model_accuracy: float | None = None


def probe_statistics(model: nn.Module | str | Path, data: data_mod.Dataset | str,
                     ood: Sequence[str | data_mod.Dataset], settings: AnalysisSettings, *,
                     reuse: IdReuse | None = None, model_info: dict | None = None,
                     cache: tuple[int, str] = (DEFAULT_BUDGET, "float32"),
                     taus: Sequence[float] = (0.95, 0.98)) -> Results:
    """:func:`probe_layers` with its settings whole (the engine's entry point); ``cache`` is the
    feature cache's byte budget and dtype."""
    s = settings
    cfg = s.probe or ProbeConfig(seed=s.seed)
    dev = resolve_device(s.device)
    net, model_name, resolved_info = resolve_model(model, dev)
    model_info = {**resolved_info, **(model_info or {})}
    id_ds = as_dataset(data, root=s.data_root)
    capture = _capture(net, id_ds, dev, s)
    datasets = _datasets(id_ds, ood, s.data_root)
    run = _Probing(capture=capture, settings=s, cfg=cfg, dev=dev, model_name=model_name, reuse=reuse or IdReuse(),
                   cache_budget=cache[0], cache_dtype=cache[1])
    tic = time.perf_counter()
    with progress_bar(s.progress) as bars:
        for key, (ds, changes) in datasets.items():
            run.probe_dataset(key, ds, changes, bars)
    table = pd.DataFrame(run.rows, columns=COLUMNS)
    summary = run.judged_summary(datasets, model_info, id_ds.num_classes, taus, s.ncc_eps)
    config = run.config(model_info, id_ds.spec, tic)
    return Results(table, as_summary(summary), config)


def _capture(net: nn.Module, id_ds: data_mod.Dataset, dev: torch.device, s: AnalysisSettings) -> Capture:
    """The capture of ``net``'s probe points, shaped by an example batch of the ID test split."""
    example = next(id_ds.test.batches(2, device=dev))[0]
    return capture_for(net, s.points_request, reduce=s.reduce, max_dim=s.max_dim, seed=s.seed, example=example,
                       include_input=s.include_input)


def _datasets(id_ds: data_mod.Dataset, ood: Sequence[str | data_mod.Dataset],
              data_root: str | Path | None) -> dict[str, tuple[data_mod.Dataset, list[str]]]:
    """The ID dataset (key ``"id"``) and every OOD dataset, adapted to the ID input shape, with
    the changes made; refuses an OOD dataset with a single class."""
    datasets: dict[str, tuple[data_mod.Dataset, list[str]]] = {"id": (id_ds, [])}
    for item in ood:
        spec, ds, changes = ood_dataset(item, id_ds.input_shape, data_root)
        if ds.num_classes < 2:
            raise InsufficientDataError(f"OOD dataset {spec!r} has a single class; a probe needs at least two")
        datasets[spec] = (ds, changes)
    return datasets


@dataclass
class _Probing:
    """One ``probe_layers`` run: its settings, and the rows, records, fitted probes and flags
    its datasets add up to."""

    capture: Capture
    settings: AnalysisSettings
    cfg: ProbeConfig
    dev: torch.device
    model_name: str
    reuse: IdReuse
    cache_budget: int
    cache_dtype: str
    rows: list[dict] = field(default_factory=list)
    info: dict[str, dict] = field(default_factory=dict)
    fitted: dict[str, _Fitted] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    ncc_id_train: dict[str, float] | None = None
    world: World = field(default_factory=current_world)  # the processes sharing the passes

    def probe_dataset(self, key: str, ds: data_mod.Dataset, changes: list[str], bars) -> None:
        """Read one dataset's splits, train its probes and NCC, and keep their rows and record."""
        shared = self.reuse.features if key == "id" else None  # the statistics' caches, which they own
        (tr_cache, tr, ytr, tr_info), (te_cache, te, yte, te_info) = (
            self._shared_splits(shared) if shared is not None else self._read_splits(key, ds, bars))
        try:
            self.flags += check_probe_samples(ytr, yte, ds.num_classes, "the ID data" if key == "id" else key,
                                              ds.class_names)
            results = self._train(tr, ytr, te, yte, ds.num_classes)
            ncc = self._ncc(tr_cache, te_cache, ds.num_classes) if key != "id" or self.reuse.id_ncc else None
            if key == "id" and ncc:
                self.ncc_id_train = ncc["train"]
        finally:
            del tr, te
            if shared is None:
                tr_cache.close()
                te_cache.close()
        self._record(key, ds, changes, results, ncc, tr_info, te_info)

    def _train(self, tr: dict, ytr: torch.Tensor, te: dict, yte: torch.Tensor, num_classes: int) -> list[ProbeResult]:
        """The probes of every point; with several processes, per-point protocols (``lbfgs``,
        ``ridge``) split the points between them by width and share the results (``harun``
        trains all points jointly, from one draw: every process trains it whole)."""
        names = list(tr)
        if not self.world.parallel or self.cfg.protocol == "harun":
            return train_probe_seeds(tr, ytr, te, yte, num_classes, self.cfg, device=self.dev,
                                     progress=self.settings.progress)
        mine = self.world.share({n: np.shape(tr[n])[1] for n in names})  # by width
        local = (train_probe_seeds({n: tr[n] for n in mine}, ytr, {n: te[n] for n in mine}, yte, num_classes,
                                   self.cfg, device=self.dev, progress=False) if mine else None)
        parts = [p for p in self.world.collect(local) if p is not None]
        return [merge_probe_results([part[k] for part in parts], names) for k in range(len(parts[0]))]

    def _ncc(self, train: FeatureCache, test: FeatureCache, num_classes: int) -> dict[str, dict[str, float]]:
        """NCC accuracy per point on both splits; with several processes each measures its share
        of the points (the probes' split, by width) and the results are shared."""
        if not self.world.parallel:
            return _ncc(train, test, num_classes, self.dev)
        mine = self.world.share({n: a.shape[1] for n, a in train.arrays.items()})  # the probes' split
        local = _ncc(train, test, num_classes, self.dev, mine) if mine else {"train": {}, "test": {}}
        by_point = self.world.union({n: (local["train"][n], local["test"][n]) for n in mine})
        return {split: {n: by_point[n][i] for n in train.arrays} for i, split in enumerate(("train", "test"))}

    def _shared_splits(self, shared: tuple[FeatureCache, FeatureCache]) -> tuple[tuple, tuple]:
        """The ID train and test caches the statistics pass filled, checked to hold the same points."""
        train, test = (_read(c, shared_with_statistics=True) for c in shared)
        if list(train[1]) != self.capture.names:
            raise ValueError(f"shared feature caches hold points {list(train[1])}, not {self.capture.names}")
        return train, test

    def _read_splits(self, key: str, ds: data_mod.Dataset, bars) -> tuple[tuple, tuple]:
        """One model pass over each split of ``ds`` into a feature cache; the ID test pass also
        measures the model's own accuracy when it is not known yet."""
        label, s = ("ID" if key == "id" else key), self.settings
        train = self._features(sample_split(ds.train, s.train_samples, s.seed), bars, f"{label} train")
        own = ModelAccuracy()
        self.capture.model_output = key == "id" and self.reuse.model_accuracy is None
        try:
            test = self._features(sample_split(ds.test, s.test_samples, s.seed + 1), bars, f"{label} test", [own])
        finally:
            self.capture.model_output = False
        if key == "id" and self.reuse.model_accuracy is None:
            self.reuse.model_accuracy = own.compute()
        return train, test

    def _features(self, sampled: tuple, bars, description: str,
                  extra: Sequence = ()) -> tuple[FeatureCache, dict, torch.Tensor, dict]:
        """One model pass over a sampled split ``(split, n)`` into a feature cache (``extra``
        accumulators read the same batches); the caller closes the cache."""
        (chosen, n), budget, batch = sampled, self.cache_budget, self.settings.batch_size
        self.world.check_batches(n, batch, description)
        cache = FeatureCache(n, budget, self.cache_dtype)
        for feats, y in self.capture.stream(self.world.local(chosen, batch), batch, self.dev, progress=bars,
                                            description=description):
            cache.update(feats, y)
            for acc in extra:
                acc.update(feats, y)
        self.world.gather(cache, batch)  # every process holds every row, in the split's order
        self.world.reduce(extra)
        if cache.spilled_to is not None:  # stacklevel 5: the caller of probe_layers, through _Probing
            warnings.warn(f"{description}: features ({cache.nbytes / 2**20:.0f} MiB) exceed the cache budget "
                          f"({budget / 2**20:.0f} MiB); spilled to memory-mapped files in {cache.spilled_to}",
                          stacklevel=5)
        return _read(cache)

    def _record(self, key: str, ds: data_mod.Dataset, changes: list[str], results: list[ProbeResult],
                ncc: dict | None, tr_info: dict, te_info: dict) -> None:
        """Keep one dataset's fitted probes, its table rows and its record for the config."""
        names = self.capture.names
        tunnel_cols = None if key == "id" else [names.index(n) for n in self.capture.points]
        fit = self.fitted[key] = _Fitted.of(results, names, self.settings.resamples,
                                            self.settings.seed + 17 * len(self.fitted), tunnel_cols)
        name = ds.spec if key == "id" else key  # rows name the ID data by its spec
        self.rows += _rows(self.model_name, name, names, self.capture, results, fit, ncc)
        self.info[key] = {"spec": ds.spec, "classes": ds.num_classes, "adapted": changes, "train": tr_info,
                          "test": te_info, "diverged": sorted({n for r in results for n in r.diverged}),
                          "unconverged": [n for n in names if not all(r.converged[n] for r in results)],
                          "iterations": dict(results[0].iterations), "epochs": dict(results[0].epoch)}
        if results[0].c:  # lbfgs: each point's C and how it was set
            self.info[key].update(probe_c=dict(results[0].c), c_selection=results[0].config.get("c_selection"))

    def judged_summary(self, datasets: dict, model_info: dict, num_classes: int, taus: Sequence[float],
                       ncc_eps: float) -> dict:
        """The tunnel's metrics with the flags on the model, the probes and the curve, the effective
        depth, and the verdict they allow."""
        fitted, modules, input_point = self.fitted, self.capture.points, self.capture.input_point
        summary = _summary(fitted, datasets, self.capture.names, modules, taus)
        self.flags += model_flags(model_info, self.reuse.model_accuracy, num_classes)
        self.flags += probe_flags({k: v["unconverged"] for k, v in self.info.items()
                                   if k == "id" or k not in summary[OOD_SKIPPED]},
                                  {k: v["diverged"] for k, v in self.info.items()})
        if TUNNEL_START in summary:
            upper = fitted["id"].interval(modules)
            self.flags += curve_flags([fitted["id"].test[n] for n in modules],
                                      fitted["id"].test.get(input_point) if input_point else None,
                                      upper=[upper[n][1] for n in modules])
        self.flags += c_sensitivity_flags(summary.get(C_SENSITIVITY, []))
        summary.update(effective_depth_summary(self.ncc_id_train or {}, modules, ncc_eps))
        summary.update({MODEL_ACCURACY: self.reuse.model_accuracy, FLAGS: [f.as_dict() for f in self.flags],
                        VERDICT_VALID: not any(f.blocking for f in self.flags)})
        summary["verdict"] = verdict(summary, modules)
        return summary

    def config(self, model_info: dict, id_spec: str, tic: float) -> dict:
        """The run's configuration: model, points, probe protocol, datasets, intervals and environment."""
        cfg, capture, seed, dev = self.cfg, self.capture, self.settings.seed, self.dev
        return {"model": self.model_name, **model_info, "points": capture.points, "input_point": capture.input_point,
                "reduce": str(capture.reduction), "layout": capture.layout,
                "probe": {**vars(cfg), "protocol_note": PROTOCOL_NOTES[cfg.protocol]}, "selection_note": (
                    "selected on the test split (the papers' behaviour): accuracies are optimistic"
                    if cfg.select == "test" else None), "datasets": self.info, "seed": seed,
                "batch_size": self.settings.batch_size, "intervals": {
                    "level": LEVEL, "resamples": self.settings.resamples, "method": (
                    "percentile bootstrap over test samples"
                    + (f" and {cfg.seeds} probe seeds" if cfg.seeds > 1 else "") + f" (seed {seed})"),
                    "per_point_accuracy": ("Clopper-Pearson over test samples" if cfg.seeds == 1 else
                                           "the bootstrap above")},
                "device": str(dev), "environment": environment(dev), "versions": package_versions(),
                "seconds": time.perf_counter() - tic, "id_dataset": id_spec}


def _rows(model: str, dataset: str, names: list[str], capture: Capture, results: list[ProbeResult],
          fit: _Fitted, ncc: dict | None) -> list[dict]:
    """The tidy rows of one dataset's probes: ``probe_acc`` on both splits (test rows with their
    interval; valid when every seed's probe converged), ``probe_loss`` and ``probe_converged``
    (train rows), and ``ncc_acc`` on both splits when nearest-class-centre accuracy was measured."""
    ci = fit.interval(names)
    rows = []
    for name in names:
        layer = capture.layer(name)
        base = {"model": model, "dataset": dataset, "point": name, "layer": layer,
                "depth": layer / len(capture.points), "other_point": None, "other_layer": None,
                "ci_lo": math.nan, "ci_hi": math.nan, "reference": None}
        converged = all(r.converged[name] for r in results)
        trusted = converged and not any(name in r.diverged for r in results)
        rows.append({**base, "split": "test", "metric": "probe_acc", "value": fit.test[name], "valid": trusted,
                     "ci_lo": ci[name][0], "ci_hi": ci[name][1]})
        rows.append({**base, "split": "train", "metric": "probe_acc", "value": fit.train[name], "valid": trusted})
        loss = float(np.mean([r.train_loss[name] for r in results]))
        rows.append({**base, "split": "train", "metric": "probe_loss", "value": loss,
                     "valid": not any(name in r.diverged for r in results)})
        rows.append({**base, "split": "train", "metric": "probe_converged", "value": float(converged), "valid": True})
        rows += _c_rows(base, results[0], name)
        if ncc is not None:
            for split in ("test", "train"):
                value = ncc[split][name]
                rows.append({**base, "split": split, "metric": "ncc_acc", "value": value,
                             "valid": not math.isnan(value)})
    return rows


def _c_rows(base: dict, result: ProbeResult, name: str) -> list[dict]:
    """An ``lbfgs`` point's ``probe_c`` (the C its probe used; train split) and, when C was chosen
    on data, every C of the grid as reference rows ``"C=<C>"``: accuracy on the held-out part of
    the training split (split ``val``) and on the test split (with its Clopper-Pearson interval)."""
    rows = []
    if name in result.c:
        rows.append({**base, "split": "train", "metric": "probe_c", "value": result.c[name], "valid": True})
    for c, probe in result.grid.get(name, {}).items():
        ref = {**base, "metric": "probe_acc", "reference": c_reference(c), "valid": probe.converged}
        lo, hi = accuracy_interval(int(probe.correct.sum()), len(probe.correct))
        rows.append({**ref, "split": "val", "value": probe.val_accuracy})
        rows.append({**ref, "split": "test", "value": float(probe.correct.mean()) if len(probe.correct) else math.nan,
                     "ci_lo": lo, "ci_hi": hi})
    return rows


def c_sensitivity(fitted: dict[str, _Fitted], modules: list[str], ood: Sequence[str],
                  taus: Sequence[float]) -> list[dict]:
    """The headline under each C of the probes' grid (when the ID probes chose C on data): tunnel
    start, final ID accuracy, cross-fitted mean % retained over ``ood``, strength, best transfer
    layer, and how many ID points chose that C. A dataset whose probes did not choose (too few
    training samples) keeps its one fitted curve in every row. With several probe seeds the grid
    is the first seed's (the others refit at its choice), so the rows are that seed's."""
    id_grid = fitted["id"].results[0].grid
    if not id_grid or not all(n in id_grid for n in modules):
        return []
    rows = []
    for c in sorted(set.intersection(*(set(id_grid[n]) for n in modules))):
        def correct(key: str, c: float = c) -> np.ndarray:
            grid = fitted[key].results[0].grid
            if all(c in grid.get(n, {}) for n in modules):
                return np.stack([grid[n][c].correct for n in modules], axis=1)
            return np.stack([fitted[key].results[0].correct[n] for n in modules], axis=1)

        id_curve = correct("id").mean(0)
        row: dict[str, object] = {"C": c, TUNNEL_START: tunnel_start(id_curve, taus[0]),
                                  "id_final": float(id_curve[-1]),
                                  "points_choosing": sum(fitted["id"].results[0].c.get(n) == c for n in modules)}
        if ood:
            retained = float(np.mean([fitted[k].crossfitted([correct(k)]) for k in ood]))
            row.update({MEAN_RETAINED: retained, STRENGTH: strength(retained),
                        BEST_TRANSFER_LAYER: int(np.argmax(np.mean([correct(k).mean(0) for k in ood], 0))) + 1})
        rows.append(row)
    return rows


def _summary(fitted: dict[str, _Fitted], datasets: dict, names: list[str], modules: list[str],
             taus: Sequence[float]) -> dict:
    """The tunnel's metrics (points 1 … penultimate) with their bootstrap intervals."""
    cols = [names.index(n) for n in modules]
    curves = {k: ([f.test[n] for n in modules], datasets[k][0].num_classes) for k, f in fitted.items()}
    finite = {k: bool(np.isfinite(c).all()) for k, (c, _) in curves.items()}
    ood_curves = {k: v for k, v in curves.items() if k != "id" and finite[k]}
    if not finite["id"]:
        return {POINTS: len(modules), OOD_SKIPPED: [k for k in curves if k != "id"], OOD: []}
    summary = summarize(curves["id"][0], curves["id"][1], ood_curves, taus)
    summary[OOD_SKIPPED] = [k for k, ok in finite.items() if k != "id" and not ok]  # a probe diverged there
    _crossfitted(summary, fitted)
    if ood_curves:
        mean = np.mean([curve for curve, _ in ood_curves.values()], axis=0)
        summary[BEST_TRANSFER_LAYER] = int(np.argmax(mean)) + 1
    if len(fitted["id"].samples):
        crossfit = {k: r for k in ood_curves if (r := fitted[k].retained_samples) is not None}
        cis = tunnel_intervals(fitted["id"].samples[:, cols], curves["id"][1],
                               {k: (fitted[k].samples[:, cols], c) for k, (_, c) in ood_curves.items()}, taus,
                               retained_samples=crossfit)
        for key, value in cis.items():
            if key != "ood":
                summary[ci_key(key)] = value
        for row in summary["ood"]:
            for metric, value in cis["ood"][row.name].items():
                setattr(row, ci_key(metric), value)
    _signatures(summary, curves["id"][0], fitted, cols, list(ood_curves))
    if sensitivity := c_sensitivity(fitted, modules, list(ood_curves), taus):
        summary[C_SENSITIVITY] = sensitivity
    summary["ood"] = [jsonable(vars(r)) for r in summary["ood"]]  # undefined values as None, as they are saved
    return summary


def _signatures(summary: dict, id_curve: list[float], fitted: dict[str, _Fitted], cols: list[int],
                ood: list[str]) -> None:
    """The ID gain still to come after the tunnel start (and its share of the error left there),
    and intervals for it and for the best transfer layer, from the same resamples."""
    start = summary[TUNNEL_START]
    at_start, final = id_curve[start - 1], id_curve[-1]
    summary[ID_GAIN] = float(final - at_start)
    summary[ID_GAIN_SHARE] = float((final - at_start) / (1 - at_start)) if at_start < 1 else 0.0
    samples = fitted["id"].samples
    if not len(samples):
        return
    lo, hi = interval((samples[:, cols][:, -1] - samples[:, cols][:, start - 1])[:, None])
    summary[ci_key(ID_GAIN)] = [float(lo[0]), float(hi[0])]
    if ood and BEST_TRANSFER_LAYER in summary:
        peaks = np.argmax(np.mean([fitted[k].samples[:, cols] for k in ood], axis=0), axis=1) + 1.0
        lo, hi = interval(peaks[:, None])
        summary[ci_key(BEST_TRANSFER_LAYER)] = [float(lo[0]), float(hi[0])]


def _crossfitted(summary: dict, fitted: dict[str, _Fitted]) -> None:
    """Each OOD row's % retained as the cross-fitted estimate (the plug-in kept as
    ``retained_in_sample``), and the mean and strength from them."""
    rows = summary.get("ood") or []
    for row in rows:
        row.retained_in_sample = row.retained
        if math.isfinite(fitted[row.name].retained):
            row.retained = fitted[row.name].retained
    if rows:
        summary[MEAN_RETAINED] = float(np.mean([r.retained for r in rows]))
        summary[STRENGTH] = strength(summary[MEAN_RETAINED])


__all__ = ["IdReuse", "probe_layers", "probe_statistics"]
