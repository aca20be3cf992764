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
- ``pad=P``         then a border of P black (zero) pixels on every side.
- ``channels=C``    1 or 3 (grey replicated to RGB, or RGB to luminance).
- ``aug=1``         RandomResizedCrop + horizontal flip on training images, per sample.
- ``seed=K``        seed of the subsampling and of the label noise (default 0).

Normalisation uses per-channel mean and std of the *whole* base training split as the model
sees it (after the resize, the border and the channel conversion), so class subsets of one dataset share
it; it is computed once per process, kept in the user cache for data read from files (keyed
by the files' sizes and mtimes), and recorded in :attr:`Dataset.info`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SpecError
from ..specs import Spec, parse_spec
from . import sources
from .common import (
    AUGMENTATION,
    COMMON_MODIFIERS,
    STATS_VERSION,
    Dataset,
    _modifier_help,
    _noisy_train_labels,
    _parse_options,
    _read_stats,
    _write_stats,
    cap_per_class,
    chunk_channel_stats,
    select_classes,
)
from .sources import SOURCES, LoadContext, RawData
from .split import TensorSplit


def valid_names() -> list[str]:
    """All base dataset names, plus the ``imagefolder:PATH`` and ``webdataset:PATH`` forms."""
    return sorted([*SOURCES, "synthetic"]) + ["imagefolder:PATH", "webdataset:PATH"]


def check_spec(spec: str) -> None:
    """Raise :class:`SpecError` unless ``spec`` is a valid dataset spec (name and modifiers),
    without reading any file."""
    parsed = parse_spec(spec, "dataset spec")
    if parsed.name.startswith(("imagefolder:", "webdataset:")):
        from .imagefolder import imagefolder_options

        imagefolder_options(parsed, spec)
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
        from .imagefolder import imagefolder_options, load_imagefolder

        return load_imagefolder(parsed, spec, imagefolder_options(parsed, spec))
    if parsed.name.startswith("webdataset:"):
        from .imagefolder import imagefolder_options
        from .shards import load_webdataset

        return load_webdataset(parsed, spec, imagefolder_options(parsed, spec))
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
def _select(x: Tensor, y: Tensor, options: dict, cap_key: str, num_classes: int, spec: str) -> tuple[Tensor, Tensor]:
    keep, labels = select_classes(y, options.get("classes"), num_classes, spec)
    capped = cap_per_class(labels, options.get(cap_key), options.get("seed", 0))
    return x[keep[capped]], labels[capped]


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


def pad_images(x: Tensor, pad: int | None) -> Tensor:
    """A border of ``pad`` zero (black) pixels on every side of a batch of images."""
    return F.pad(x, (pad,) * 4) if pad else x


def geometry(x: Tensor, size: int | None, pad: int | None) -> Tensor:
    """Images resized to ``size`` x ``size``, then given a border of ``pad`` pixels."""
    return pad_images(resize(x, size), pad)


def channel_stats(x: Tensor, scale: float, channels: int | None = None, size: int | None = None,
                  chunk: int = 4096, pad: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over a whole split, float64 sums over chunks of samples.

    The images are taken as the model will see them: resized to ``size`` and given a border
    of ``pad`` pixels (when given) and converted to ``channels`` first, one chunk at a time,
    so the converted split is never materialised. Grey replicated to 3 channels has the grey
    stats three times.
    """
    if channels == 3 and x.shape[1] == 1:
        grey_mean, grey_std = channel_stats(x, scale, None, size, chunk, pad)
        return grey_mean * 3, grey_std * 3
    return chunk_channel_stats(
        (convert_channels(geometry(x[lo : lo + chunk], size, pad) if x.dim() == 4 else x[lo : lo + chunk], channels)
         for lo in range(0, len(x), chunk)), scale)


_STATS: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def normalisation(raw: RawData, key: tuple, size: int | None, channels: int | None, pad: int | None = None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`channel_stats` of a base training split after resize, border and channel conversion,
    remembered for the process (``key`` names the base data: source and generator settings)
    and, for data read from files, across processes in the user cache (see :func:`_stats_file`)."""
    full = (*key, size, channels) if not pad else (*key, size, channels, f"pad={pad}")
    if full not in _STATS:
        path, fingerprint = _stats_file(raw, full)
        stats = _read_stats(path, fingerprint) if path else None
        if stats is None:
            stats = channel_stats(raw.train_x, raw.scale, channels, size, pad=pad)
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
    pad = options.get("pad") if raw.kind == "image" else None
    base = (parsed.name, raw.source, options.get("n"), options.get("data_seed"))
    mean, std = normalisation(raw, base, size, channels, pad)
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
            x = convert_channels(geometry(x, size, pad), channels)
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
                       + (f", with a border of {pad} pixels" if pad else "")
                       + (f" and converting to {channels} channel(s)" if channels else "")},
        "train_samples": len(train), "test_samples": len(test),
        "augmentation": AUGMENTATION if augment else None, "original_classes": classes,
        "label_noise": label_noise,
    }
    return Dataset(text, train, test, len(classes), input_shape,
                   [raw.class_names[c] for c in classes], info)


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Each known dataset with its description and whether it is available offline here."""
    ctx = LoadContext.make(root, False)
    rows = []
    for name, source in SOURCES.items():
        available, where = source.availability(ctx)
        rows.append({"name": name, "description": source.description, "available": available, "where": where,
                     "modifiers": sorted({**COMMON_MODIFIERS, **source.extra_modifiers})})
    from .imagefolder import IMAGEFOLDER_MODIFIERS
    from .synthetic import SYNTHETIC_MODIFIERS

    rows.append({"name": "imagefolder:PATH", "description": "your images: PATH/train/<class>/*, PATH/test/<class>/*",
                 "available": True, "where": "read from PATH",
                 "modifiers": sorted({**COMMON_MODIFIERS, **IMAGEFOLDER_MODIFIERS})})
    rows.append({"name": "webdataset:PATH", "description": "your images in WebDataset tar shards: PATH/train/*.tar, "
                 "PATH/test/*.tar (KEY.png or .jpg, KEY.cls)", "available": True, "where": "read from PATH",
                 "modifiers": sorted({**COMMON_MODIFIERS, **IMAGEFOLDER_MODIFIERS})})
    rows.append({"name": "synthetic", "description": "generated class patterns + noise, any size, nothing stored "
                 "(stand-in for a real dataset of the same shape; the scale benchmarks)", "available": True,
                 "where": "generated", "modifiers": sorted(SYNTHETIC_MODIFIERS)})
    return rows
