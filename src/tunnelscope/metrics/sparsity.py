"""How many units of a layer are switched off (ReLU sparsity; Nguyen et al. relate it to the
block structure of CKA).

``inactive`` at a point: the fraction of (test example, unit) activations that are exactly 0,
the output of a ReLU below its threshold. ``dead_units``: the fraction of the point's units
that are 0 on *every* test example. Both read the captured features, so with a spatial
reduction a unit is a pooled coordinate (0 only when its whole window is): give
``--reduce flatten`` for the raw units. A point that is no ReLU output (the input, a
normalisation) has no exact zeros and reads about 0.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from .base import Accumulator
from .registry import Metric, Presentation, register


class ZeroActivations(Accumulator):
    """Per point: how many activations were exactly 0, and which units were 0 on every example."""

    def __init__(self, names: list[str], dead: bool) -> None:
        super().__init__()
        self.names, self.dead = list(names), dead
        self.zeros: dict[str, Tensor] = {}
        self.seen = 0
        self.add_state("zeros", {n: torch.zeros((), dtype=torch.float64) for n in self.names})
        self.add_state("seen", 0)
        self.active: dict[str, Tensor] = {}  # per unit: ever non-zero (OR-merged, not summed)

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        for name in self.names:
            off = features[name] == 0
            self.zeros[name] = self.zeros[name].to(off.device) + off.sum(dtype=torch.float64)
            ever = (~off).any(dim=0)
            self.active[name] = ever if name not in self.active else self.active[name] | ever.to(self.active[name])
        self.seen += len(next(iter(features.values())))

    def merge(self, other: Accumulator) -> Accumulator:
        super().merge(other)  # checks that other is a ZeroActivations too
        for name, ever in cast(ZeroActivations, other).active.items():
            self.active[name] = ever if name not in self.active else self.active[name] | ever.to(self.active[name])
        return self

    def all_reduce(self, group=None) -> None:
        super().all_reduce(group)
        import torch.distributed as dist

        for name, ever in self.active.items():
            flags = ever.to(torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
            self.active[name] = flags.bool()

    def compute(self) -> dict[str, float]:
        """The fraction of zero activations (``inactive``) or of units never active (``dead_units``)."""
        out = {}
        for name in self.names:
            if not self.seen or name not in self.active:
                out[name] = math.nan
            elif self.dead:
                out[name] = float((~self.active[name]).double().mean())
            else:
                out[name] = float(self.zeros[name]) / (self.seen * self.active[name].numel())
        return out


register(Metric("inactive", "fraction of activations that are exactly 0 (ReLU sparsity), test split", default=False,
                stream=lambda names, options: ZeroActivations(names, dead=False),
                shown=Presentation("inactive", "fraction of activations at 0", bounds=(0, 1))))
register(Metric("dead_units", "fraction of units that are 0 on every test example, test split", default=False,
                stream=lambda names, options: ZeroActivations(names, dead=True),
                shown=Presentation("dead_units", "fraction of units never active", bounds=(0, 1))))

__all__ = ["ZeroActivations"]
