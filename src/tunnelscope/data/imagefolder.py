"""``imagefolder:PATH``: your images, ``PATH/train/<class>/*`` and ``PATH/test/<class>/*``,
streamed from disk by DataLoader workers.

The folders are listed by :func:`scan_folder`, not by torchvision's walk: directory links are
not followed (a link loop, ``a/loop -> ..``, or a link to ``/etc`` would multiply or invent
samples), files that are not regular files (FIFOs, sockets, devices) are skipped rather than
read (a FIFO blocks a reader for ever), and each image is counted once by its real path (a
file linked into two classes is refused). Linked *files* are followed: image subsets are often
built as links into a larger collection. What was skipped is said in one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataNotFoundError, SpecError
from ..specs import Spec
from ..threads import usable_cpus
from . import sources
from .common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STATS_VERSION,
    Dataset,
    _noisy_train_labels,
    _parse_options,
    _read_stats,
    _write_stats,
    cap_per_class,
    chunk_channel_stats,
    select_classes,
)
from .split import FolderSplit

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ScannedFolder:
    """One split's images: class folder names (sorted), ``(path, class index)`` samples, and
    what was left out (directory links, non-regular files)."""

    root: str
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped_links: list[str] = field(default_factory=list)
    skipped_special: list[str] = field(default_factory=list)

    kind = "imagefolder"

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @staticmethod
    def loader(path: str) -> Any:
        from torchvision.datasets.folder import default_loader

        return default_loader(path)

    @staticmethod
    def open_image(path: str) -> Any:
        """The image file at ``path``, opened lazily by PIL (a context manager)."""
        from PIL import Image

        return Image.open(path)

    def files(self) -> list[list]:
        """What identifies the images' contents for a cache key: every file's path, size and mtime."""
        return [[p, st.st_size, st.st_mtime_ns] for p, st in ((p, Path(p).stat()) for p, _ in self.samples)]


def _regular_image(path: str, skipped_special: list[str]) -> str | None:
    """The real path of ``path`` when it is (or links to) a regular image file, else None."""
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return None
    try:
        mode = os.stat(path).st_mode  # follows a file link; a dangling link raises
    except OSError:
        skipped_special.append(path)
        return None
    if not stat.S_ISREG(mode):
        skipped_special.append(path)
        return None
    return os.path.realpath(path)


def scan_folder(root: Path) -> ScannedFolder:
    """The images under ``root/<class>/`` (class folders that are links are not followed)."""
    classes: list[str] = []
    skipped_links: list[str] = []
    skipped_special: list[str] = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                classes.append(entry.name)
            elif entry.is_symlink() and os.path.isdir(entry.path):
                skipped_links.append(entry.path)
    samples: list[tuple[str, int]] = []
    owner: dict[str, tuple[int, str]] = {}
    for index, name in enumerate(classes):
        for folder, dirs, files in os.walk(root / name, followlinks=False):
            skipped_links += [os.path.join(folder, d) for d in dirs if os.path.islink(os.path.join(folder, d))]
            dirs.sort()
            for file in sorted(files):
                path = os.path.join(folder, file)
                real = _regular_image(path, skipped_special)
                if real is None:
                    continue
                if real in owner:
                    first_class, first_path = owner[real]
                    if first_class != index:
                        raise DataNotFoundError(f"{path} and {first_path} are the same image in classes "
                                                f"{classes[first_class]!r} and {name!r}; keep it in one class")
                    continue  # the same file reached twice in one class: counted once
                owner[real] = (index, path)
                samples.append((path, index))
    return ScannedFolder(str(root), classes, samples, skipped_links, skipped_special)


def _warn_skipped(folders: dict[str, ScannedFolder]) -> None:
    """One warning naming what the scan left out, if anything."""
    links = [p for f in folders.values() for p in f.skipped_links]
    special = [p for f in folders.values() for p in f.skipped_special]
    parts = []
    if links:
        parts.append(f"{len(links)} linked folder(s) not followed (e.g. {links[0]})")
    if special:
        parts.append(f"{len(special)} file(s) that are not regular files skipped (e.g. {special[0]})")
    if parts:
        warnings.warn("imagefolder: " + "; ".join(parts), stacklevel=4)


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


def imagefolder_options(parsed: Spec, text: str) -> dict:
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
    firsts: dict[int, Any] = {}
    for path, target in folder.samples:
        firsts.setdefault(target, path)
    sides, grey = [], True
    for path in firsts.values():
        try:
            with folder.open_image(path) as image:
                sides.append(min(image.size))
                grey = grey and image.mode in GREY_MODES
        except Exception as exc:  # PIL raises several types for unreadable files
            raise DataNotFoundError(f"cannot read image {path}: {type(exc).__name__}; remove or replace the file") \
                from None
    if not sides:
        raise DataNotFoundError(f"{folder.root} holds no images")
    return min(sides), 1 if grey else 3, "the first training image of each class"


def _imagefolder_stats(folder, transform, size: int, channels: int, pad: int = 0
                       ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over every image of ``folder`` as ``transform`` makes them (the
    model's view before normalisation), float64 sums; kept in the user cache keyed by every
    file's size and mtime."""
    key = [folder.kind, str(Path(folder.root).resolve()), size, channels, *([f"pad={pad}"] if pad else [])]
    fingerprint = {"key": key, "version": STATS_VERSION, "torch": torch.__version__, "files": folder.files()}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
    path = sources.user_cache_dir() / "normalisation" / f"{digest}.json"
    stats = _read_stats(path, fingerprint)
    if stats is not None:
        return stats
    labels = torch.tensor(folder.targets, dtype=torch.long)
    split = FolderSplit(_FolderImages(folder, torch.arange(len(labels)), labels, transform), labels,
                        num_workers=min(4, usable_cpus()))
    stats = chunk_channel_stats(x for x, _ in split.batches(64))
    _write_stats(path, fingerprint, stats)
    return stats


