"""``analyze_layers``: one streaming pass per split feeds every layer statistic.

Pass over the training split: moments (for rank, spectrum, neural collapse, the ridge
probe and the class means) and, when NCC or ridge accuracy on train is asked for, a
feature cache. Pass over the test split: moments, minibatch CKA, full-data CKA, and NCC
and ridge accuracy against the training class means and probes. NCC and ridge accuracy
on the training split are then read from the cache, without running the model again.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from . import data as data_mod
from .cache import DEFAULT_BUDGET, FeatureCache
from .capture import DEFAULT_MAX_DIM, Capture
from .checkpoint import load_model
from .models import build
from .errors import SpecError
from .metrics.base import ModelAccuracy
from .metrics.cka import MIN_BATCH, FullCKA, MinibatchCKA
from .metrics.collapse import NCCAccuracy, cdnv, effective_depth, nc1
from .metrics.moments import Moments
from .metrics.ridge import DEFAULT_RIDGE, RidgeAccuracy, ridge_weights
from .metrics.spectrum import RANK_TOL, effective_rank, eigen, numerical_rank, pc1_cos2, pc1_ratio
from .progress import progress_bar
from .train.loop import resolve_device
from .verdict import check_statistics_samples
from .versions import environment, package_versions

METRICS = {
    "rank": "numerical rank of the centred covariance (eigenvalues > 1e-3 · s1)",
    "erank": "effective rank (RankMe) of the uncentred features",
    "pc1": "share of variance on PC1, and squared cosine of PC1 between points",
    "nc1": "neural collapse NC1 = tr(Σ_W Σ_B⁺)/C",
    "cdnv": "class-distance normalised variance",
    "ncc": "nearest-class-centre accuracy on train and test (class means from train)",
    "cka": "minibatch CKA (unbiased HSIC₁) between all points, on the test split",
    "cka_full": "full-data linear CKA (feature-space form), for narrow points only",
    "ridge": "closed-form ridge probe accuracy from the moments (a fast proxy, not a trained probe)",
}
DEFAULT_METRICS = ("rank", "erank", "pc1", "nc1", "cdnv", "ncc", "cka", "ridge")


@dataclass
class LayerStats:
    """The tidy table of layer statistics, the config that produced it, and a summary.

    ``table`` has one row per model × split × probe point × metric (plus ``other_point``
    for pairwise metrics such as CKA), with the point's 1-based ``layer`` index and its
    relative ``depth`` (layer / number of points). Unpacks as ``table, config``.
    """

    table: pd.DataFrame
    config: dict
    summary: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.table
        yield self.config

    def metric(self, name: str, split: str = "test") -> pd.Series:
        """One per-point metric as a Series indexed by probe point, in layer order."""
        rows = self.table[(self.table.metric == name) & (self.table.split == split) & self.table.other_point.isna()]
        if rows.empty:
            raise KeyError(f"no metric {name!r} on split {split!r}; have {sorted(self.table.metric.unique())}")
        return rows.sort_values("layer").set_index("point")["value"]

    def matrix(self, name: str = "cka", split: str = "test") -> pd.DataFrame:
        """A pairwise metric (``cka``, ``cka_full``, ``pc1_cos2``) as a points × points frame."""
        rows = self.table[(self.table.metric == name) & (self.table.split == split) & self.table.other_point.notna()]
        if rows.empty:
            raise KeyError(f"no pairwise metric {name!r} on split {split!r}")
        order = [p for p in [self.config.get("input_point"), *self.config["points"]] if p in set(rows.point)]
        return rows.pivot(index="point", columns="other_point", values="value").loc[order, order]


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


def _parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = list(DEFAULT_METRICS) if metrics == "default" else (
            list(METRICS) if metrics == "all" else [m.strip() for m in metrics.split(",") if m.strip()])
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise SpecError(f"unknown metric(s) {unknown}; valid: {', '.join(METRICS)}, or 'default' / 'all'")
    return list(dict.fromkeys(metrics))


def sample_split(split, limit: int | None, seed: int):
    """``split`` itself, or a seeded random subset of ``limit`` samples in their original order; and its size."""
    if limit is None or len(split) <= limit:
        return split, len(split)
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return split.subset(idx), limit


def resolve_model(model, device: torch.device, dataset: data_mod.Dataset | None = None,
                  weights: str | Path | None = None) -> tuple[nn.Module, str, dict]:
    """A module, a checkpoint path, or (given ``dataset``) a model spec with optional
    ``weights`` → ``(module on device, its name, where it came from)``.

    With ``dataset``, a checkpoint whose class count or input shape differs from it is refused."""
    if isinstance(model, nn.Module):
        return model.to(device), getattr(model, "spec", type(model).__name__), {}
    if not isinstance(model, (str, Path)):
        raise SpecError(f"model must be an nn.Module or a checkpoint path, not {type(model).__name__}")
    path = Path(model)
    if dataset is not None and not (path.suffix in (".pt", ".pth") or path.is_file()):
        net = build(str(model), dataset.num_classes, dataset.input_shape, weights=weights)
        return net.to(device), str(model), {"weights": str(weights) if weights is not None else None,
                                            "untrained": weights is None}
    net, meta = load_model(path, device)
    if dataset is not None:
        if getattr(net, "num_classes", dataset.num_classes) != dataset.num_classes:
            raise SpecError(f"checkpoint {path} has {net.num_classes} classes but {dataset.spec} has "
                            f"{dataset.num_classes}; give --data with the classes it was trained on")
        shape = tuple(getattr(net, "input_shape", dataset.input_shape))
        if shape != tuple(dataset.input_shape):
            raise SpecError(f"checkpoint {path} expects inputs {shape} but {dataset.spec} gives "
                            f"{tuple(dataset.input_shape)}; add size=/channels= modifiers to --data")
    return net, meta["model_spec"], {"checkpoint": str(model), "data_spec": meta["data_spec"], "step": meta.get("step"),
                                     "train_seed": meta.get("seed")}


def analyze_layers(
    model: nn.Module | str | Path,
    data: data_mod.Dataset | str,
    metrics: str | Sequence[str] = "default",
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    max_samples: int | None = 10_000,
    seed: int = 0,
    max_dim: int = DEFAULT_MAX_DIM,
    eps: float = 0.01,
    ridge: float = DEFAULT_RIDGE,
    cache_budget: int = DEFAULT_BUDGET,
    precision: str = "float32",
    cka_passes: int = 1,
    data_root: str | Path | None = None,
    progress: bool | None = None,
    train_cache: FeatureCache | None = None,
    test_cache: FeatureCache | None = None,
    include_input: bool = True,
    model_accuracy: bool = True,
) -> LayerStats:
    """Statistics of every probe point of ``model`` on ``data``, from one pass per split.

    ``model`` is a module, a checkpoint path or a model spec (randomly initialised); ``data``
    a Dataset or a spec. ``metrics``
    is ``"default"``, ``"all"`` or names from :data:`METRICS`. Each split is read at most
    ``max_samples`` samples (a seeded random subset; ``None`` for all). ``batch_size`` is
    also the CKA minibatch size ``n`` (>= 4). ``precision`` is that of the per-batch
    covariance and Gram products of centred features and of the NCC and ridge scores
    (``float32`` default, or ``float64``); every running sum is float64.
    ``train_cache`` / ``test_cache`` (feature caches sized for the sampled splits, owned by
    the caller) are filled by the same passes, so that the linear probes can train from
    them without running the model again. ``include_input`` adds layer 0 (the model's input,
    reduced like the points) as a reference; ``model_accuracy`` runs the test pass through the
    whole model to record its own test accuracy in ``summary["model_accuracy"]``. A split
    sample of fewer than 2 samples is refused. Returns a :class:`LayerStats`.
    """
    wanted = _parse_metrics(metrics)
    if batch_size < MIN_BATCH and ("cka" in wanted):
        raise SpecError(f"batch_size {batch_size} is below {MIN_BATCH}, the smallest minibatch HSIC₁ allows")
    if precision not in ("float64", "float32"):
        raise SpecError("precision must be float64 or float32")
    if cka_passes < 1:
        raise SpecError("cka_passes must be >= 1")
    matmul_dtype = torch.float64 if precision == "float64" else torch.float32
    dev = resolve_device(device)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=data_root)
    net, model_name, model_info = resolve_model(model, dev, dataset)
    capture = Capture(net, points, reduce=reduce, max_dim=max_dim, seed=seed,
                      example=next(dataset.test.batches(2, device=dev))[0], include_input=include_input)
    names = capture.names
    C = dataset.num_classes
    train_split, n_train = sample_split(dataset.train, max_samples, seed)
    test_split, n_test = sample_split(dataset.test, max_samples, seed + 1)
    for split, n in (("train", n_train), ("test", n_test)):
        check_statistics_samples(n, split, dataset.spec)
    warn: list[str] = []
    need_cache = "ncc" in wanted or "ridge" in wanted or train_cache is not None
    for given, n in ((train_cache, n_train), (test_cache, n_test)):
        if given is not None and given.capacity != n:
            raise SpecError(f"a shared feature cache holds {given.capacity} rows but the split sample has {n}")
    tic = time.perf_counter()

    moments = {"train": Moments(C, matmul_dtype), "test": Moments(C, matmul_dtype)}
    cka = MinibatchCKA(names, gram_dtype=matmul_dtype) if "cka" in wanted else None
    full = FullCKA(names) if "cka_full" in wanted else None
    ncc = probes = ridge_acc = None
    own_cache = FeatureCache(n_train, cache_budget) if train_cache is None else contextlib.nullcontext(train_cache)
    with progress_bar(progress) as bars, own_cache as cache:
        run_pass(capture, train_split, [moments["train"]] + ([cache] if need_cache else []), batch_size, dev,
                 bars, "train pass")
        if cache.spilled_to is not None:
            warn.append(f"feature cache of {cache.nbytes / 2**20:.0f} MiB exceeded the budget "
                        f"({cache_budget / 2**20:.0f} MiB) and was spilled to {cache.spilled_to}")
        train_m = moments["train"].points
        own = ModelAccuracy()
        test_accs: list = [moments["test"], own] + [a for a in (cka, full, test_cache) if a is not None]
        cache_accs: list = []
        if "ncc" in wanted:
            means = {n: train_m[n].class_means() for n in names}
            ncc = {"test": NCCAccuracy(means, matmul_dtype), "train": NCCAccuracy(means, matmul_dtype)}
            test_accs.append(ncc["test"])
            cache_accs.append(ncc["train"])
        if "ridge" in wanted:
            probes = {n: ridge_weights(train_m[n], ridge) for n in names if int(train_m[n].nonfinite) == 0}
            ridge_acc = {"test": RidgeAccuracy(probes, matmul_dtype), "train": RidgeAccuracy(probes, matmul_dtype)}
            test_accs.append(ridge_acc["test"])
            cache_accs.append(ridge_acc["train"])
        capture.model_output = model_accuracy
        try:
            run_pass(capture, test_split, test_accs, batch_size, dev, bars, "test pass")
        finally:
            capture.model_output = False
        if cka is not None:
            for extra in range(1, cka_passes):
                run_pass(capture, test_split, [cka], batch_size, dev, bars, f"CKA pass {extra + 1}/{cka_passes}",
                         generator=torch.Generator().manual_seed(seed + 1000 + extra))
        for feats, y in cache.batches(device=dev):
            for acc in cache_accs:
                acc.update(feats, y)

    rows: list[dict] = []
    L = len(capture.points)
    invalid: dict[str, set[str]] = {"train": set(), "test": set()}

    def add(split: str, point: str, metric: str, value: float, other: str | None = None,
            uses_train: bool = False) -> None:
        bad = point in invalid[split] or (other is not None and other in invalid[split])
        bad = bad or (uses_train and point in invalid["train"])  # read-outs fitted on the training split
        value = float("nan") if bad else float(value)
        rows.append({"model": model_name, "split": split, "point": point, "layer": capture.layer(point),
                     "depth": capture.layer(point) / L, "metric": metric, "value": value, "other_point": other,
                     "other_layer": capture.layer(other) if other is not None else None,
                     "valid": not bad and math.isfinite(value)})

    for split, acc in moments.items():
        points_m = acc.points  # per-point views, built once
        for name in names:
            m = points_m[name]
            if int(m.nonfinite) > 0:
                invalid[split].add(name)
                warn.append(f"{split}: {int(m.nonfinite)} samples with NaN/Inf activations at {name}; "
                            "its metrics are marked invalid")
        absent = [dataset.class_names[c] for c in range(C) if points_m[names[0]].cn[c] == 0]
        if absent:
            warn.append(f"{split}: classes absent from the sample: {absent}; class metrics use the others")
        pcs = {}
        for name in names:
            m = points_m[name]
            if name in invalid[split]:
                for metric in ("rank", "pc1", "erank", "nc1", "cdnv"):
                    if metric in wanted:
                        add(split, name, metric, float("nan"))
                continue
            scatter = m.scatter() if {"rank", "pc1", "erank"} & set(wanted) else None
            if {"rank", "pc1"} & set(wanted):
                vals, vecs = eigen(m.covariance(scatter))
                if "rank" in wanted:
                    add(split, name, "rank", numerical_rank(vals))
                if "pc1" in wanted:
                    add(split, name, "pc1", pc1_ratio(vals))
                    pcs[name] = vecs[:, 0]
            if "erank" in wanted:
                add(split, name, "erank", effective_rank(torch.linalg.eigvalsh(m.second_moment(scatter)), m.count))
            if "nc1" in wanted:
                add(split, name, "nc1", nc1(m))
            if "cdnv" in wanted:
                add(split, name, "cdnv", cdnv(m))
        if "pc1" in wanted and split == "test":
            for (a, b), v in pc1_cos2(pcs).items():
                add(split, a, "pc1_cos2", v, b)
    summary: dict = {"model_accuracy": own.compute() if model_accuracy else None}
    if ncc is not None:
        ncc_acc = {split: acc.compute() for split, acc in ncc.items()}
        for split, values in ncc_acc.items():
            for name, v in values.items():
                add(split, name, "ncc_acc", v, uses_train=True)
        errors = [1 - ncc_acc["train"][n] if n not in invalid["train"] else float("nan") for n in capture.points]
        depth = effective_depth(errors, eps)
        summary["effective_depth"] = depth
        summary["effective_depth_point"] = capture.points[depth - 1] if depth else None
        summary["ncc_eps"] = eps
    if probes is not None:
        for split, acc in ridge_acc.items():
            values = acc.compute()
            for name in names:  # points without a probe (non-finite training features) get a NaN row
                add(split, name, "ridge_acc", values.get(name, float("nan")), uses_train=True)
    if cka is not None:
        mat = cka.compute()
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                add("test", a, "cka", float(mat[i, j]), b)
        if cka.skipped:
            warn.append(f"minibatch CKA skipped {cka.skipped} batch(es) smaller than {MIN_BATCH}")
    if full is not None:
        mat = full.compute()
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                add("test", a, "cka_full", float(mat[i, j]), b)
    for w in warn:
        warnings.warn(w, stacklevel=2)

    table = pd.DataFrame(rows, columns=["model", "split", "point", "layer", "depth", "metric", "value",
                                        "other_point", "other_layer", "valid"])
    config = {
        "model": model_name, **model_info, "data": dataset.spec, "points_set": points if isinstance(points, str) else list(points),
        "points": capture.points, "input_point": capture.input_point, "layout": capture.layout, "reduce": str(capture.reduction), "max_dim": max_dim,
        "metrics": wanted, "batch_size": batch_size, "cka_minibatch": batch_size, "cka_passes": cka_passes,
        "cka_batches": cka.batches if cka else None, "samples": {"train": n_train, "test": n_test},
        "sampling": f"seeded random subset of at most {max_samples} per split (seed {seed} train, {seed + 1} test)"
        if max_samples else "all samples", "seed": seed, "rank_tol": RANK_TOL, "ncc_eps": eps,
        "ridge_lambda": f"{ridge} * tr(Σ)/D", "precision": precision, "device": str(dev),
        "environment": environment(dev),
        "class_names": dataset.class_names, "data_info": dataset.info, "versions": package_versions(),
        "seconds": time.perf_counter() - tic, "warnings": warn,
    }
    return LayerStats(table, config, summary)


def cross_model_cka(
    model_a: nn.Module | str | Path,
    model_b: nn.Module | str | Path,
    data: data_mod.Dataset | str,
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    split: str = "test",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    max_samples: int | None = 10_000,
    seed: int = 0,
    precision: str = "float32",
    data_root: str | Path | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Minibatch CKA between every probe point of ``model_a`` (rows) and of ``model_b``
    (columns), both reading the same batches of one split in the same pass.

    Both models must take the dataset's inputs. Returns an ``L_a x L_b`` DataFrame whose
    ``attrs`` record the settings.
    """
    if batch_size < MIN_BATCH:
        raise SpecError(f"batch_size {batch_size} is below {MIN_BATCH}, the smallest minibatch HSIC₁ allows")
    dev = resolve_device(device)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=data_root)
    if split not in ("train", "test"):
        raise SpecError(f"split must be train or test, not {split!r}")
    chosen, n = sample_split(getattr(dataset, split), max_samples, seed)
    example = next(dataset.test.batches(2, device=dev))[0]
    (net_a, name_a, _), (net_b, name_b, _) = resolve_model(model_a, dev), resolve_model(model_b, dev)
    cap_a = Capture(net_a, points, reduce=reduce, seed=seed, example=example)
    cap_b = Capture(net_b, points, reduce=reduce, seed=seed, example=example)
    keys = [f"a/{p}" for p in cap_a.names] + [f"b/{p}" for p in cap_b.names]
    acc = MinibatchCKA(keys, gram_dtype=torch.float64 if precision == "float64" else torch.float32)
    for module in (net_a, net_b):
        module.eval()
    with progress_bar(progress) as bars, torch.inference_mode():
        task = bars.add_task(f"{split} pass (2 models)", total=n, info="")
        seen = 0
        for x, _ in chosen.batches(batch_size, device=dev):
            fa, fb = cap_a(x), cap_b(x)
            acc.update({**{f"a/{k}": v for k, v in fa.items()}, **{f"b/{k}": v for k, v in fb.items()}})
            seen += len(x)
            bars.update(task, completed=seen)
    la = len(cap_a.names)
    mat = acc.compute()[:la, la:].cpu().numpy()
    frame = pd.DataFrame(mat, index=pd.Index(cap_a.names, name=name_a), columns=pd.Index(cap_b.names, name=name_b))
    frame.attrs.update({"data": dataset.spec, "split": split, "samples": n, "batch_size": batch_size,
                        "reduce": reduce, "skipped_batches": acc.skipped, "precision": precision})
    return frame
