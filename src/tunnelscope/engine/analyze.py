"""``tunnelscope.analyze``: layer statistics and linear probes of one model, as one :class:`Results`.

The statistics (:func:`tunnelscope.engine.statistics.analyze_layers`: rank, effective rank, PC1,
neural collapse, NCC, CKA, ridge) read each ID split once; the probes
(:func:`tunnelscope.engine.probing.probe_layers`) read the train and test split of the ID set and
of every OOD set once each into a feature cache and train all points' probes jointly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import data as data_mod
from ..capture import DEFAULT_MAX_DIM
from ..capture.cache import FeatureCache
from ..capture.precomputed import feature_dataset
from ..data import sample_split
from ..data.objects import (
    DEFAULT_TEST_FRACTION,
    dataset_names,
    object_records,
    resolve_data,
)
from ..device import resolve_device
from ..errors import ConfigError
from ..metrics import METRICS, REGISTRY
from ..metrics.registry import metric_names
from ..models import resolve_model, untrained_copy
from ..probes import ProbeConfig
from ..results import COLUMNS, Results
from ..summary import EFFECTIVE_DEPTH, FLAGS, MODEL_ACCURACY, RANK_COLLAPSE, RANK_DECLINE, REFERENCE_KEYS, as_summary
from ..tunnel import rank_collapse_layer, rank_decline_layer
from ..uncertainty import DEFAULT_RESAMPLES
from ..verdict import model_flags, reference_flags, verdict
from ..versions import environment, package_versions
from .distributed import current_world
from .probing import IdReuse, probe_statistics
from .settings import AnalysisSettings, metric_options, settings_from, with_metric_options
from .statistics import layer_statistics

PROBE = "probe"
ALIASES = {"nc": ("nc1", "cdnv", "ncc"), "collapse": ("nc1", "cdnv", "ncc")}
ANALYZE_METRICS = {PROBE: "trained linear probes on the ID and every OOD dataset (the tunnel verdict)", **METRICS}


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"default"`` (probes and the default statistics), ``"all"``, or a comma list of
    ``probe``, registered metric names and the aliases ``nc`` / ``collapse``."""
    statistics = [m.name for m in REGISTRY.values()]
    defaults = [m.name for m in REGISTRY.values() if m.default]
    return metric_names(metrics, [PROBE, *statistics], [PROBE, *defaults], ALIASES)


