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

A point wider than the number of samples the accumulator is told to expect (``samples``)
keeps its class-shifted rows ``x_i - a_c`` instead of ``w2``: ``N x D`` is then smaller than
``D x D``, and every derived quantity comes from the ``N x N`` Gram side (the nonzero
eigenvalues of ``XᵀX`` are those of ``XXᵀ``; the first principal direction is ``Xᵀu``
normalised; projections of the within-class scatter are products with the rows).

All points share one batch of samples, so :class:`Moments` keeps the vectors of all
points concatenated (``Σ D_l`` wide) and does the elementwise and per-class work of a
batch in a handful of operations; only ``w2`` is per point. Merging re-expresses a
shard's sums around this shard's shifts (exact identities) and adds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..features import joint_features
from .base import Accumulator
from .linalg import eigenvalues, top_eigenvector

f64 = torch.float64


def add_gram(total: Tensor, part: Tensor) -> bool:
    """``total += partᵀ part``. On the CPU only the upper triangle is computed and added (BLAS
    ``syrk``: half the multiplications of a matrix product, and a faster kernel at large ``D``);
    returns whether ``total``'s lower triangle is now stale (see :func:`symmetrise`)."""
    if part.device.type != "cpu" or part.dtype not in (torch.float32, f64) or part.shape[1] < 2:
        total += part.T @ part
        return False
    from scipy.linalg import blas

    syrk = blas.ssyrk if part.dtype == torch.float32 else blas.dsyrk
    lower = syrk(1.0, part.T.numpy(), trans=0, lower=1)  # (D, D) Fortran order: its transpose is upper, C order
    if total.is_contiguous() and total.dtype == f64:
        out = total.numpy()
        np.add(out, lower.T, out=out)  # numpy's mixed float32 + float64 add is ~4x torch's here
    else:
        total += torch.from_numpy(lower).T
    return True


SYMMETRISE_BLOCK = 256  # columns copied at a time by symmetrise on the CPU


def symmetrise(total: Tensor) -> None:
    """Copy the upper triangle of ``total`` onto its lower one, in place (in inference mode when
    ``total`` was made in it, as the statistics passes make it). A contiguous CPU matrix wider
    than two blocks is copied block column by block column through numpy, with no ``D x D``
    temporaries: 8x faster at ``D = 1,568`` and 13x at 4,096 than the two-``triu`` form."""
    d = total.shape[0]
    if (total.device.type == "cpu" and total.is_contiguous() and total.dtype in (torch.float32, f64)
            and d > 2 * SYMMETRISE_BLOCK):
        matrix = total.detach().numpy()
        for lo in range(0, d, SYMMETRISE_BLOCK):
            hi = min(lo + SYMMETRISE_BLOCK, d)
            diagonal = matrix[lo:hi, lo:hi]
            diagonal[...] = np.triu(diagonal) + np.triu(diagonal, 1).T
            matrix[hi:, lo:hi] = matrix[lo:hi, hi:].T
        return
    with torch.inference_mode(total.is_inference()):
        total.copy_(torch.triu(total) + torch.triu(total, 1).T)


