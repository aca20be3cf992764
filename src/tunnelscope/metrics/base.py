"""The accumulator protocol: ``update`` with a batch, ``merge`` shards, ``compute`` results.

All state is float64. Accumulators whose sums are taken around a shift vector re-express
a shard around their own shift before adding (an exact identity), so merging shards gives
the same state as one pass over their concatenation, up to float64 rounding.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Accumulator(Protocol):
    """What every streaming statistic offers."""

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        """Add one batch: ``features[point]`` is ``(B, D)``, ``labels`` is ``(B,)``."""

    def merge(self, other: "Accumulator") -> "Accumulator":
        """Add another shard's state into this one and return self."""

    def all_reduce(self, group=None) -> None:
        """Sum the state over the processes of a ``torch.distributed`` group, in place."""


class PointAccuracy:
    """Correct-prediction counts per point over a stream: the shared half of the read-outs.

    Subclasses implement ``update`` and add to ``self.correct[point]`` and ``self.seen``.
    """

    def __init__(self, points: list[str], device: torch.device | str = "cpu") -> None:
        self.correct = {k: torch.zeros((), dtype=torch.float64, device=device) for k in points}
        self.seen = 0

    def merge(self, other: "PointAccuracy") -> "PointAccuracy":
        """Add another shard's counts and return self."""
        for k in self.correct:
            self.correct[k] += other.correct[k]
        self.seen += other.seen
        return self

    def all_reduce(self, group=None) -> None:
        """Sum the counts over a ``torch.distributed`` group."""
        import torch.distributed as dist

        device = next(iter(self.correct.values())).device
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=device)
        dist.all_reduce(seen, group=group)
        self.seen = int(seen)
        for k in sorted(self.correct):
            dist.all_reduce(self.correct[k], group=group)

    def compute(self) -> dict[str, float]:
        """Accuracy per point."""
        return {k: float(v) / self.seen for k, v in self.correct.items()}


class ModelAccuracy:
    """The model's own test accuracy, read from ``features.output`` (a capture that ran the whole
    forward pass). Batches without a ``(B, C)`` output are not counted; ``compute`` is NaN then."""

    def __init__(self) -> None:
        self.correct = 0
        self.seen = 0

    def update(self, features, labels: Tensor) -> None:
        out = getattr(features, "output", None)
        if isinstance(out, Tensor) and out.dim() == 2 and len(out) == len(labels):
            self.correct += int((out.argmax(1) == labels).sum())
            self.seen += len(labels)

    def merge(self, other: "ModelAccuracy") -> "ModelAccuracy":
        self.correct += other.correct
        self.seen += other.seen
        return self

    def compute(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")