def analyze(  # noqa: PLR0913 (a public facade: readable keywords)
    model: nn.Module | str | Path,
    data: data_mod.Dataset | str | object,
    ood: object = (),
    metrics: str | Sequence[str] = "default",
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    device: str | torch.device = "auto",
    weights: str | Path | None = None,
    probe: ProbeConfig | None = None,
    batch_size: int = 256,
    max_samples: int | None = 10_000,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    data_root: str | Path | None = None,
    progress: bool | None = None,
    include_input: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    untrained_reference: bool = False,
    model_info: dict | None = None,
    ncc_eps: float = 0.01,
    cka_passes: int = 1,
    max_dim: int | None = DEFAULT_MAX_DIM,
    settings: AnalysisSettings | None = None,
) -> Results:
    """Analyse every probe point of ``model`` on ``data`` (and probes on each ``ood`` set).

    ``data`` and each OOD set are a spec string, a :class:`~tunnelscope.data.Dataset`, or data
    given as objects: an ``(X, y)`` pair of tensors or arrays, a DataLoader or torch Dataset
    yielding ``(x, y)``, or ``{"train": obj, "test": obj}``; one object is split 80/20 per
    class with seed 0 (see :func:`tunnelscope.data.as_dataset`, which also names objects and
    sets other splits). ``ood`` is one set, a list, or ``{name: object}``. Objects' records
    (kind, split, sample counts) are kept in ``config["data_objects"]``.
    ``model`` is a checkpoint path, a model spec (with ``weights``, or randomly
    initialised), or a module (``model_info`` may say how it was trained: ``{"step": ...}``).
    ``metrics``: see :func:`parse_metrics`; a metric's options go in the spec grammar
    (``"probe,ncc[eps=0.05],cka[passes=10]"``). The settings below may come whole as
    ``settings`` (:class:`~tunnelscope.engine.settings.AnalysisSettings`); keywords left at
    their defaults do not override it. Every split is read as a seeded subset of at most
    ``max_samples`` samples (``None``: all); the probes may read other amounts (``max_train``
    / ``max_test``, default ``max_samples``). When the probes and the statistics read the
    same ID samples, one pass per ID split serves both: the statistics pass fills the probes'
    feature cache. ``include_input`` adds layer 0 (the input, reduced like the points) to
    every curve; ``resamples`` sets the bootstrap behind every interval (0: none);
    ``untrained_reference`` also analyses a re-initialised copy of the model (seeded by
    ``seed``), stored as rows with ``reference == "untrained"``. ``ncc_eps`` is the NCC train
    error that sets the effective depth (Galanti et al.), ``cka_passes`` the number of shuffled
    passes feeding minibatch CKA (Nguyen et al. use 10), ``max_dim`` the coordinate cap of a
    point's reduced features (a seeded subset beyond it; ``None``: no cap, e.g. NCC and CDNV on
    whole flattened maps, which keep no ``D x D`` state). Returns a :class:`Results`;
    ``results.summary["verdict"]`` says in one line where the tunnel starts and which layer
    transfers best, and ``results.summary["flags"]`` why it may not be valid. Inside an
    initialised ``torch.distributed`` group (``torchrun``) the processes share the passes and
    the probes and each returns the same results (docs/analysis.md, *Data-parallel analysis*).
    """
    names, options = metric_options(metrics)
    chosen = with_metric_options(settings_from(settings, locals()), options)
    dataset, ood_sets = resolve_data(data, ood, chosen.data_root)
    return run_analysis(model, dataset, ood_sets, names, chosen, weights=weights, model_info=model_info,
                        untrained_reference=untrained_reference)


def run_analysis(model: nn.Module | str | Path, dataset: data_mod.Dataset, ood: list, metrics: str | Sequence[str],
                 settings: AnalysisSettings, *, weights: str | Path | None = None, model_info: dict | None = None,
                 untrained_reference: bool = False) -> Results:
    """:func:`analyze` on resolved data with its settings whole (the engine's entry point)."""
    wanted = parse_metrics(metrics)
    stats_metrics = [m for m in wanted if m != PROBE]
    if ood and PROBE not in wanted:
        raise ConfigError("OOD datasets are read by the probes; add 'probe' to --metrics or drop --ood")
    dev = resolve_device(settings.device)
    settings = settings.replace(device=dev, **({} if current_world().leader else {"progress": False}))
    net, model_name, resolved = resolve_model(model, dev, dataset, weights, seed=settings.seed)
    net.eval()
    model_info = {"model": model_name, **resolved, **(model_info or {})}
    merged = _Merged(summary={"model": model_name, "data": dataset.spec, "classes": dataset.num_classes,
                              "ood_datasets": dataset_names(ood)},
                     config=_base_config(model_info, dataset, ood, wanted, settings))
    shared = (bool(stats_metrics) and PROBE in wanted and settings.train_samples == settings.max_samples
              and settings.test_samples == settings.max_samples)
    merged.config["id_passes"] = ("one pass per split, shared by the statistics and the probes" if shared
                                  else "the statistics and the probes read the ID splits separately")
    model_accuracy = None
    with contextlib.ExitStack() as stack:
        caches = _shared_caches(stack, dataset, settings) if shared else None
        if stats_metrics:
            # "default"/"all" pass through, so that a metric that does not fit is skipped with a note
            request = metrics if isinstance(metrics, str) and metrics in ("default", "all") else stats_metrics
            model_accuracy = merged.add_statistics(layer_statistics(net, dataset, request, settings,
                                                                    caches=caches or (None, None)))
        if PROBE in wanted:
            reuse = IdReuse(caches, id_ncc="ncc" not in stats_metrics,  # False when the statistics measured it
                            model_accuracy=model_accuracy)
            merged.add_probes(probe_statistics(net, dataset, ood, settings, reuse=reuse, model_info=model_info))
        else:
            merged.without_probes(model_info, model_accuracy, dataset.num_classes)
    table, summary, config = merged.results()
    if untrained_reference:
        table, summary, config = _with_untrained_reference(net, dataset, ood, metrics, settings,
                                                           (table, summary, config))
    return Results(table.reindex(columns=COLUMNS), as_summary(summary), config)


