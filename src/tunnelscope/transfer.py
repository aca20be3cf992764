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
from torch import nn

from . import data as data_mod
from .analysis import resolve_model, sample_split
from .cache import DEFAULT_BUDGET, FeatureCache
from .capture import DEFAULT_MAX_DIM, Capture
from .errors import SpecError
from .metrics.collapse import NCCAccuracy, effective_depth
from .metrics.moments import Moments
from .ood import load_adapted
from .probes import ProbeConfig, train_probes
from .progress import progress_bar
from .train.loop import resolve_device
from .tunnel import summarize
from .versions import package_versions


@dataclass
class TransferStats:
    """Probe accuracies per dataset × split × point, the tunnel summary, and the config."""

    table: pd.DataFrame
    summary: dict
    config: dict = field(default_factory=dict)

    def curve(self, dataset: str = "id", split: str = "test") -> pd.Series:
        """Probe accuracy per point, in layer order."""
        rows = self.table[(self.table.dataset == dataset) & (self.table.split == split)]
        if rows.empty:
            raise KeyError(f"no probe accuracies for dataset {dataset!r}; have {sorted(self.table.dataset.unique())}")
        return rows.sort_values("layer").set_index("point")["accuracy"]


def _features(capture: Capture, split, limit: int | None, seed: int, batch_size: int, device, budget: int,
              cache_dtype: str, bars, description: str) -> tuple[FeatureCache, dict[str, torch.Tensor], torch.Tensor, dict]:
    """One model pass over ``split`` into a feature cache; the caller closes the cache."""
    chosen, n = sample_split(split, limit, seed)
    cache = FeatureCache(n, budget, cache_dtype)
    for feats, y in capture.stream(chosen, batch_size, device, progress=bars, description=description):
        cache.update(feats, y)
    if cache.spilled_to is not None:
        warnings.warn(f"{description}: features ({cache.nbytes / 2**20:.0f} MiB) exceed the cache budget "
                      f"({budget / 2**20:.0f} MiB); spilled to memory-mapped files in {cache.spilled_to}", stacklevel=3)
    return _read(cache)


def _read(cache: FeatureCache, **info) -> tuple[FeatureCache, dict, torch.Tensor, dict]:
    """The cache, its arrays (in-memory ones are stacked by the probe trainer, memory-mapped ones
    read a minibatch at a time), its labels, and its description (plus ``info``)."""
    if cache.size != cache.capacity:
        raise ValueError(f"feature cache filled {cache.size} of {cache.capacity} rows")
    info = {"samples": cache.size, "cache_mib": cache.nbytes / 2**20,
            "spilled": str(cache.spilled_to) if cache.spilled_to else None, **info}
    return cache, dict(cache.arrays), torch.from_numpy(cache.labels), info


def _ncc(train: FeatureCache, test: FeatureCache, num_classes: int, device) -> dict[str, dict[str, float]]:
    """Nearest-class-centre accuracy per point on both splits, class means from the train cache."""
    moments = Moments(num_classes, torch.float64, scatter=False)  # class means are all NCC needs
    for feats, y in train.batches(device=device):
        moments.update(feats, y)
    means = {name: point.class_means() for name, point in moments.points.items()}
    out = {}
    for split, cache in (("train", train), ("test", test)):
        acc = NCCAccuracy(means)
        for feats, y in cache.batches(device=device):
            acc.update(feats, y)
        out[split] = acc.compute()
    return out


