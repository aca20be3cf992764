"""``load(spec)``: a dataset spec string becomes train and test splits ready to batch.

Modifiers, applied in this order whatever order they are written in:

- ``classes=0-4``   keep these classes (range, index, or union ``0-2+5``), relabelled 0..k-1
                    in the order given; class names are kept.
- ``per_class=N``   at most N training samples per class (seeded by ``seed``).
- ``test_per_class=N`` the same for the test split.
- ``noise=F``       label noise: exactly round(F * N) of the N training samples (a seeded
                    draw without replacement) get a label drawn uniformly from the (selected)
                    classes, which may equal the true one; the test split is never changed.
                    Recorded in ``info["label_noise"]`` (see :func:`add_label_noise`).
- ``size=S``        resize images to S x S (bilinear, antialiased).
- ``channels=C``    1 or 3 (grey replicated to RGB, or RGB to luminance).
- ``aug=1``         RandomResizedCrop + horizontal flip on training images, per sample.
- ``seed=K``        seed of the subsampling and of the label noise (default 0).

Normalisation uses per-channel mean and std of the *whole* base training split as the model
sees it (after the resize and the channel conversion), so class subsets of one dataset share
it; it is computed once per process, kept in the user cache for data read from files (keyed
by the files' sizes and mtimes), and recorded in :attr:`Dataset.info`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataNotFoundError, InsufficientDataError, SpecError
from ..io import atomic_write
from ..specs import Spec, parse_index_set, parse_int, parse_spec
from . import sources
from .sources import SOURCES, LoadContext, RawData
from .split import FolderSplit, Split, TensorSplit

COMMON_MODIFIERS: dict[str, str] = {
    "classes": "keep these classes, relabelled 0..k-1: '0-4', '3', '0-2+5+7'",
    "per_class": "at most N training samples per class (seeded)",
    "test_per_class": "at most N test samples per class (seeded)",
    "noise": "fraction F in [0, 1] of training labels replaced by uniformly random classes (seeded)",
    "size": "resize images to S x S",
    "channels": "1 or 3",
    "aug": "1 = RandomResizedCrop + horizontal flip on training images",
    "seed": "seed of the per-class subsampling and of the label noise (default 0)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATION = "RandomResizedCrop(scale=(0.08, 1.0), ratio=(3/4, 4/3)) + RandomHorizontalFlip(p=0.5)"


@dataclass
class Dataset:
    """Both splits of a dataset and what describes it.

    ``input_shape`` is the shape of one input without the batch dimension, e.g.
    ``(1, 28, 28)``; ``info`` records everything about how the data was made (source,
    modifiers, normalisation, sizes) for results and checkpoints.
    """

    spec: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.spec!r}, train={len(self.train)}, test={len(self.test)}, "
            f"classes={self.num_classes}, input_shape={self.input_shape})"
        )


def valid_names() -> list[str]:
    """All base dataset names, plus the ``imagefolder:PATH`` form."""
    return sorted([*SOURCES, "synthetic"]) + ["imagefolder:PATH"]


def _modifier_help(extra: dict[str, str]) -> str:
    return ", ".join(sorted({**COMMON_MODIFIERS, **extra}))


def _parse_options(spec: Spec, text: str, extra: dict[str, str], kind: str) -> dict:
    allowed = {**COMMON_MODIFIERS, **extra}
    options: dict = {}
    for key, value in spec.modifiers.items():
        if key not in allowed:
            raise SpecError(
                f"unknown modifier {key!r} in {text!r}; valid modifiers for {spec.name}: "
                f"{_modifier_help(extra)}"
            )
        options[key] = _option_value(key, value, text)
    if kind == "signal":
        for key in ("size", "channels", "aug"):
            if key in options:
                raise SpecError(f"modifier {key!r} applies to images; {spec.name} holds 1-D signals")
    return options


def _option_value(key: str, value: str, text: str) -> Any:
    """One modifier's value, parsed and checked by its key."""
    if key == "classes":
        return parse_index_set(value, key, text)
    if key in ("per_class", "test_per_class", "size", "n"):
        return parse_int(value, key, text, minimum=1)
    if key == "channels":
        channels = parse_int(value, key, text)
        if channels not in (1, 3):
            raise SpecError(f"modifier channels={value} in {text!r} must be 1 or 3")
        return channels
    if key == "aug":
        if value not in ("0", "1"):
            raise SpecError(f"modifier aug={value} in {text!r} must be 0 or 1")
        return value == "1"
    if key == "noise":
        return parse_fraction(value, key, text)
    return parse_int(value, key, text, minimum=0)  # seeds


