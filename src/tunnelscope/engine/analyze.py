"""``tunnelscope.analyze``: layer statistics and linear probes of one model, as one :class:`Results`.

The statistics (:func:`tunnelscope.analysis.analyze_layers`: rank, effective rank, PC1,
neural collapse, NCC, CKA, ridge) read each ID split once; the probes
(:func:`tunnelscope.transfer.probe_layers`) read the train and test split of the ID set and
of every OOD set once each into a feature cache and train all points' probes jointly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import data as data_mod
from ..capture import DEFAULT_MAX_DIM
from ..capture.cache import FeatureCache
from ..data import sample_split
from ..data.objects import (
    DEFAULT_TEST_FRACTION,
    dataset_names,
    feature_dataset,
    object_records,
    resolve_data,
)
from ..device import resolve_device
from ..errors import ConfigError
from ..metrics import METRICS, REGISTRY
from ..metrics.registry import metric_names
from ..models import resolve_model
from ..probes import ProbeConfig
from ..results import COLUMNS, Results
from ..summary import EFFECTIVE_DEPTH, MODEL_ACCURACY, REFERENCE_KEYS, as_summary
from ..uncertainty import DEFAULT_RESAMPLES
from ..verdict import model_flags, verdict
from ..versions import environment, package_versions
from .probing import probe_layers
from .statistics import analyze_layers

PROBE = "probe"
ALIASES = {"nc": ("nc1", "cdnv", "ncc"), "collapse": ("nc1", "cdnv", "ncc")}
ANALYZE_METRICS = {PROBE: "trained linear probes on the ID and every OOD dataset (the tunnel verdict)", **METRICS}


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"default"`` (probes and the default statistics), ``"all"``, or a comma list of
    ``probe``, registered metric names and the aliases ``nc`` / ``collapse``."""
    statistics = [m.name for m in REGISTRY.values()]
    defaults = [m.name for m in REGISTRY.values() if m.default]
    return metric_names(metrics, [PROBE, *statistics], [PROBE, *defaults], ALIASES)


