"""What every dataset loader shares: the :class:`Dataset` record, the common modifiers and
their parsing, class selection, per-class caps, label noise, and the per-channel statistics
cache. The named datasets (:mod:`.registry`), image folders (:mod:`.imagefolder`) and
generated data (:mod:`.synthetic`) build on it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InsufficientDataError, SpecError
from ..io import atomic_write
from ..specs import Spec, parse_index_set, parse_int
from .split import Split

COMMON_MODIFIERS: dict[str, str] = {
    "classes": "keep these classes, relabelled 0..k-1: '0-4', '3', '0-2+5+7'",
    "per_class": "at most N training samples per class (seeded)",
    "test_per_class": "at most N test samples per class (seeded)",
    "noise": "fraction F in [0, 1] of training labels replaced by uniformly random classes (seeded)",
    "size": "resize images to S x S",
    "pad": "a border of P black pixels on every side, after the resize (28 + 2 x 2 = 32: Galanti et al.)",
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
        for key in ("size", "pad", "channels", "aug"):
            if key in options:
                raise SpecError(f"modifier {key!r} applies to images; {spec.name} holds 1-D signals")
    return options


MODIFIER_CAPS = {"size": 4096, "pad": 1024, "n": 10_000_000}  # what a spec may ask for; beyond, memory runs out
MODIFIER_WHY = {"size": "an image side: 1,797 digits at 4096 x 4096 already take 30 GB",
                "pad": "a border: 1,024 pixels on each side of a 28-pixel image is 2,076 x 2,076",
                "n": "mnist1d samples are generated in memory, 40 floats each; use synthetic[...] for more"}


def _option_value(key: str, value: str, text: str) -> Any:
    """One modifier's value, parsed and checked by its key."""
    if key == "classes":
        return parse_index_set(value, key, text)
    if key in ("per_class", "test_per_class", "size", "n", "pad"):
        number = parse_int(value, key, text, minimum=0 if key == "pad" else 1)
        if key in MODIFIER_CAPS and number > MODIFIER_CAPS[key]:
            raise SpecError(f"modifier {key}={number} in {text!r} is above {MODIFIER_CAPS[key]:,}, "
                            f"the most tunnelscope builds ({MODIFIER_WHY[key]})")
        return number
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


STATS_VERSION = 1  # bump when channel_stats changes its numbers: older cache files are then ignored


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


def cached_arrays(folder: Path, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, kept in ``folder`` under a name derived from ``key`` and read back
    while the stored key matches; an absent, unreadable or foreign file is computed again, and a
    read-only folder only costs the computation."""
    import hashlib

    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                return {name: saved[name] for name in saved.files if name != "key"}
    except (OSError, ValueError, KeyError):
        pass
    arrays = compute()
    payload: dict[str, Any] = {"key": np.array(key), **arrays}
    try:
        atomic_write(path, lambda h: np.savez(h, **payload))
    except OSError:
        pass
    return arrays