def probe_layers(
    model: nn.Module | str | Path,
    data: data_mod.Dataset | str,
    ood: Sequence[str] = (),
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    probe: ProbeConfig | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    max_dim: int = DEFAULT_MAX_DIM,
    cache_budget: int = DEFAULT_BUDGET,
    cache_dtype: str = "float32",
    taus: Sequence[float] = (0.95, 0.98),
    ncc_eps: float = 0.01,
    data_root: str | Path | None = None,
    progress: bool | None = None,
    id_features: tuple[FeatureCache, FeatureCache] | None = None,
    id_ncc: bool = True,
) -> TransferStats:
    """Train linear probes at every point on the ID data and on each OOD dataset.

    ``ood`` is a list of dataset specs; each gets its own probes, trained on its training
    split and scored on its test split, reading the same backbone. ``probe`` sets the
    protocol (default ``harun``, selection ``last``). ``max_train`` / ``max_test`` cap the
    samples read per split (seeded subsets). Nearest-class-centre accuracy is measured on the
    same cached features (class means from each dataset's train split) and gives the ID
    ``effective_depth`` (first point with NCC train error <= ``ncc_eps``). Returns a :class:`TransferStats` whose
    ``summary["verdict"]`` says in one line where the tunnel starts and which layer
    transfers best. ``id_features`` (train and test caches already filled by the
    statistics pass, see :func:`tunnelscope.analyze`) replaces the ID passes; the caller
    closes them. ``id_ncc=False`` skips the ID nearest-class-centre scores (and the effective
    depth) when the caller has them already.
    """
    cfg = probe or ProbeConfig(seed=seed)
    dev = resolve_device(device)
    net, model_name, model_info = resolve_model(model, dev)
    id_ds = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=data_root)
    example = next(id_ds.test.batches(2, device=dev))[0]
    capture = Capture(net, points, reduce=reduce, max_dim=max_dim, seed=seed, example=example)
    names = capture.names
    datasets: dict[str, tuple[data_mod.Dataset, list[str]]] = {"id": (id_ds, [])}
    for spec in ood:
        ds, changes = load_adapted(spec, id_ds.input_shape, data_root)
        if ds.num_classes < 2:
            raise SpecError(f"OOD dataset {spec!r} has a single class; a probe needs at least two")
        datasets[spec] = (ds, changes)
    rows, info, curves = [], {}, {}
    tic = time.perf_counter()
    with progress_bar(progress) as bars:
        for key, (ds, changes) in datasets.items():
            label = "ID" if key == "id" else key
            shared = key == "id" and id_features is not None
            if shared:
                (tr_cache, tr, ytr, tr_info), (te_cache, te, yte, te_info) = (_read(c, shared_with_statistics=True)
                                                                         for c in id_features)
            else:
                tr_cache, tr, ytr, tr_info = _features(capture, ds.train, max_train, seed, batch_size, dev,
                                                       cache_budget, cache_dtype, bars, f"{label} train")
                te_cache, te, yte, te_info = _features(capture, ds.test, max_test, seed + 1, batch_size, dev,
                                                       cache_budget, cache_dtype, bars, f"{label} test")
            try:
                result = train_probes(tr, ytr, te, yte, ds.num_classes, cfg, device=dev, progress=progress)
                ncc = _ncc(tr_cache, te_cache, ds.num_classes, dev) if key != "id" or id_ncc else None
                if key == "id":
                    ncc_id_train = ncc and ncc["train"]
            finally:
                del tr, te
                if not shared:
                    tr_cache.close()
                    te_cache.close()
            curves[key] = ([result.accuracy[n] for n in names], ds.num_classes)
            for i, name in enumerate(names):
                for split, acc in (("test", result.accuracy), ("train", result.train_accuracy)):
                    rows.append({"model": model_name, "dataset": key, "split": split, "point": name, "layer": i + 1,
                                 "depth": (i + 1) / len(names), "accuracy": acc[name],
                                 "ncc_accuracy": ncc[split][name] if ncc else math.nan,
                                 "epoch": result.epoch[name], "diverged": name in result.diverged})
            info[key] = {"spec": ds.spec, "classes": ds.num_classes, "adapted": changes, "train": tr_info,
                         "test": te_info, "diverged": result.diverged}
    id_curve = curves["id"][0]
    finite = {k: bool(np.isfinite(c).all()) for k, (c, _) in curves.items()}
    ood_curves = {k: v for k, v in curves.items() if k != "id" and finite[k]}
    summary = summarize(id_curve, id_ds.num_classes, ood_curves, taus) if finite["id"] else {"points": len(names)}
    summary["ood_skipped"] = [k for k, ok in finite.items() if k != "id" and not ok]  # a probe diverged there
    if ood_curves and finite["id"]:
        mean = np.mean([curve for curve, _ in ood_curves.values()], axis=0)
        summary["best_transfer_layer"] = int(np.argmax(mean)) + 1
    depth = effective_depth([1 - ncc_id_train[n] for n in names], ncc_eps) if ncc_id_train else None
    summary.update({"effective_depth": depth, "effective_depth_point": names[depth - 1] if depth else None,
                    "ncc_eps": ncc_eps})
    summary["verdict"] = verdict(summary, names)
    summary["ood"] = [vars(r) for r in summary.get("ood", [])]
    config = {"model": model_name, **model_info, "points": names, "reduce": str(capture.reduction),
              "layout": capture.layout, "probe": {**vars(cfg)}, "selection_note": (
                  "selected on the test split (the papers' behaviour): accuracies are optimistic"
                  if cfg.select == "test" else None), "datasets": info, "seed": seed, "batch_size": batch_size,
              "device": str(dev), "versions": package_versions(), "seconds": time.perf_counter() - tic}
    return TransferStats(pd.DataFrame(rows), summary, config)


def verdict(summary: dict, names: list[str]) -> str:
    """One line from a summary: where the tunnel starts, which layer transfers best (highest
    mean OOD probe accuracy), how much OOD accuracy the last layer keeps, NCC separability."""
    if "tunnel_start@0.95" not in summary:
        return "the ID probes diverged (NaN accuracy); no tunnel verdict"
    start, L = summary["tunnel_start@0.95"], summary["points"]
    text = (f"the tunnel starts at layer {start} of {L}" if start < L
            else f"no tunnel: ID probe accuracy still rises at the last layer ({L})")
    if summary.get("best_transfer_layer"):
        j = summary["best_transfer_layer"]
        text += (f"; the best layer to transfer from is {j} ({names[j - 1]}); mean OOD accuracy retained "
                 f"at the last layer: {summary['mean_retained']:.1f}% ({summary['strength']})")
    if summary.get("ood_skipped"):
        text += f"; OOD probes diverged on {', '.join(summary['ood_skipped'])}"
    if summary.get("effective_depth"):
        text += (f"; nearest-class-centre separable (train error <= {summary.get('ncc_eps', 0.01):g}) "
                 f"from layer {summary['effective_depth']}")
    return text
