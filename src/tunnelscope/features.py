"""The features of one batch at every probe point: the container shared by capture and metrics.

:class:`Features` maps each probe point to a ``(B, D)`` tensor and builds, once per dtype,
the matrix of all points side by side that several accumulators share. It depends on
torch only, so that both the capture (which fills it) and the metrics (which read it)
import it without importing each other.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Features(dict):
    """``{point: (B, D) tensor}`` for one batch, that also builds, once per dtype, the
    matrix of all points side by side (``B x Σ D``) which several accumulators share.
    ``output`` is the model's own output for the batch when the capture ran the whole
    forward pass (else None)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._joint: dict[torch.dtype, Tensor] = {}
        self.output: Tensor | None = None

    def joint(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """All points' features concatenated along dim 1, in ``dtype`` (cached)."""
        if dtype not in self._joint:
            narrow = self._joint.get(torch.float32)
            if dtype == torch.float64 and narrow is not None and all(x.dtype == torch.float32 for x in self.values()):
                self._joint[dtype] = narrow.to(dtype)  # exact, and one copy instead of a conversion and a cat
            else:
                self._joint[dtype] = torch.cat([x.to(dtype) for x in self.values()], dim=1)
        return self._joint[dtype]

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Column range of each point in :meth:`joint`."""
        out, lo = {}, 0
        for name, x in self.items():
            out[name] = (lo, lo + x.shape[1])
            lo += x.shape[1]
        return out


def joint_features(features: dict[str, Tensor], names: list[str],
                   dtype: torch.dtype) -> tuple[Tensor, list[tuple[int, int]]]:
    """The ``B x Σ D`` matrix of ``names`` in ``dtype`` and each point's column range,
    reusing a :class:`Features` cache when the points are a run of its points, in order (all of
    them, or all but some left out at either end: a column slice of its joint matrix)."""
    order = list(features)
    if isinstance(features, Features) and names and order[order.index(names[0]):][:len(names)] == list(names):
        bounds = features.bounds()
        start = bounds[names[0]][0]
        joint = features.joint(dtype)
        if len(names) < len(order):
            joint = joint[:, start:bounds[names[-1]][1]]
        return joint, [(bounds[n][0] - start, bounds[n][1] - start) for n in names]
    parts = [features[n].to(dtype) for n in names]
    ends = torch.tensor([p.shape[1] for p in parts]).cumsum(0).tolist()
    return torch.cat(parts, dim=1), [(e - p.shape[1], e) for p, e in zip(parts, ends)]


def point_views(features: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Each point's features in ``dtype``: views of the shared joint matrix of a
    :class:`Features` (converted once for all points), or per-point conversions."""
    if isinstance(features, Features):
        joint = features.joint(dtype)
        return {name: joint[:, lo:hi] for name, (lo, hi) in features.bounds().items()}
    return {name: x.to(dtype) for name, x in features.items()}