def parse_fraction(value: str, key: str, spec: str) -> float:
    """Convert a modifier value to a float in [0, 1], with an error naming the modifier and the spec."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 <= number <= 1.0:  # also refuses nan
        raise SpecError(f"modifier {key}={value!r} in {spec!r} must be a number from 0 to 1, e.g. {key}=0.2")
    return number


def check_spec(spec: str) -> None:
    """Raise :class:`SpecError` unless ``spec`` is a valid dataset spec (name and modifiers),
    without reading any file."""
    parsed = parse_spec(spec, "dataset spec")
    if parsed.name.startswith("imagefolder:"):
        _imagefolder_options(parsed, spec)
        return
    if parsed.name == "synthetic":
        from .synthetic import synthetic_options

        synthetic_options(parsed, spec)
        return
    source = SOURCES.get(parsed.name)
    if source is None:
        raise SpecError(f"unknown dataset {parsed.name!r}; valid names: {', '.join(valid_names())}")
    _parse_options(parsed, spec, source.extra_modifiers, source.kind)


def load(spec: str, root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load the dataset a spec names, e.g. ``load("fashion-mnist[classes=0-4]")``.

    ``root`` is where files are looked for first (default ``$TUNNELSCOPE_DATA``), then the
    user cache directory, then system locations; ``download`` lets torchvision fetch
    datasets that are missing (it needs network access). Raises :class:`SpecError` for a
    bad spec and :class:`DataNotFoundError` when the files are not on this machine.
    """
    parsed = parse_spec(spec, "dataset spec")
    ctx = LoadContext.make(root, download)
    if parsed.name.startswith("imagefolder:"):
        return _load_imagefolder(parsed, spec, _imagefolder_options(parsed, spec))
    if parsed.name == "synthetic":
        from .synthetic import load_synthetic

        return load_synthetic(parsed, spec)
    source = SOURCES.get(parsed.name)
    if source is None:
        raise SpecError(
            f"unknown dataset {parsed.name!r}; valid names: {', '.join(valid_names())}; "
            f"modifiers in brackets: {_modifier_help({})}"
        )
    options = _parse_options(parsed, spec, source.extra_modifiers, source.kind)
    raw = source.load(ctx, options)
    return _build(raw, parsed, spec, options)


# ----------------------------------------------------------------------------- selection
def select_classes(labels: Tensor, classes: list[int] | None, num_classes: int, spec: str) -> tuple[Tensor, Tensor]:
    """Indices of samples whose class is in ``classes``, and their new labels 0..k-1."""
    if classes is None:
        return torch.arange(len(labels)), labels
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise SpecError(f"classes {bad} do not exist in {spec!r}, which has classes 0-{num_classes - 1}")
    lookup = torch.full((num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    new = lookup[labels]
    keep = torch.nonzero(new >= 0).flatten()
    return keep, new[keep]


def cap_per_class(labels: Tensor, cap: int | None, seed: int) -> Tensor:
    """Indices (sorted) of at most ``cap`` samples per class, drawn with ``seed``."""
    if cap is None:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:cap]])
    return torch.sort(torch.cat(chosen)).values


def _select(x: Tensor, y: Tensor, options: dict, cap_key: str, num_classes: int, spec: str) -> tuple[Tensor, Tensor]:
    keep, labels = select_classes(y, options.get("classes"), num_classes, spec)
    capped = cap_per_class(labels, options.get(cap_key), options.get("seed", 0))
    return x[keep[capped]], labels[capped]


LABEL_NOISE_STREAM = 0x6E6F697365  # mixed into the seed so the noise draw shares no stream with subsampling


