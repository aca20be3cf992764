"""How much consecutive probe points change the representation.

``l1_step`` at point ``l``: the mean over test examples of ``‖h_l(x) − h_{l−1}(x)‖₁ / D``,
the average absolute change per coordinate from the previous point (layer 0, the input,
when read) to this one. Defined only where the two points have the same width (MLP
hidden layers, residual stages); NaN elsewhere. Inside a tunnel the step is small: the
layers keep, and compress, what the extractor built.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Accumulator
from .registry import Metric, Options, Presentation, register


class ConsecutiveL1(Accumulator):
    """Summed per-coordinate L1 distance between each point and the point before it."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.total: dict[str, Tensor] = {}
        self.seen = 0
        self.add_state("total", {n: torch.zeros((), dtype=torch.float64) for n in self.names[1:]})
        self.add_state("seen", 0)
        self.widths: dict[str, int] = {}

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        for before, here in zip(self.names, self.names[1:]):
            a, b = features[before], features[here]
            self.widths[here] = b.shape[1] if a.shape[1] == b.shape[1] else 0
            if self.widths[here]:
                step = (b.double() - a.double()).abs().sum() / b.shape[1]
                self.total[here] = self.total[here].to(step.device) + step
        self.seen += len(next(iter(features.values())))

    def compute(self) -> dict[str, float]:
        """The mean step per point (NaN for the first point and where widths differ)."""
        out = {self.names[0]: math.nan}
        for name in self.names[1:]:
            out[name] = float(self.total[name]) / self.seen if self.widths.get(name) else math.nan
        return out


def _stream(names: list[str], options: Options) -> ConsecutiveL1:
    return ConsecutiveL1(names)


register(Metric("l1_step", "mean per-coordinate L1 distance from the previous point (equal widths), test split",
                default=False, stream=_stream,
                shown=Presentation("l1_step", "mean |Δ| from the previous point", bounds=(0, None))))

__all__ = ["ConsecutiveL1"]