@dataclass
class PointMoments:
    """Class-shifted sums for one probe point (see the module docstring): ``w2`` ``(D, D)``, or,
    for a point wider than the samples, its class-shifted ``rows`` ``(N, D)`` and their labels."""

    shift: Tensor  # (C, D) per-class shifts (zero for classes never seen)
    cn: Tensor  # (C,)
    cs1: Tensor  # (C, D)
    cq: Tensor  # (C,)
    w2: Tensor | None  # (D, D); None when the moments were kept without scatter, or as rows
    nonfinite: Tensor  # ()
    rows: Tensor | None = None  # (N, D) x_i - a_{c(i)}, kept instead of w2 for a point wider than N
    row_labels: Tensor | None = None  # (N,)
    _grams: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n(self) -> Tensor:
        return self.cn.sum()

    @property
    def count(self) -> int:
        return int(self.n)

    @property
    def dims(self) -> int:
        return self.shift.shape[1]

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

    def _rows_about(self, centre: Tensor) -> Tensor:
        """The kept rows re-expressed about per-class centres ``centre`` ``(C, D)``, float64."""
        assert self.rows is not None and self.row_labels is not None
        return self.rows.double() + torch.nan_to_num(self.shift - centre)[self.row_labels]

    def centred_rows(self) -> Tensor:
        """``(N, D)`` rows ``x_i - μ`` (float64; only for a point kept as rows)."""
        return self._rows_about(self.mean().expand_as(self.shift))

    def gram(self) -> Tensor:
        """The centred Gram ``X̃X̃ᵀ`` ``(N, N)`` of a point kept as rows: its product in the rows'
        precision (the statistics' product precision), returned in float64; computed once."""
        if "centred" not in self._grams:
            assert self.rows is not None
            rows = self.centred_rows().to(self.rows.dtype)
            self._grams["centred"] = (rows @ rows.T).double()
        return self._grams["centred"]

    def within_scatter(self) -> Tensor:
        """``Σ_c Σ_{i∈c} (x_i - μ_c)(x_i - μ_c)ᵀ``."""
        if self.rows is not None:
            rows = self._rows_about(self.class_means())
            return rows.T @ rows
        if self.w2 is None:
            raise RuntimeError("no D x D scatter for this point: its moments were kept without scatter or released")
        keep = self.present()
        offset = self.cs1[keep]
        return self.w2 - (offset.T / self.cn[keep]) @ offset

    def within_projected(self, p: Tensor) -> Tensor:
        """``P S_W Pᵀ`` for ``P`` ``(k, D)``: the within-class scatter seen through ``k`` directions,
        without a ``D x D`` matrix for a point kept as rows."""
        if self.rows is not None:
            q = self._rows_about(self.class_means()) @ p.T
            return q.T @ q
        return p @ self.within_scatter() @ p.T

    def between_scatter(self) -> Tensor:
        """``Σ_c n_c (μ_c - μ)(μ_c - μ)ᵀ``."""
        keep = self.present()
        dev = self.class_means()[keep] - self.mean()
        return (dev.T * self.cn[keep]) @ dev

    def scatter(self) -> Tensor:
        """``Σ_i (x_i - μ)(x_i - μ)ᵀ`` over all samples: within plus between."""
        if self.rows is not None:
            rows = self.centred_rows()
            return rows.T @ rows
        return self.within_scatter() + self.between_scatter()

    def covariance(self, scatter: Tensor | None = None) -> Tensor:
        """Centred sample covariance, divided by ``n - 1`` (``scatter``: :meth:`scatter`, if at hand)."""
        return (self.scatter() if scatter is None else scatter) / (self.n - 1)

    def second_moment(self, scatter: Tensor | None = None) -> Tensor:
        """Uncentred ``Σ x xᵀ`` (``Hᵀ H`` for the feature matrix ``H``; ``scatter`` as above)."""
        mu = self.mean()
        return (self.scatter() if scatter is None else scatter) + self.n * torch.outer(mu, mu)

    def _padded(self, gram: Tensor) -> Tensor:
        """The ``D`` eigenvalues (descending) of ``XᵀX`` from those of the Gram ``XXᵀ``: the same
        nonzero ones, and zeros for the ``D - N`` directions no sample reaches."""
        vals = eigenvalues(gram)
        return torch.cat([vals, vals.new_zeros(max(0, self.dims - len(vals)))])[: self.dims]

    def covariance_eigenvalues(self, scatter: Tensor | None = None) -> Tensor:
        """Eigenvalues of the centred covariance, descending (from the Gram side for rows;
        ``scatter``: :meth:`scatter`, if at hand)."""
        if self.rows is not None:
            return self._padded(self.gram()) / (self.n - 1)
        return eigenvalues(self.covariance(scatter))

    def second_moment_eigenvalues(self, scatter: Tensor | None = None) -> Tensor:
        """Eigenvalues of the uncentred ``Hᵀ H``, descending (from the Gram side for rows;
        ``scatter`` as above)."""
        if self.rows is not None:  # XXᵀ = (X̃ + 1μᵀ)(X̃ + 1μᵀ)ᵀ = X̃X̃ᵀ + a1ᵀ + 1aᵀ + ‖μ‖² 11ᵀ, a = X̃μ
            mu = self.mean()
            a = self.centred_rows() @ mu
            return self._padded(self.gram() + a[:, None] + a[None, :] + mu @ mu)
        return eigenvalues(self.second_moment(scatter))

    def principal_direction(self, top: float | Tensor, scatter: Tensor | None = None) -> Tensor:
        """The unit eigenvector of the covariance's largest eigenvalue ``top`` (for rows: ``Xᵀu``
        normalised, ``u`` the Gram's top eigenvector; ``scatter`` as above)."""
        if self.rows is not None:
            u = top_eigenvector(self.gram(), float(top) * float(self.n - 1))
            v = self.centred_rows().T @ u
            return v / torch.linalg.vector_norm(v)
        return top_eigenvector(self.covariance(scatter), top)


