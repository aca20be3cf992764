"""First and second moments per probe point, per class, as class-shifted sums.

Each sample is taken relative to a shift vector ``a_c`` of its own class, fixed when the
class is first seen (that batch's class mean, rounded to the features' precision). For
each point the state is:

- ``n_c``, ``cs1_c = Σ_{i∈c} (x_i - a_c)`` and ``cq_c = Σ_{i∈c} ‖x_i - a_c‖²`` per class;
- ``w2 = Σ_i (x_i - a_{c(i)})(x_i - a_{c(i)})ᵀ`` (one ``D x D`` matrix);
- ``nonfinite``: rows with NaN or Inf seen.

Then the within-class scatter is ``S_W = w2 - Σ_c cs1_c cs1_cᵀ / n_c`` (cancellation only
against each class's small offset from its shift), the between-class scatter
``S_B = Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ`` is exact from the class means, and the total
scatter is their sum: no subtraction of large numbers anywhere, so collapsed layers
(``S_W ≪ S_B``) and ReLU features with large means keep their precision.

All points share one batch of samples, so :class:`Moments` keeps the vectors of all
points concatenated (``Σ D_l`` wide) and does the elementwise and per-class work of a
batch in a handful of operations; only ``w2`` is per point. Merging re-expresses a
shard's sums around this shard's shifts (exact identities) and adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..features import joint_features
from .base import Accumulator

f64 = torch.float64


@dataclass
class PointMoments:
    """Class-shifted sums for one probe point (see the module docstring)."""

    shift: Tensor  # (C, D) per-class shifts (zero for classes never seen)
    cn: Tensor  # (C,)
    cs1: Tensor  # (C, D)
    cq: Tensor  # (C,)
    w2: Tensor | None  # (D, D); None when the moments were kept without scatter
    nonfinite: Tensor  # ()

    @property
    def n(self) -> Tensor:
        return self.cn.sum()

    @property
    def count(self) -> int:
        return int(self.n)

    def present(self) -> Tensor:
        """Boolean mask of classes with at least one sample."""
        return self.cn > 0

    def class_means(self) -> Tensor:
        """``(C, D)`` class means; rows of absent classes are NaN."""
        return self.shift + self.cs1 / self.cn[:, None]

    def mean(self) -> Tensor:
        keep = self.present()
        return (self.class_means()[keep] * self.cn[keep, None]).sum(0) / self.n

    def class_variances(self) -> Tensor:
        """``Var_c = (1/n_c) Σ_{i∈c} ‖x_i - μ_c‖²``; NaN for absent classes."""
        offset = self.cs1 / self.cn[:, None]
        return self.cq / self.cn - (offset * offset).sum(1)

    def within_scatter(self) -> Tensor:
        """``Σ_c Σ_{i∈c} (x_i - μ_c)(x_i - μ_c)ᵀ``."""
        if self.w2 is None:
            raise RuntimeError("no D x D scatter for this point: its moments were kept without scatter or released")
        keep = self.present()
        offset = self.cs1[keep]
        return self.w2 - (offset.T / self.cn[keep]) @ offset

    def between_scatter(self) -> Tensor:
        """``Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ``."""
        keep = self.present()
        dev = self.class_means()[keep] - self.mean()
        return (dev.T * self.cn[keep]) @ dev

    def scatter(self) -> Tensor:
        """``Σ_i (x_i - μ)(x_i - μ)ᵀ`` over all samples: within plus between."""
        return self.within_scatter() + self.between_scatter()

    def covariance(self, scatter: Tensor | None = None) -> Tensor:
        """Centred sample covariance, divided by ``n - 1`` (``scatter``: :meth:`scatter`, if at hand)."""
        return (self.scatter() if scatter is None else scatter) / (self.n - 1)

    def second_moment(self, scatter: Tensor | None = None) -> Tensor:
        """Uncentred ``Σ x xᵀ`` (``Hᵀ H`` for the feature matrix ``H``; ``scatter`` as above)."""
        mu = self.mean()
        return (self.scatter() if scatter is None else scatter) + self.n * torch.outer(mu, mu)


class Moments(Accumulator):
    """Streaming moments of every probe point (see the module docstring).

    ``matmul_dtype`` is the precision of the per-batch product of centred features
    (float32 by default: the features are centred first, so its rounding is relative to
    their within-class spread, not their mean); with float64 the whole update is float64.
    Running sums are always float64. ``merge`` and ``all_reduce`` override the base
    class's plain sums: shards are first re-expressed around common shifts.
    """

    def __init__(self, num_classes: int, matmul_dtype: torch.dtype = torch.float32, scatter: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matmul_dtype = matmul_dtype
        self.scatter = scatter  # False: class counts, means and norms only, no D x D products
        self.names: list[str] = []
        self.dims: list[int] = []
        self.state: dict[str, Tensor] = {}
        self.w2: list[Tensor | None] = []
        self._unseen: set[int] = set(range(num_classes))

    # ------------------------------------------------------------------ layout
    @property
    def bounds(self) -> list[tuple[int, int]]:
        ends = torch.tensor(self.dims, dtype=torch.long).cumsum(0).tolist()
        return [(e - d, e) for d, e in zip(self.dims, ends)]

    def _segment_sums(self, wide: Tensor) -> Tensor:
        """``(..., Σ D)`` → ``(..., L)``: sums over each point's columns."""
        return torch.stack([wide[..., lo:hi].sum(-1) for lo, hi in self.bounds], dim=-1)

    def _init(self, features: dict[str, Tensor], total: int, device: torch.device) -> None:
        self.names = list(features)
        self.dims = [x.shape[1] for x in features.values()]
        z = lambda *s: torch.zeros(*s, dtype=f64, device=device)  # noqa: E731
        C, L = self.num_classes, len(self.dims)
        self.state = {"shift": z(C, total), "cn": z(C), "cs1": z(C, total), "cq": z(C, L), "nonfinite": z(L)}
        self.w2 = [z(d, d) for d in self.dims] if self.scatter else []

    def _set_new_shifts(self, joint: Tensor, labels: Tensor) -> None:
        """Give classes seen for the first time their batch mean as shift."""
        present = set(torch.unique(labels).tolist())
        new = sorted(present & self._unseen)
        if not new:
            return
        finite = torch.isfinite(joint).all(1)
        for c in new:
            rows = joint[(labels == c) & finite]
            if len(rows):
                self.state["shift"][c] = rows.double().mean(0).to(joint.dtype).double()
        self._unseen -= set(new)

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        """Add one batch: ``features[point]`` is ``(B, D)``, ``labels`` is ``(B,)``."""
        full = self.matmul_dtype == f64 or any(x.dtype == f64 for x in features.values())
        work = f64 if full else torch.float32
        joint, _ = joint_features(features, list(features), work)
        labels = labels.long()
        if not self.state:
            self._init(features, joint.shape[1], joint.device)
        elif list(features) != self.names:
            raise ValueError(f"moments were started on points {self.names}, not {list(features)}")
        if self._unseen:
            self._set_new_shifts(joint, labels)
        st = self.state
        centred = joint - st["shift"].to(work)[labels]  # exact for values near their class's shift
        # per-batch sums of at most B small centred values, in the working precision, then float64 totals
        rowsq = torch.stack([torch.linalg.vector_norm(centred[:, lo:hi], dim=1, dtype=f64) for lo, hi in self.bounds],
                            dim=1).square()  # float64 norms: large finite values do not overflow
        batch_cs1 = torch.zeros(self.num_classes, joint.shape[1], dtype=work, device=joint.device)
        st["cs1"] += batch_cs1.index_add_(0, labels, centred)
        st["cn"] += torch.bincount(labels, minlength=self.num_classes).to(f64)
        st["cq"].index_add_(0, labels, rowsq)
        st["nonfinite"] += (~torch.isfinite(rowsq)).sum(0)  # NaN and Inf survive the row sums
        mm = centred.to(self.matmul_dtype)
        for w2, (lo, hi) in zip(self._all_w2(), self.bounds):  # no w2 kept: no products
            part = mm[:, lo:hi]
            w2 += part.T @ part

    def reset(self) -> None:
        """Forget every sample (and the points and shifts)."""
        self.__init__(self.num_classes, self.matmul_dtype, self.scatter)  # type: ignore[misc]

    def release(self, name: str) -> None:
        """Free the ``D x D`` scatter of one point once its metrics are computed; its class
        counts, means and norms stay (NCC and CDNV still work)."""
        i = self.names.index(name)
        if self.w2 and self.w2[i] is not None:
            self.w2[i] = None

    def _all_w2(self) -> list[Tensor]:
        """Every point's ``w2``, for the operations that update them all (refused once one is released)."""
        kept = [w2 for w2 in self.w2 if w2 is not None]
        if len(kept) != len(self.w2):
            raise RuntimeError("a point's scatter was released: these moments can no longer be updated, merged "
                               "or reduced")
        return kept

    @staticmethod
    def planned_bytes(num_classes: int, dims: list[int], scatter: bool = True) -> int:
        """Bytes :class:`Moments` will allocate for points of widths ``dims``."""
        total = sum(dims)
        return 8 * (2 * num_classes * total + num_classes * (1 + len(dims)) + len(dims)
                    + (sum(d * d for d in dims) if scatter else 0))

    # ------------------------------------------------------------------ shards
    def reshift(self, new: Tensor) -> None:
        """Re-express every sum around per-class shifts ``new`` (exact identities)."""
        st = self.state
        d = st["shift"] - new  # (C, Σ D): x - new_c = (x - old_c) + d_c
        cn, cs1 = st["cn"], st["cs1"]
        for w2, (lo, hi) in zip(self._all_w2(), self.bounds):
            s, di = cs1[:, lo:hi], d[:, lo:hi]
            w2 += s.T @ di + di.T @ s + (di.T * cn) @ di
        st["cq"] += 2 * self._segment_sums(cs1 * d) + cn[:, None] * self._segment_sums(d * d)
        st["cs1"] += cn[:, None] * d
        st["shift"] = new.clone()

    def _copy(self) -> Moments:
        other = Moments(self.num_classes, self.matmul_dtype, self.scatter)
        other.names, other.dims = list(self.names), list(self.dims)
        other.state = {k: v.clone() for k, v in self.state.items()}
        other.w2 = [s.clone() for s in self._all_w2()]
        other._unseen = set(self._unseen)
        return other

    def merge(self, other: Accumulator) -> Moments:
        """Add another shard (same points and classes) into this one and return self."""
        assert isinstance(other, Moments)
        if not other.state:
            return self
        if not self.state:
            self.__dict__.update(other._copy().__dict__)
            return self
        if other.names != self.names or other.dims != self.dims:
            raise ValueError("cannot merge moments over different points")
        mine_seen = (self.state["cn"] > 0)[:, None]
        target = torch.where(mine_seen, self.state["shift"], other.state["shift"])
        theirs = other._copy()
        self.reshift(target)
        theirs.reshift(target)
        for k in ("cn", "cs1", "cq", "nonfinite"):
            self.state[k] += theirs.state[k]
        for mine, t in zip(self._all_w2(), theirs._all_w2()):
            mine += t
        self._unseen &= other._unseen
        return self

    def all_reduce(self, group=None) -> None:
        """Sum over a ``torch.distributed`` group, in place.

        Each class's common shift is the mean of the shifts of the processes that saw it.
        """
        import torch.distributed as dist

        st = self.state
        seen = (st["cn"] > 0).to(f64)
        total_shift = st["shift"] * seen[:, None]
        dist.all_reduce(total_shift, group=group)
        dist.all_reduce(seen, group=group)
        target = total_shift / seen.clamp_min(1)[:, None]
        self.reshift(target)
        for k in ("cn", "cs1", "cq", "nonfinite"):
            dist.all_reduce(st[k], group=group)
        for s in self._all_w2():
            dist.all_reduce(s, group=group)
        self._unseen = {c for c in range(self.num_classes) if st["cn"][c] == 0}

    # ------------------------------------------------------------------ results
    @property
    def points(self) -> dict[str, PointMoments]:
        """Per-point views of the state."""
        st = self.state
        return {name: PointMoments(st["shift"][:, lo:hi], st["cn"], st["cs1"][:, lo:hi], st["cq"][:, i],
                                   self.w2[i] if self.scatter else None, st["nonfinite"][i])
                for i, (name, (lo, hi)) in enumerate(zip(self.names, self.bounds))}