def _base_config(model_info: dict, dataset: data_mod.Dataset, ood: list, metrics: list[str],
                 settings: AnalysisSettings) -> dict:
    """The run's configuration before any pass: model, data, metrics, options and environment."""
    dev = settings.device
    config: dict = {"model": model_info, "data": dataset.spec, "id_dataset": dataset.spec,
                    "ood": dataset_names(ood), "metrics": metrics, "points_set": settings.points_request,
                    "reduce": settings.reduce, "ncc_eps": settings.ncc_eps, "cka_passes": settings.cka_passes,
                    "max_dim": settings.max_dim, "device": str(dev), "seed": settings.seed,
                    "environment": environment(dev), "versions": package_versions()}
    if records := object_records(dataset, ood):
        config["data_objects"] = records
    return config


def _shared_caches(stack: contextlib.ExitStack, dataset: data_mod.Dataset,
                   settings: AnalysisSettings) -> tuple[FeatureCache, FeatureCache]:
    """The ID train and test feature caches the statistics pass fills for the probes (closed by ``stack``)."""
    id_train, id_test = (stack.enter_context(FeatureCache(sample_split(split, settings.max_samples,
                                                                      settings.seed + i)[1]))
                         for i, split in enumerate((dataset.train, dataset.test)))
    return id_train, id_test


@dataclass
class _Merged:
    """The statistics' and the probes' tables, summary and configuration, merged as they come."""

    summary: dict
    config: dict
    frames: list[pd.DataFrame] = field(default_factory=list)

    def add_statistics(self, stats: Results) -> float | None:
        """Add the statistics' results; returns the model's own accuracy they measured."""
        self.frames.append(stats.table)
        self.summary.update(stats.summary)
        self.config["statistics"] = stats.config
        self.config["points"] = stats.config["points"]
        self.config["input_point"] = stats.config["input_point"]
        return stats.summary.get(MODEL_ACCURACY)

    def add_probes(self, transfer: Results) -> None:
        """Add the probes' results and the verdict they give."""
        self.frames.append(transfer.table)
        kept: dict[str, object] = {k: self.summary[k] for k in (EFFECTIVE_DEPTH, "effective_depth_point", "ncc_eps")
                                   if k in self.summary}
        self.summary.update(transfer.summary)
        self.summary.update(kept)  # the statistics' NCC (when measured) is the one in the table: keep it
        rank = self._rank_curve(transfer.config["points"])
        if rank is not None:
            self.summary[RANK_COLLAPSE] = rank_collapse_layer(rank)
            self.summary[RANK_DECLINE] = rank_decline_layer(rank)
        self.summary["verdict"] = verdict(self.summary, transfer.config["points"])
        self.config["probes"] = transfer.config
        self.config["points"] = transfer.config["points"]
        self.config["input_point"] = transfer.config["input_point"]

    def _rank_curve(self, points: list[str]) -> list[float] | None:
        """The statistics' numerical rank on the test split at ``points`` (None when not measured
        or not finite everywhere)."""
        stats = self.frames[0] if self.frames else None
        if stats is None or "rank" not in set(stats.metric):
            return None
        rows = stats[(stats.metric == "rank") & (stats.split == "test")].set_index("point").value
        values = [float(rows.get(p, float("nan"))) for p in points]
        return values if values and all(math.isfinite(v) for v in values) else None

    def without_probes(self, model_info: dict, model_accuracy: float | None, num_classes: int) -> None:
        """Flag the model and say that no verdict is given without probes."""
        flags = [f.as_dict() for f in model_flags(model_info, model_accuracy, num_classes)]
        self.summary.update(flags=flags, verdict_valid=False,
                            verdict="no probes were run (add 'probe' to --metrics for the tunnel verdict)")

    def results(self) -> tuple[pd.DataFrame, dict, dict]:
        """The merged table (not yet a reference's), summary and configuration."""
        table = pd.concat(self.frames, ignore_index=True)
        table = table.assign(reference=table["reference"] if "reference" in table else None)
        self.summary["points"] = len(self.config["points"])
        return table, self.summary, self.config


