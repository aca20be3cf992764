"""``synthetic[...]``: a labelled image-shaped dataset of any size, generated on the fly.

Sample ``i`` of a split has label ``i mod K`` and input ``pattern · prototype[label] + spread · z``
(``pattern`` 1 by default; ``pattern=0`` gives images of pure noise, as for inverting an untrained
network), where
each class's prototype is a smooth random pattern (a seeded ``C x 4 x 4`` draw, upsampled to
``S x S``, unit variance) and ``z`` is standard normal noise computed from ``(seed, split, i,
coordinate)`` by an integer hash. Nothing is stored: a batch of any samples, in any order, on
any process, is the same numbers, so a split of 10^6 samples streams in bounded memory and
shards deterministically. It stands in for a real dataset of the same shape and class count
(the papers' recipes run on it offline) and is the scale case of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SpecError
from ..specs import Spec
from .common import Dataset, add_label_noise

SYNTHETIC_MODIFIERS: dict[str, str] = {
    "train": "training samples (default 10000)",
    "test": "test samples (default 2000)",
    "n_classes": "number of classes (default 10)",
    "size": "image side S (default 32)",
    "channels": "channels C (default 3)",
    "spread": "noise standard deviation around each class's pattern (default 1.0)",
    "pattern": "scale of the class patterns (default 1.0; 0: images of pure noise, the labels then carry nothing)",
    "seed": "seed of the patterns and the noise (default 0)",
    "noise": "fraction F in [0, 1] of training labels replaced by uniformly random classes (seeded, as for every "
             "dataset); the inputs keep their true class's pattern",
}
DEFAULTS = {"train": 10_000, "test": 2_000, "n_classes": 10, "size": 32, "channels": 3, "spread": 1.0, "pattern": 1.0,
            "seed": 0}
MAX_SAMPLES = 100_000_000  # labels are materialised per split: 8 bytes each
_MASK = 0xFFFFFFFF
_SPLIT_SALT = {"train": 0x1B873593, "test": 0x2F1C3A5D}


def synthetic_options(parsed: Spec, text: str) -> dict:
    """The modifiers of a ``synthetic`` spec over their defaults, checked."""
    unknown = sorted(set(parsed.modifiers) - set(SYNTHETIC_MODIFIERS))
    if unknown:
        raise SpecError(f"unknown modifier {unknown[0]!r} in {text!r}; valid modifiers for synthetic: "
                        f"{', '.join(sorted(SYNTHETIC_MODIFIERS))}")
    options = dict(DEFAULTS)
    for key, value in parsed.modifiers.items():
        try:
            options[key] = float(value) if key in ("spread", "noise", "pattern") else int(value)
        except ValueError:
            raise SpecError(f"modifier {key}={value!r} in {text!r} must be a number") from None
    limits = {"train": (2, MAX_SAMPLES), "test": (2, MAX_SAMPLES), "n_classes": (2, 100_000), "size": (1, 1024),
              "channels": (1, 3), "seed": (0, 2**31 - 1)}
    for key, (low, high) in limits.items():
        if not low <= options[key] <= high:
            raise SpecError(f"{key}={options[key]} in {text!r} must be between {low} and {high}")
    for key in ("spread", "pattern"):
        if not 0 <= options[key] <= 1e6:
            raise SpecError(f"{key}={options[key]} in {text!r} must be between 0 and 1e6")
    if not 0 <= options.get("noise", 0.0) <= 1:
        raise SpecError(f"noise={options['noise']} in {text!r} must be a fraction between 0 and 1")
    return options


def _hash(keys: Tensor) -> Tensor:
    """A 32-bit integer hash (murmur3's finaliser) of int64 ``keys``, elementwise."""
    h = keys & _MASK
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def _normal(seed: int, salt: int, rows: Tensor, width: int) -> Tensor:
    """Standard normal ``(len(rows), width)`` from the hash of (seed, salt, row, column) (Box-Muller)."""
    cols = torch.arange(width, dtype=torch.int64)
    base = _hash(rows[:, None] * 0x9E3779B1 + seed * 0x632BE5AB + salt) * 0x27D4EB2F + cols[None, :]
    u1 = (_hash(base).double() + 0.5) / 2**32
    u2 = (_hash(base ^ 0x5BD1E995).double() + 0.5) / 2**32
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()


def class_patterns(classes: int, channels: int, size: int, seed: int) -> Tensor:
    """Each class's smooth pattern ``(K, C, S, S)``: a seeded ``C x 4 x 4`` draw upsampled, unit variance."""
    coarse = torch.randn(classes, channels, 4, 4, generator=torch.Generator().manual_seed(seed))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return fine / fine.flatten(1).std(1).clamp_min(1e-6)[:, None, None, None]


class SyntheticSplit:
    """One split of a synthetic dataset: the samples at ``indices`` (default all ``n``)."""

    def __init__(self, n: int, patterns: Tensor, spread: float, seed: int, salt: int,
                 indices: Tensor | None = None, noisy_labels: Tensor | None = None) -> None:
        self.n, self.patterns, self.spread, self.seed, self.salt = n, patterns, spread, seed, salt
        self.indices = indices
        self.noisy_labels = noisy_labels  # the whole split's labels after label noise, or None

    def __len__(self) -> int:
        return self.n if self.indices is None else len(self.indices)

    def _rows(self, lo: int, hi: int, order: Tensor | None) -> Tensor:
        positions = torch.arange(lo, hi) if order is None else order[lo:hi]
        return positions if self.indices is None else self.indices[positions]

    def _labels_of(self, rows: Tensor) -> Tensor:
        return rows % len(self.patterns) if self.noisy_labels is None else self.noisy_labels[rows]

    @property
    def labels(self) -> Tensor:
        return self._labels_of(torch.arange(self.n) if self.indices is None else self.indices)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def subset(self, indices: Tensor) -> SyntheticSplit:
        """The samples at ``indices`` of this split, in that order."""
        rows = indices if self.indices is None else self.indices[indices]
        return SyntheticSplit(self.n, self.patterns, self.spread, self.seed, self.salt, rows.long(), self.noisy_labels)

    def generate(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The inputs and labels of samples ``rows`` (indices into the full split)."""
        true = rows % len(self.patterns)
        shape = self.patterns.shape[1:]
        noise = _normal(self.seed, self.salt, rows, int(torch.tensor(shape).prod()))
        return self.patterns[true] + self.spread * noise.view(len(rows), *shape), self._labels_of(rows)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu", drop_last: bool = False,
                start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Generated ``(x, y)`` batches in order (or shuffled by ``generator``)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            x, y = self.generate(self._rows(b * batch_size, min((b + 1) * batch_size, n), order))
            yield x.to(device), y.to(device)


def load_synthetic(parsed: Spec, text: str):
    """The :class:`~tunnelscope.data.registry.Dataset` a ``synthetic[...]`` spec names."""

    o = synthetic_options(parsed, text)
    patterns = class_patterns(o["n_classes"], o["channels"], o["size"], o["seed"]) * o["pattern"]
    train, test = (SyntheticSplit(o[name], patterns, o["spread"], o["seed"], _SPLIT_SALT[name])
                   for name in ("train", "test"))
    label_noise = None
    if "noise" in o:
        train.noisy_labels, label_noise = add_label_noise(train.labels, o["noise"], o["n_classes"], o["seed"])
    info = {"spec": text, "base": "synthetic", "modifiers": dict(parsed.modifiers), "source": "generated",
            "kind": "image", "generator": "class pattern (seeded C x 4 x 4, upsampled, unit variance) + spread x "
                                          "hashed standard normal noise; label = index mod n_classes",
            "options": o, "normalisation": None, "train_samples": len(train), "test_samples": len(test),
            "augmentation": None, "original_classes": list(range(o["n_classes"])), "label_noise": label_noise}
    return Dataset(text, train, test, o["n_classes"], (o["channels"], o["size"], o["size"]),
                   [f"class {k}" for k in range(o["n_classes"])], info)


__all__ = ["SYNTHETIC_MODIFIERS", "SyntheticSplit", "class_patterns", "load_synthetic", "synthetic_options"]