class Moments(Accumulator):
    """Streaming moments of every probe point (see the module docstring).

    ``matmul_dtype`` is the precision of the per-batch product of centred features
    (float32 by default: the features are centred first, so its rounding is relative to
    their within-class spread, not their mean); with float64 the whole update is float64.
    Running sums are always float64. ``samples`` (the number of samples that will be added,
    when known): a point wider than it keeps its rows instead of a ``D x D`` scatter (see the
    module docstring). ``merge`` and ``all_reduce`` override the base class's plain sums:
    shards are first re-expressed around common shifts. ``skip``: points whose features are
    left out (their moments come from elsewhere, :meth:`adopt_point`).
    """

    def __init__(self, num_classes: int, matmul_dtype: torch.dtype = torch.float32, scatter: bool = True,
                 samples: int | None = None, skip: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matmul_dtype = matmul_dtype
        self.scatter = scatter  # False: class counts, means and norms only, no D x D products
        self.samples = samples
        self.skip = skip
        self.external: dict[str, PointMoments] = {}  # skipped points' moments, adopted whole
        self.names: list[str] = []
        self.dims: list[int] = []
        self.state: dict[str, Tensor] = {}
        self.w2: list[Tensor | None] = []  # None for a point kept as rows
        self.rows: dict[int, list[Tensor]] = {}  # point index -> its class-shifted rows, a chunk per batch
        self.row_labels: list[Tensor] = []  # the labels of those rows, chunked alike
        self._released: set[int] = set()
        self._stale: set[int] = set()  # points whose w2 holds only its upper triangle (see add_gram)
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
        as_rows = [self.scatter and self.samples is not None and d > self.samples for d in self.dims]
        self.w2 = [None if r else z(d, d) for d, r in zip(self.dims, as_rows)] if self.scatter else []
        self.rows = {i: [] for i, r in enumerate(as_rows) if r}

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
        kept = [name for name in features if name not in self.skip]
        full = self.matmul_dtype == f64 or any(features[name].dtype == f64 for name in kept)
        work = f64 if full else torch.float32
        joint, _ = joint_features(features, kept, work)  # the batch's shared joint matrix, or a slice of it
        labels = labels.long()
        if not self.state:
            self._init({name: features[name] for name in kept}, joint.shape[1], joint.device)
        elif kept != self.names:
            raise ValueError(f"moments were started on points {self.names}, not {kept}")
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
        self._check_updatable()
        for i, (w2, (lo, hi)) in enumerate(zip(self.w2, self.bounds)):  # no w2 kept: no products
            if i in self.rows:
                self.rows[i].append(mm[:, lo:hi].clone())
            elif w2 is not None and add_gram(w2, mm[:, lo:hi]):
                self._stale.add(i)
        if self.rows:
            self.row_labels.append(labels.clone())

    def reset(self) -> None:
        """Forget every sample (and the points and shifts)."""
        self.__init__(self.num_classes, self.matmul_dtype, self.scatter, self.samples, self.skip)  # type: ignore[misc]

    def adopt_point(self, name: str, point: PointMoments) -> None:
        """Take the finished moments of a skipped point (read back from a cache): :attr:`points`
        lists it first, and :meth:`release` drops it."""
        if name not in self.skip:
            raise ValueError(f"point {name!r} is not skipped by these moments: its sums are their own")
        self.external[name] = point

    def release(self, name: str) -> None:
        """Free the ``D x D`` scatter of one point once its metrics are computed; its class
        counts, means and norms stay (NCC and CDNV still work)."""
        if self.external.pop(name, None) is not None:
            return
        i = self.names.index(name)
        if self.w2:
            self.w2[i] = None
            self.rows.pop(i, None)
            self._released.add(i)

    def _check_updatable(self) -> None:
        """Refuse updating, merging or reducing once a point's scatter was released."""
        if self._released:
            raise RuntimeError("a point's scatter was released: these moments can no longer be updated, merged "
                               "or reduced")

    def _all_w2(self) -> list[Tensor]:
        """Every ``D x D`` ``w2`` kept, for the operations that update them all."""
        self._check_updatable()
        return [w2 for w2 in self.w2 if w2 is not None]

    def _joined_rows(self, i: int) -> tuple[Tensor, Tensor]:
        """Point ``i``'s rows and their labels, each chunk list joined into one tensor (kept so)."""
        rows = torch.cat(self.rows[i]) if len(self.rows[i]) > 1 else self.rows[i][0]
        self.rows[i] = [rows]
        if len(self.row_labels) > 1:
            self.row_labels = [torch.cat(self.row_labels)]
        return rows, self.row_labels[0]

    @staticmethod
    def planned_bytes(num_classes: int, dims: list[int], scatter: bool = True, samples: int | None = None) -> int:
        """Bytes :class:`Moments` will allocate for points of widths ``dims`` (``samples``: as in
        the constructor; a point kept as rows holds them in float32, and its Gram in float64)."""
        total = sum(dims)
        second = sum(8 * d * d if samples is None or d <= samples else (4 * d + 8 * samples) * samples
                     for d in dims)
        return 8 * (2 * num_classes * total + num_classes * (1 + len(dims)) + len(dims)) + (second if scatter else 0)

    # ------------------------------------------------------------------ shards
    def reshift(self, new: Tensor) -> None:
        """Re-express every sum around per-class shifts ``new`` (exact identities)."""
        st = self.state
        d = st["shift"] - new  # (C, Σ D): x - new_c = (x - old_c) + d_c
        cn, cs1 = st["cn"], st["cs1"]
        self._check_updatable()
        for i, (w2, (lo, hi)) in enumerate(zip(self.w2, self.bounds)):
            s, di = cs1[:, lo:hi], d[:, lo:hi]
            if i in self.rows and self.rows[i]:
                rows, labels = self._joined_rows(i)
                rows += di.to(rows.dtype)[labels]
            elif w2 is not None:  # sᵀd + dᵀs + dᵀ diag(n) d = uᵀd + dᵀu, u = s + (n/2) d: one product of depth 2C
                u = s + (cn / 2)[:, None] * di
                w2.addmm_(torch.cat([u, di]).T, torch.cat([di, u]))
        st["cq"] += 2 * self._segment_sums(cs1 * d) + cn[:, None] * self._segment_sums(d * d)
        st["cs1"] += cn[:, None] * d
        st["shift"] = new.clone()

    def _copy(self) -> Moments:
        self._check_updatable()
        other = Moments(self.num_classes, self.matmul_dtype, self.scatter, self.samples, self.skip)
        other.names, other.dims = list(self.names), list(self.dims)
        other.state = {k: v.clone() for k, v in self.state.items()}
        other.w2 = [None if s is None else s.clone() for s in self.w2]
        other.rows = {i: [r.clone() for r in chunks] for i, chunks in self.rows.items()}
        other.row_labels = [y.clone() for y in self.row_labels]
        other._stale = set(self._stale)
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
        if set(self.rows) != set(other.rows):  # kept differently (other sample counts): meet as D x D scatters
            self._rows_to_scatter()
            other = other._copy()
            other._rows_to_scatter()
        mine_seen = (self.state["cn"] > 0)[:, None]
        target = torch.where(mine_seen, self.state["shift"], other.state["shift"])
        theirs = other._copy()
        self.reshift(target)
        theirs.reshift(target)
        for k in ("cn", "cs1", "cq", "nonfinite"):
            self.state[k] += theirs.state[k]
        for mine, t in zip(self._all_w2(), theirs._all_w2()):
            mine += t
        for i in self.rows:
            self.rows[i] += theirs.rows[i]
        self.row_labels += theirs.row_labels
        self._stale = set(range(len(self.w2)))  # either side may hold upper triangles only; symmetrising is idempotent
        self._unseen &= other._unseen
        return self

    def all_reduce(self, group=None) -> None:
        """Sum over a ``torch.distributed`` group, in place.

        Each class's common shift is the mean of the shifts of the processes that saw it.
        """
        import torch.distributed as dist

        self._rows_to_scatter()  # rows of different lengths per process: summed as D x D scatters instead
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
        self._stale = set(range(len(self.w2)))  # another process may have added upper triangles only
        self._unseen = {c for c in range(self.num_classes) if st["cn"][c] == 0}

    def _rows_to_scatter(self) -> None:
        """Turn every point kept as rows into a ``D x D`` ``w2`` (``Σ rowsᵀ rows``)."""
        for i in list(self.rows):
            w2 = torch.zeros(self.dims[i], self.dims[i], dtype=f64, device=self.state["cn"].device)
            if self.rows[i]:
                rows = self._joined_rows(i)[0].double()
                w2 += rows.T @ rows
            self.w2[i] = w2
        self.rows, self.row_labels = {}, []

    # ------------------------------------------------------------------ results
    @property
    def points(self) -> dict[str, PointMoments]:
        """Per-point views of the state (adopted points first)."""
        st = self.state
        for i in self._stale:
            w2 = self.w2[i]
            if w2 is not None:
                symmetrise(w2)
        self._stale = set()
        out = dict(self.external)
        for i, (name, (lo, hi)) in enumerate(zip(self.names, self.bounds)):
            rows, labels = self._joined_rows(i) if self.rows.get(i) else (None, None)
            out[name] = PointMoments(st["shift"][:, lo:hi], st["cn"], st["cs1"][:, lo:hi], st["cq"][:, i],
                                     self.w2[i] if self.scatter else None, st["nonfinite"][i], rows, labels)
        return out