def analyze(
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
    ``metrics``: see :func:`parse_metrics`. Every split is read as a seeded subset of at most
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
    transfers best, and ``results.summary["flags"]`` why it may not be valid.
    """
    wanted = parse_metrics(metrics)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stats_metrics = [m for m in wanted if m != PROBE]
    dataset, ood = resolve_data(data, ood, data_root)
    if ood and PROBE not in wanted:
        raise ConfigError("OOD datasets are read by the probes; add 'probe' to --metrics or drop --ood")
    dev = resolve_device(device)
    net, model_name, resolved = resolve_model(model, dev, dataset, weights)
    net.eval()
    model_info = {"model": model_name, **resolved, **(model_info or {})}
    frames, summary = [], {"model": model_name, "data": dataset.spec, "classes": dataset.num_classes,
                           "ood_datasets": dataset_names(ood)}
    config: dict = {"model": model_info, "data": dataset.spec, "id_dataset": dataset.spec,
                    "ood": dataset_names(ood), "metrics": wanted,
                    "points_set": points if isinstance(points, str) else list(points), "reduce": reduce,
                    "ncc_eps": ncc_eps, "cka_passes": cka_passes, "max_dim": max_dim,
                    "device": str(dev), "seed": seed, "environment": environment(dev),
                    "versions": package_versions()}
    if records := object_records(dataset, ood):
        config["data_objects"] = records
    max_train = max_samples if max_train is None else max_train
    max_test = max_samples if max_test is None else max_test
    shared = bool(stats_metrics) and PROBE in wanted and max_train == max_samples and max_test == max_samples
    config["id_passes"] = ("one pass per split, shared by the statistics and the probes" if shared
                           else "the statistics and the probes read the ID splits separately")
    model_accuracy = None
    with contextlib.ExitStack() as stack:
        caches: tuple[FeatureCache, FeatureCache] | None = None
        if shared:
            id_train, id_test = (stack.enter_context(FeatureCache(sample_split(split, max_samples, seed + i)[1]))
                                 for i, split in enumerate((dataset.train, dataset.test)))
            caches = (id_train, id_test)
        if stats_metrics:
            # "default"/"all" pass through, so that a metric that does not fit is skipped with a note
            request = metrics if isinstance(metrics, str) and metrics in ("default", "all") else stats_metrics
            stats = analyze_layers(net, dataset, request, points=points, reduce=reduce, batch_size=batch_size,
                                   device=dev, max_samples=max_samples, seed=seed, progress=progress,
                                   train_cache=caches[0] if caches else None,
                                   test_cache=caches[1] if caches else None, include_input=include_input,
                                   eps=ncc_eps, cka_passes=cka_passes, max_dim=max_dim)
            frames.append(stats.table)
            summary.update(stats.summary)
            model_accuracy = stats.summary.get(MODEL_ACCURACY)
            config["statistics"] = stats.config
            config["points"] = stats.config["points"]
            config["input_point"] = stats.config["input_point"]
        if PROBE in wanted:
            transfer = probe_layers(net, dataset, ood=ood, points=points, reduce=reduce, probe=probe,
                                    batch_size=batch_size, device=dev, max_train=max_train, max_test=max_test,
                                    seed=seed, data_root=data_root, progress=progress, id_features=caches,
                                    id_ncc="ncc" not in stats_metrics,  # the statistics measured it
                                    include_input=include_input, resamples=resamples, model_info=model_info,
                                    model_accuracy=model_accuracy, ncc_eps=ncc_eps, max_dim=max_dim)
            frames.append(transfer.table)
            kept: dict[str, object] = {k: summary[k] for k in (EFFECTIVE_DEPTH, "effective_depth_point", "ncc_eps")
                                       if k in summary}
            summary.update(transfer.summary)
            summary.update(kept)  # the statistics' NCC (when measured) is the one in the table: keep it
            summary["verdict"] = verdict(summary, transfer.config["points"])
            config["probes"] = transfer.config
            config["points"] = transfer.config["points"]
            config["input_point"] = transfer.config["input_point"]
        else:
            flags = [f.as_dict() for f in model_flags(model_info, model_accuracy, dataset.num_classes)]
            summary.update(flags=flags, verdict_valid=False,
                           verdict="no probes were run (add 'probe' to --metrics for the tunnel verdict)")
    table = pd.concat(frames, ignore_index=True).assign(reference=None)
    summary["points"] = len(config["points"])
    if untrained_reference:
        table, summary, config = _with_untrained_reference(
            net, dataset, table, summary, config, dict(ood=ood, metrics=wanted, points=points, reduce=reduce,
                                                        device=dev, probe=probe, batch_size=batch_size,
                                                        max_samples=max_samples, max_train=max_train,
                                                        max_test=max_test, seed=seed, data_root=data_root,
                                                        progress=progress, include_input=include_input,
                                                        resamples=resamples, ncc_eps=ncc_eps,
                                                        cka_passes=cka_passes, max_dim=max_dim))
    return Results(table.reindex(columns=COLUMNS), as_summary(summary), config)




def _with_untrained_reference(net: nn.Module, dataset, table: pd.DataFrame, summary: dict, config: dict,
                              options: dict) -> tuple[pd.DataFrame, dict, dict]:
    """The same analysis of a seeded re-initialisation of ``net``, appended as reference rows."""
    from ..invert import untrained_copy

    reference = analyze(untrained_copy(net, options["seed"]), dataset, model_info={"untrained": True}, **options)
    rows = reference.table.assign(reference="untrained", model=summary["model"])
    summary["reference"] = {"untrained": {k: reference.summary.get(k) for k in REFERENCE_KEYS}}
    config["reference"] = {"untrained": f"the same architecture re-initialised by each module's reset_parameters, "
                                        f"seed {options['seed']}; same data, points, probes and samples"}
    return pd.concat([table, rows], ignore_index=True), summary, config


def analyze_features(
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
    return analyze(net, dataset, ood=ood_sets, metrics=metrics, points="blocks", reduce=reduce, device=device,
                   probe=probe, batch_size=batch_size, max_samples=max_samples, max_train=max_train,
                   max_test=max_test, seed=seed, progress=progress, include_input=include_input,
                   resamples=resamples, model_info=net.record(), ncc_eps=ncc_eps, cka_passes=cka_passes,
                   max_dim=max_dim)


__all__ = ["ANALYZE_METRICS", "analyze", "analyze_features", "parse_metrics"]