def add_label_noise(labels: Tensor, fraction: float, num_classes: int, seed: int) -> tuple[Tensor, dict]:
    """``labels`` with exactly ``round(fraction * N)`` entries, chosen without replacement,
    replaced by classes drawn uniformly from ``0..num_classes-1`` (possibly the true one);
    and the record for ``Dataset.info["label_noise"]``.

    The draw depends only on ``seed``, ``N`` and ``num_classes`` (numpy's PCG64 seeded with
    ``[seed, LABEL_NOISE_STREAM]``), not on how the samples were subsampled.
    """
    n = len(labels)
    chosen = round(fraction * n)
    rng = np.random.default_rng([seed, LABEL_NOISE_STREAM])
    positions = torch.from_numpy(rng.choice(n, size=chosen, replace=False).astype(np.int64))
    drawn = torch.from_numpy(rng.integers(0, num_classes, size=chosen, dtype=np.int64))
    noisy = labels.clone().long()
    noisy[positions] = drawn
    changed = int((noisy != labels).sum())
    record = {
        "fraction": fraction, "seed": seed, "chosen": chosen, "changed": changed, "num_classes": num_classes,
        "description": f"noise={fraction:g}: {chosen} of {n} training labels (seed {seed}) replaced by "
                       f"classes drawn uniformly from {num_classes}; {changed} differ from the true label",
    }
    return noisy, record


def _noisy_train_labels(labels: Tensor, options: dict, num_classes: int) -> tuple[Tensor, dict | None]:
    """The training labels after the ``noise`` modifier, and its record (None without it)."""
    if "noise" not in options:
        return labels, None
    return add_label_noise(labels, options["noise"], num_classes, options.get("seed", 0))


# ----------------------------------------------------------------------------- image ops
def convert_channels(x: Tensor, channels: int | None) -> Tensor:
    """Replicate grey to 3 channels or reduce RGB to luminance (ITU-R 601 weights)."""
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, *x.shape[2:]).contiguous()
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        grey = (x.float() * weights).sum(1, keepdim=True)
        return grey.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else grey
    raise SpecError(f"cannot convert {x.shape[1]} channels to {channels}")


def resize(x: Tensor, size: int | None, chunk: int = 4096) -> Tensor:
    """Resize a batch of images to ``size`` x ``size`` (bilinear, antialiased), in chunks."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    out = []
    for lo in range(0, len(x), chunk):
        part = F.interpolate(x[lo : lo + chunk].float(), size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        out.append(part.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else part)
    return torch.cat(out) if out else x.new_zeros((0, x.shape[1], size, size))


def channel_stats(x: Tensor, scale: float, channels: int | None = None, size: int | None = None,
                  chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over a whole split, float64 sums over chunks of samples.

    The images are taken as the model will see them: resized to ``size`` (when given) and
    converted to ``channels`` first, one chunk at a time, so the converted split is never
    materialised. Grey replicated to 3 channels has the grey stats three times.
    """
    if channels == 3 and x.shape[1] == 1:
        grey_mean, grey_std = channel_stats(x, scale, None, size, chunk)
        return grey_mean * 3, grey_std * 3
    return chunk_channel_stats(
        (convert_channels(resize(x[lo : lo + chunk], size) if x.dim() == 4 else x[lo : lo + chunk], channels)
         for lo in range(0, len(x), chunk)), scale)