def _with_untrained_reference(net: nn.Module, dataset: data_mod.Dataset, ood: list, metrics: str | Sequence[str],
                              settings: AnalysisSettings, merged: tuple[pd.DataFrame, dict, dict]
                              ) -> tuple[pd.DataFrame, dict, dict]:
    """The same analysis of a seeded re-initialisation of ``net``, appended as reference rows."""
    table, summary, config = merged
    reference = run_analysis(untrained_copy(net, settings.seed), dataset, ood, metrics, settings,
                             model_info={"untrained": True})
    own = reference.table[reference.table.reference.isna()]  # the reference's own probe variants are left out
    rows = own.assign(reference="untrained", model=summary["model"])
    summary["reference"] = {"untrained": {k: reference.summary.get(k) for k in REFERENCE_KEYS}}
    summary[FLAGS] = [*summary.get(FLAGS, []), *(f.as_dict() for f in reference_flags(summary, reference.summary))]
    config["reference"] = {"untrained": f"the same architecture re-initialised by each module's reset_parameters, "
                                        f"seed {settings.seed}; same data, points, probes and samples"}
    return pd.concat([table, rows], ignore_index=True), summary, config


def analyze_features(  # noqa: PLR0913 (a public facade: readable keywords)
    features: object,
    labels: object,
    ood: object = (),
    metrics: str | Sequence[str] = "default",
    *,
    name: str = "features",
    model_name: str = "precomputed",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    reduce: str = "pool2",
    device: str | torch.device = "auto",
    probe: ProbeConfig | None = None,
    batch_size: int = 256,
    max_samples: int | None = 10_000,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    include_input: bool = True,
    resamples: int = DEFAULT_RESAMPLES,
    ncc_eps: float = 0.01,
    cka_passes: int = 1,
    max_dim: int | None = DEFAULT_MAX_DIM,
    settings: AnalysisSettings | None = None,
) -> Results:
    """:func:`analyze` on features already extracted: every statistic and probe it computes
    from captured features, through the same code, as one :class:`Results`.

    ``features`` is ``{point: (N, D) array or tensor}`` in layer order with ``labels`` ``(N,)``
    integer classes, split per class into train and test (``test_fraction``, ``split_seed``;
    recorded), or ``{"train": {point: ...}, "test": {point: ...}}`` with ``labels``
    ``{"train": y, "test": y}``. An ``input`` entry is layer 0 (the raw input, read when
    ``include_input``); features of more than 2 dims are reduced by ``reduce`` as captured
    outputs are, and every point is capped at ``max_dim`` coordinates as they are. ``ood`` is
    ``{name: (features, labels)}`` (or a list, named ``ood-1``, ...) at the same points. The
    table's ``model`` column holds ``model_name``; the model's own accuracy is not known
    (NaN) and the probe points' names are the keys given. Other arguments: see :func:`analyze`.
    """
    net, dataset = feature_dataset(features, labels, name=name, model_name=model_name, test_fraction=test_fraction,
                                   split_seed=split_seed, num_classes=num_classes, class_names=class_names)
    if isinstance(ood, Mapping):
        items = [(str(k), v) for k, v in ood.items()]
    elif isinstance(ood, (list, tuple)):
        items = [(f"ood-{i}", v) for i, v in enumerate(ood, 1)]
    else:
        raise ConfigError(f"ood must be {{name: (features, labels)}} or a list of such pairs, not {type(ood).__name__}")
    ood_sets = []
    for key, pair in items:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigError(f"OOD set {key!r} must be a (features, labels) pair")
        ood_sets.append(feature_dataset(pair[0], pair[1], name=key, test_fraction=test_fraction,
                                        split_seed=split_seed, like=net)[1])
    names, options = metric_options(metrics)
    chosen = with_metric_options(settings_from(settings, locals()), options).replace(points="blocks")
    return run_analysis(net, dataset, ood_sets, names, chosen, model_info=net.record())


__all__ = ["ANALYZE_METRICS", "analyze", "analyze_features", "parse_metrics"]