def spec_root(parsed: Spec, holding: str = "one folder per class") -> Path:
    """The folder a ``KIND:PATH`` spec names, checked to hold ``train/`` and ``test/``."""
    kind, path = parsed.name.split(":", 1)
    root = Path(path).expanduser()
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise DataNotFoundError(f"{kind} {root} needs train/ and test/ subfolders with {holding}; "
                                    f"{root / sub} is missing")
    return root


def _imagefolder_pipeline(channels: int, geometry: list, normalise: list):
    """Channel conversion, then ``geometry``, then float pixels in [0, 1], then ``normalise``."""
    from torchvision.transforms import v2

    base = [v2.Grayscale(1) if channels == 1 else v2.RGB()]
    scaled = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(base + geometry + scaled + normalise)


def _imagefolder_normalisation(norm: str, train_folder, root: Path, size: int, channels: int,
                               border: list) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """The per-channel mean and std that ``norm`` picks and a description of where they come from."""
    from torchvision.transforms import v2

    mean: tuple[float, ...]
    std: tuple[float, ...]
    if norm == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
        return mean, std, "ImageNet statistics (norm=imagenet, the default)"
    if norm == "dataset":
        view = _imagefolder_pipeline(channels, [v2.Resize(size, antialias=True), v2.CenterCrop(size), *border], [])
        pad = border[0].padding if border else 0
        mean, std = _imagefolder_stats(train_folder, view, size, channels, pad)
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
        splits[sub] = FolderSplit(images, split_labels, num_workers=min(4, usable_cpus()))
    return splits, label_noise


def load_imagefolder(parsed: Spec, text: str, options: dict) -> Dataset:
    """``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` streamed from disk. Without ``size``
    / ``channels`` the images keep their native format (see :func:`_native_format`); ``norm``
    picks ImageNet's statistics (default), those of train/ or none."""
    root = spec_root(parsed)
    folders = {sub: scan_folder(root / sub) for sub in ("train", "test")}
    for sub, folder in folders.items():
        if not folder.samples:
            raise DataNotFoundError(f"{root / sub} holds no images (regular files named *.png, *.jpg, ...) in "
                                    "class folders")
    _warn_skipped(folders)
    return load_scanned(folders, root, parsed, text, options)


def load_scanned(folders: dict[str, Any], root: Path, parsed: Spec, text: str, options: dict) -> Dataset:
    """The dataset of scanned ``train`` and ``test`` images (:class:`ScannedFolder` or anything with
    its ``kind``, ``root``, ``classes``, ``samples``, ``targets``, ``loader``, ``open_image`` and
    ``files``), streamed by DataLoader workers with the spec's format, normalisation and selection."""
    from torchvision.transforms import v2

    native_size, native_channels, native_from = _native_format(folders["train"])
    size = options.get("size", native_size)
    channels = options.get("channels", native_channels)
    norm = options["norm"]
    border = [v2.Pad(options["pad"])] if options.get("pad") else []
    mean, std, computed_on = _imagefolder_normalisation(norm, folders["train"], root, size, channels, border)
    normalise = [v2.Normalize(mean, std)]
    test_tf = _imagefolder_pipeline(channels, [v2.Resize(size, antialias=True), v2.CenterCrop(size), *border],
                                    normalise)
    train_tf = test_tf
    if options.get("aug"):
        train_tf = _imagefolder_pipeline(
            channels, [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *border], normalise)
    class_names: list[str] = list(folders["train"].classes)
    splits, label_noise = _imagefolder_splits(folders, {"train": train_tf, "test": test_tf}, class_names, root,
                                              options, text)
    classes = options.get("classes") or list(range(len(class_names)))
    info = {"spec": text, "base": folders["train"].kind, "modifiers": dict(parsed.modifiers), "source": str(root),
            "kind": "image", "normalisation": {"mode": norm, "mean": list(mean), "std": list(std),
                                               "computed_on": computed_on},
            "format": {"size": size, "pad": options.get("pad", 0), "channels": channels,
                       "size_from": "size= modifier" if "size" in options else f"native: {native_from}",
                       "channels_from": "channels= modifier" if "channels" in options else f"native: {native_from}"},
            "train_samples": len(splits["train"]), "test_samples": len(splits["test"]),
            "augmentation": "RandomResizedCrop + RandomHorizontalFlip" if options.get("aug") else None,
            "original_classes": classes, "label_noise": label_noise}
    side = size + 2 * options.get("pad", 0)
    return Dataset(text, splits["train"], splits["test"], len(classes), (channels, side, side),
                   [class_names[c] for c in classes], info)


__all__ = ["IMAGEFOLDER_MODIFIERS", "ScannedFolder", "imagefolder_options", "load_imagefolder", "load_scanned",
           "scan_folder", "spec_root"]