def chunk_channel_stats(chunks: Iterable[Tensor], scale: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and std (ddof=1) of the samples of ``chunks`` times ``scale``,
    from float64 sums, one chunk in memory at a time."""
    total: Tensor | None = None
    square: Tensor | None = None
    count = 0
    for part in chunks:
        flat = (part.double() * scale).transpose(0, 1).reshape(part.shape[1], -1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        square = (flat * flat).sum(1) if square is None else square + (flat * flat).sum(1)
        count += flat.shape[1]
    if total is None or square is None or count < 2:
        raise InsufficientDataError("channel statistics need at least 2 values per channel")
    mean = total / count
    var = (square - count * mean * mean) / (count - 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(1e-16).sqrt().tolist())


_STATS: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}
STATS_VERSION = 1  # bump when channel_stats changes its numbers: older cache files are then ignored


def normalisation(raw: RawData, key: tuple, size: int | None, channels: int | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`channel_stats` of a base training split after resize and channel conversion,
    remembered for the process (``key`` names the base data: source and generator settings)
    and, for data read from files, across processes in the user cache (see :func:`_stats_file`)."""
    full = (*key, size, channels)
    if full not in _STATS:
        path, fingerprint = _stats_file(raw, full)
        stats = _read_stats(path, fingerprint) if path else None
        if stats is None:
            stats = channel_stats(raw.train_x, raw.scale, channels, size)
            if path:
                _write_stats(path, fingerprint, stats)
        _STATS[full] = stats
    return _STATS[full]


def _stats_file(raw: RawData, key: tuple) -> tuple[Path | None, dict]:
    """Where the statistics of ``key`` are kept (none for generated data, cheap to recompute),
    and the fingerprint they are valid for: the key, the size and mtime of every source file,
    torch's version (resizing) and :data:`STATS_VERSION`."""
    if not raw.files:
        return None, {}
    files = sorted(p for f in raw.files for p in (sorted(f.iterdir()) if f.is_dir() else [f]) if p.is_file())
    fingerprint = {"key": [str(k) for k in key], "version": STATS_VERSION, "torch": torch.__version__,
                   "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    return sources.user_cache_dir() / "normalisation" / f"{digest}.json", fingerprint


def _read_stats(path: Path, fingerprint: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    try:
        saved = json.loads(path.read_text())
        if saved["fingerprint"] == fingerprint:
            return tuple(float(v) for v in saved["mean"]), tuple(float(v) for v in saved["std"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or foreign: recompute
    return None


def _write_stats(path: Path, fingerprint: dict, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    # json writes floats with repr, which reads back to the same double
    text = json.dumps({"fingerprint": fingerprint, "mean": stats[0], "std": stats[1]}, indent=1)
    try:
        atomic_write(path, lambda h: h.write(text.encode()))
    except OSError:
        pass  # a read-only cache only costs the recomputation


class RandomResizedCropFlip:
    """Per-sample RandomResizedCrop to the input size plus a horizontal flip."""

    def __init__(self, size: tuple[int, int]) -> None:
        from torchvision.transforms import v2

        self.transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
        ])

    def __call__(self, batch: Tensor) -> Tensor:
        return torch.stack([self.transform(img) for img in batch])


def _build(raw: RawData, parsed: Spec, text: str, options: dict) -> Dataset:
    n_base = len(raw.class_names)
    channels = options.get("channels")
    size = options.get("size") if raw.kind == "image" else None
    base = (parsed.name, raw.source, options.get("n"), options.get("data_seed"))
    mean, std = normalisation(raw, base, size, channels)
    splits = {}
    label_noise: dict | None = None
    for name, x, y, cap in (("train", raw.train_x, raw.train_y, "per_class"),
                            ("test", raw.test_x, raw.test_y, "test_per_class")):
        x, y = _select(x, y, options, cap, n_base, text)
        if len(y) == 0:
            raise SpecError(f"{text!r} leaves no {name} samples")
        if name == "train":
            y, label_noise = _noisy_train_labels(y, options, len(options.get("classes") or range(n_base)))
        if raw.kind == "image":
            x = convert_channels(resize(x, options.get("size")), channels)
        splits[name] = (x, y)
    input_shape = tuple(splits["train"][0].shape[1:])
    augment = RandomResizedCropFlip((input_shape[1], input_shape[2])) if options.get("aug") else None  # (C, H, W)
    train = TensorSplit(*splits["train"], scale=raw.scale, mean=mean, std=std, augment=augment)
    test = TensorSplit(*splits["test"], scale=raw.scale, mean=mean, std=std)
    classes = options.get("classes") or list(range(n_base))
    info = {
        "spec": text, "base": parsed.name, "modifiers": dict(parsed.modifiers),
        "source": raw.source, "kind": raw.kind, "normalisation": {"mean": mean, "std": std,
        "computed_on": f"{parsed.name} full training split"
                       + (f", after resizing to {size}x{size}" if size else "")
                       + (f" and converting to {channels} channel(s)" if channels else "")},
        "train_samples": len(train), "test_samples": len(test),
        "augmentation": AUGMENTATION if augment else None, "original_classes": classes,
        "label_noise": label_noise,
    }
    return Dataset(text, train, test, len(classes), input_shape,
                   [raw.class_names[c] for c in classes], info)


# ----------------------------------------------------------------------------- imagefolder
class _FolderImages(torch.utils.data.Dataset):
    """ImageFolder samples at fixed indices, relabelled, transformed to normalised tensors."""

    def __init__(self, folder, indices: Tensor, labels: Tensor, transform) -> None:
        self.folder, self.indices, self.labels, self.transform = folder, indices.tolist(), labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, _ = self.folder.samples[self.indices[i]]
        try:
            image = self.folder.loader(path)
        except Exception as exc:  # PIL raises several types for unreadable files
            raise DataNotFoundError(f"cannot read image {path}: {type(exc).__name__}; remove or replace the file") \
                from None
        return self.transform(image), self.labels[i]


IMAGEFOLDER_MODIFIERS = {
    "norm": "imagenet (default: ImageNet's mean and std), dataset (per-channel mean and std of train/) or none",
}
IMAGEFOLDER_NORMS = ("imagenet", "dataset", "none")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as one channel


def _imagefolder_options(parsed: Spec, text: str) -> dict:
    """The common modifiers of an imagefolder spec, plus ``norm`` (validated, default ``imagenet``)."""
    modifiers = dict(parsed.modifiers)
    norm = modifiers.pop("norm", "imagenet")
    if norm not in IMAGEFOLDER_NORMS:
        raise SpecError(f"modifier norm={norm} in {text!r} must be one of {', '.join(IMAGEFOLDER_NORMS)}")
    options = _parse_options(Spec(parsed.name, modifiers), text, IMAGEFOLDER_MODIFIERS, "image")
    return {**options, "norm": norm}


def _native_format(folder) -> tuple[int, int, str]:
    """The default size (the smallest shorter side) and channels (1 when all are grey) of the
    first image of each class of ``folder``, read from the files' headers, and a description."""
    from PIL import Image

    firsts: dict[int, str] = {}
    for path, target in folder.samples:
        firsts.setdefault(target, path)
    sides, grey = [], True
    for path in firsts.values():
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                grey = grey and image.mode in GREY_MODES
        except Exception as exc:  # PIL raises several types for unreadable files
            raise DataNotFoundError(f"cannot read image {path}: {type(exc).__name__}; remove or replace the file") \
                from None
    if not sides:
        raise DataNotFoundError(f"{folder.root} holds no images")
    return min(sides), 1 if grey else 3, "the first training image of each class"


def _imagefolder_stats(folder, transform, size: int, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over every image of ``folder`` as ``transform`` makes them (the
    model's view before normalisation), float64 sums; kept in the user cache keyed by every
    file's size and mtime."""
    paths = [Path(p) for p, _ in folder.samples]
    fingerprint = {"key": ["imagefolder", str(Path(folder.root).resolve()), size, channels],
                   "version": STATS_VERSION, "torch": torch.__version__,
                   "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    path = sources.user_cache_dir() / "normalisation" / f"{digest}.json"
    stats = _read_stats(path, fingerprint)
    if stats is not None:
        return stats
    labels = torch.tensor(folder.targets, dtype=torch.long)
    split = FolderSplit(_FolderImages(folder, torch.arange(len(labels)), labels, transform), labels,
                        num_workers=min(4, os.cpu_count() or 1))
    stats = chunk_channel_stats(x for x, _ in split.batches(64))
    _write_stats(path, fingerprint, stats)
    return stats


def _imagefolder_root(parsed: Spec) -> Path:
    """The folder an imagefolder spec names, checked to hold ``train/`` and ``test/``."""
    root = Path(parsed.name.split(":", 1)[1]).expanduser()
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise DataNotFoundError(
                f"imagefolder {root} needs train/ and test/ subfolders with one folder per class; "
                f"{root / sub} is missing"
            )
    return root


def _imagefolder_pipeline(channels: int, geometry: list, normalise: list):
    """Channel conversion, then ``geometry``, then float pixels in [0, 1], then ``normalise``."""
    from torchvision.transforms import v2

    base = [v2.Grayscale(1) if channels == 1 else v2.RGB()]
    scaled = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(base + geometry + scaled + normalise)


def _imagefolder_normalisation(norm: str, train_folder, root: Path, size: int,
                               channels: int) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """The per-channel mean and std that ``norm`` picks and a description of where they come from."""
    from torchvision.transforms import v2

    mean: tuple[float, ...]
    std: tuple[float, ...]
    if norm == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
        return mean, std, "ImageNet statistics (norm=imagenet, the default)"
    if norm == "dataset":
        view = _imagefolder_pipeline(channels, [v2.Resize(size, antialias=True), v2.CenterCrop(size)], [])
        mean, std = _imagefolder_stats(train_folder, view, size, channels)
        return mean, std, f"every image in {root / 'train'} at {size}x{size}, {channels} channel(s) (norm=dataset)"
    return (0.0,) * channels, (1.0,) * channels, "none (norm=none): pixel values scaled to [0, 1]"


def _imagefolder_splits(folders: dict, transforms: dict, class_names: list[str], root: Path, options: dict,
                        text: str) -> tuple[dict[str, FolderSplit], dict | None]:
    """The train and test splits with the class selection, the per-class caps and the label noise
    applied, and the label noise's record."""
    splits = {}
    label_noise: dict | None = None
    for sub, cap in (("train", "per_class"), ("test", "test_per_class")):
        folder = folders[sub]
        if folder.classes != class_names:
            raise DataNotFoundError(f"{root}: train/ and test/ hold different class folders")
        targets = torch.tensor(folder.targets, dtype=torch.long)
        keep, labels = select_classes(targets, options.get("classes"), len(class_names), text)
        capped = cap_per_class(labels, options.get(cap), options.get("seed", 0))
        split_labels = labels[capped]
        if sub == "train":
            split_labels, label_noise = _noisy_train_labels(
                split_labels, options, len(options.get("classes") or class_names))
        images = _FolderImages(folder, keep[capped], split_labels, transforms[sub])
        splits[sub] = FolderSplit(images, split_labels, num_workers=min(4, os.cpu_count() or 1))
    return splits, label_noise


def _load_imagefolder(parsed: Spec, text: str, options: dict) -> Dataset:
    """``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` streamed from disk. Without ``size``
    / ``channels`` the images keep their native format (see :func:`_native_format`); ``norm``
    picks ImageNet's statistics (default), those of train/ or none."""
    import torchvision
    from torchvision.transforms import v2

    root = _imagefolder_root(parsed)
    folders = {sub: torchvision.datasets.ImageFolder(str(root / sub)) for sub in ("train", "test")}
    native_size, native_channels, native_from = _native_format(folders["train"])
    size = options.get("size", native_size)
    channels = options.get("channels", native_channels)
    norm = options["norm"]
    mean, std, computed_on = _imagefolder_normalisation(norm, folders["train"], root, size, channels)
    normalise = [v2.Normalize(mean, std)]
    test_tf = _imagefolder_pipeline(channels, [v2.Resize(size, antialias=True), v2.CenterCrop(size)], normalise)
    train_tf = test_tf
    if options.get("aug"):
        train_tf = _imagefolder_pipeline(
            channels, [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()], normalise)
    class_names: list[str] = list(folders["train"].classes)
    splits, label_noise = _imagefolder_splits(folders, {"train": train_tf, "test": test_tf}, class_names, root,
                                              options, text)
    classes = options.get("classes") or list(range(len(class_names)))
    info = {"spec": text, "base": "imagefolder", "modifiers": dict(parsed.modifiers), "source": str(root),
            "kind": "image", "normalisation": {"mode": norm, "mean": list(mean), "std": list(std),
                                               "computed_on": computed_on},
            "format": {"size": size, "channels": channels,
                       "size_from": "size= modifier" if "size" in options else f"native: {native_from}",
                       "channels_from": "channels= modifier" if "channels" in options else f"native: {native_from}"},
            "train_samples": len(splits["train"]), "test_samples": len(splits["test"]),
            "augmentation": "RandomResizedCrop + RandomHorizontalFlip" if options.get("aug") else None,
            "original_classes": classes, "label_noise": label_noise}
    return Dataset(text, splits["train"], splits["test"], len(classes), (channels, size, size),
                   [class_names[c] for c in classes], info)


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Each known dataset with its description and whether it is available offline here."""
    ctx = LoadContext.make(root, False)
    rows = []
    for name, source in SOURCES.items():
        available, where = source.availability(ctx)
        rows.append({"name": name, "description": source.description, "available": available, "where": where,
                     "modifiers": sorted({**COMMON_MODIFIERS, **source.extra_modifiers})})
    rows.append({"name": "imagefolder:PATH", "description": "your images: PATH/train/<class>/*, PATH/test/<class>/*",
                 "available": True, "where": "read from PATH",
                 "modifiers": sorted({**COMMON_MODIFIERS, **IMAGEFOLDER_MODIFIERS})})
    from .synthetic import SYNTHETIC_MODIFIERS

    rows.append({"name": "synthetic", "description": "generated class patterns + noise, any size, nothing stored "
                 "(stand-in for a real dataset of the same shape; the scale benchmarks)", "available": True,
                 "where": "generated", "modifiers": sorted(SYNTHETIC_MODIFIERS)})
    return rows
