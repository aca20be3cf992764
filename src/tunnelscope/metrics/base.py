"""The accumulator protocol: ``update`` with a batch, ``merge`` shards, ``compute`` results.

All state is float64. Accumulators whose sums are taken around a shift vector re-express
a shard around their own shift before adding (an exact identity), so merging shards gives
the same state as one pass over their concatenation, up to float64 rounding.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Accumulator(Protocol):
    """What every streaming statistic offers."""

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        """Add one batch: ``features[point]`` is ``(B, D)``, ``labels`` is ``(B,)``."""

    def merge(self, other: "Accumulator") -> "Accumulator":
        """Add another shard's state into this one and return self."""

    def all_reduce(self, group=None) -> None:
        """Sum the state over the processes of a ``torch.distributed`` group, in place."""
