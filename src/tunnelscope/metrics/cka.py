"""CKA within and across models (METRICS.md §7; Kornblith et al. 2019, Nguyen et al. 2021).

Minibatch CKA with the unbiased HSIC₁ estimator: for each minibatch of ``n >= 4``
examples and each probe point, the linear Gram ``K = X Xᵀ`` with its diagonal set to zero;

    HSIC₁(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - (2/(n-2)) 1ᵀK̃L̃1] / (n(n-3))

summed over minibatches, and ``CKA(l, m) = ΣHSIC₁(K_l, K_m) / sqrt(ΣHSIC₁(K_l, K_l) ΣHSIC₁(K_m, K_m))``.

HSIC₁ is unchanged when ``k_ij`` becomes ``k_ij + u_i + u_j`` for ``i ≠ j``, so each
minibatch's features are centred at their mean before the Gram is formed: this is exact
and keeps large ReLU means from cancelling in floating point. All sums are float64; the
estimator can be negative and is never clamped.

For all pairs at once: with ``V_l = vec(K̃_l)``, ``r_l = K̃_l 1`` and ``s_l = 1ᵀK̃_l1``,
``tr(K̃_l K̃_m) = V_l·V_m`` and ``1ᵀK̃_lK̃_m1 = r_l·r_m``, two small matrix products.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import TunnelscopeError
from ..features import joint_features
from .base import Accumulator
from .moments import Moments
from .registry import Metric, Options, PointStats, Presentation, present, register

MIN_BATCH = 4


def _hsic(traces: Tensor, r_a: Tensor, r_b: Tensor, s: Tensor, n: int) -> Tensor:
    """HSIC₁ of every pair from ``tr(K̃_a K̃_b)``, the row sums of both sides and the totals."""
    return (traces + torch.outer(s, s) / ((n - 1) * (n - 2)) - (2 / (n - 2)) * (r_a @ r_b.T)) / (n * (n - 3))


class MinibatchCKA(Accumulator):
    """The ``L x L`` matrix of summed HSIC₁ over minibatches, for the given points.

    Points from two models read on the same batches (e.g. keys ``"a/…"`` and ``"b/…"``)
    give the cross-model matrix as an off-diagonal block. Batches smaller than 4 are
    skipped and counted in ``skipped``.
    """

    def __init__(self, names: Sequence[str], gram_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.names = list(names)
        self.gram_dtype = gram_dtype
        self.hsic: Tensor | None = None
        self.batches = 0
        self.skipped = 0
        self.add_state("hsic", None)  # (L, L) summed HSIC₁, allocated at the first batch
        self.add_state("batches", 0)
        self.add_state("skipped", 0)

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        """Add one minibatch (all points read on the same ``n`` examples)."""
        n = len(next(iter(features.values())))
        if n < MIN_BATCH:
            self.skipped += 1
            return
        work = torch.float64 if self.gram_dtype == torch.float64 else torch.float32
        joint, bounds = joint_features(features, self.names, work)
        joint = joint - joint.mean(0)  # any shift is exact for HSIC₁; this one keeps values small
        grams = joint.new_empty(len(self.names), n, n)
        for i, (lo, hi) in enumerate(bounds):
            torch.matmul(joint[:, lo:hi], joint[:, lo:hi].T, out=grams[i])
        diag = grams.diagonal(dim1=1, dim2=2)
        # K̃1 = X(Xᵀ1) - diag(K): X is centred, so the first term is only a rounding residue
        colsum = torch.stack([joint[:, lo:hi].sum(0) @ joint[:, lo:hi].T for lo, hi in bounds])
        r = colsum.to(torch.float64) - diag.to(torch.float64)
        s = r.sum(1)
        diag.zero_()
        # tr(K̃_l K̃_m): each row's n products summed in the Gram's precision, rows summed in float64
        by_row = grams.transpose(0, 1)  # (n, L, n)
        traces = torch.bmm(by_row, by_row.transpose(1, 2)).sum(0, dtype=torch.float64)
        batch = _hsic(traces, r, r, s, n)
        self.hsic = batch if self.hsic is None else self.hsic + batch
        self.batches += 1

    def _check_mergeable(self, other: Accumulator) -> None:
        super()._check_mergeable(other)
        assert isinstance(other, MinibatchCKA)  # the base check: the same class
        if other.names != self.names:
            raise ValueError("cannot merge CKA accumulators over different points")

    def record(self) -> dict:
        """What the results record about this accumulator."""
        return {"cka_batches": self.batches}

    def notes(self) -> list[str]:
        """Warnings for the results."""
        return [f"minibatch CKA skipped {self.skipped} batch(es) smaller than {MIN_BATCH}"] if self.skipped else []

    def compute(self) -> Tensor:
        """The CKA matrix (float64); NaN where a point's self-HSIC is not positive."""
        if self.hsic is None:
            raise TunnelscopeError(f"minibatch CKA needs at least one batch of >= {MIN_BATCH} examples")
        diag = self.hsic.diagonal()
        norm = torch.sqrt(torch.outer(diag, diag))
        return torch.where(norm > 0, self.hsic / norm, torch.full_like(norm, float("nan")))


NULL_PERMUTATIONS = 20
NULL_SEED = 0x636B61  # the permutations' stream
NULL_LEVEL = 0.05  # one-sided level of "above the null"
BLOCK_LEVEL = 0.5  # a block's layers have mutual CKA of at least this (and above the null)


def _hsic_terms(features: dict[str, Tensor], names: list[str], work: torch.dtype
                ) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per point: the minibatch's centred Gram with a zero diagonal ``(L, n, n)``, its row sums
    ``r`` ``(L, n)`` (float64) and totals ``s`` ``(L,)``; and ``n``."""
    joint, bounds = joint_features(features, names, work)
    joint = joint - joint.mean(0)
    n = len(joint)
    grams = joint.new_empty(len(names), n, n)
    for i, (lo, hi) in enumerate(bounds):
        torch.matmul(joint[:, lo:hi], joint[:, lo:hi].T, out=grams[i])
    grams.diagonal(dim1=1, dim2=2).zero_()
    r = grams.sum(2, dtype=torch.float64)
    return grams, r, r.sum(1), n


class CKANull(Accumulator):
    """Minibatch CKA under a permutation null: with the examples of one side of every pair
    shuffled within each minibatch (a fresh seeded permutation per batch and draw), the
    pairing between layers is broken while each layer's own statistics are kept. Over
    ``permutations`` draws the null CKA of each pair has a mean and a spread; the observed CKA's
    one-sided p-value is from the normal approximation (a sum over many minibatches), and a
    cell is *above the null* at ``p < level``. Blocks (Nguyen et al. 2021) are maximal runs of
    consecutive points whose every pair is above the null and at least :data:`BLOCK_LEVEL`.
    The permutations are seeded by the batch's position in this accumulator's stream, so a run
    shared by several processes draws other permutations than one process (the same null, other
    draws): its p-values are not identical across process counts.
    """

    def __init__(self, names: Sequence[str], permutations: int = NULL_PERMUTATIONS,
                 gram_dtype: torch.dtype = torch.float32, level: float = NULL_LEVEL) -> None:
        super().__init__()
        self.names = list(names)
        self.permutations = permutations
        self.gram_dtype = gram_dtype
        self.level = level
        self.hsic: Tensor | None = None  # (L, L) observed
        self.null: Tensor | None = None  # (P, L, L) under permutation
        self.batches = 0
        self.add_state("hsic", None)
        self.add_state("null", None)
        self.add_state("batches", 0)

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        """Add one minibatch: the observed HSIC₁ of every pair and its value under each permutation."""
        n = len(next(iter(features.values())))
        if n < MIN_BATCH:
            return
        work = torch.float64 if self.gram_dtype == torch.float64 else torch.float32
        grams, r, s, n = _hsic_terms(features, self.names, work)
        flat = grams.reshape(len(self.names), n * n)
        observed = _hsic((flat @ flat.T).to(torch.float64), r, r, s, n)
        generator = torch.Generator().manual_seed(NULL_SEED + self.batches)
        null = []
        for _ in range(self.permutations):
            p = torch.randperm(n, generator=generator).to(grams.device)
            # K[p][:, p] of every point as one gather from the flat Grams (4x faster than two fancy indexings)
            shuffled = flat.index_select(1, (p[:, None] * n + p[None, :]).reshape(-1))
            null.append(_hsic((flat @ shuffled.T).to(torch.float64), r, r[:, p], s, n))
        stacked = torch.stack(null)
        self.hsic = observed if self.hsic is None else self.hsic + observed
        self.null = stacked if self.null is None else self.null + stacked
        self.batches += 1

    def _cka(self, hsic: Tensor) -> Tensor:
        assert self.hsic is not None
        diag = self.hsic.diagonal()
        norm = torch.sqrt(torch.outer(diag, diag))
        return torch.where(norm > 0, hsic / norm, torch.full_like(norm, float("nan")))

    def compute(self) -> Tensor:
        """The one-sided p-value of each pair's CKA against its permutation null (``L x L``; NaN on
        the diagonal and where a point's self-HSIC is not positive)."""
        if self.hsic is None or self.null is None:
            raise TunnelscopeError(f"the CKA null needs at least one batch of >= {MIN_BATCH} examples")
        from scipy.stats import norm as normal

        observed, null = self._cka(self.hsic), self._cka(self.null)
        spread = null.std(0).clamp_min(1e-12)
        z = (observed - null.mean(0)) / spread
        p = torch.from_numpy(normal.sf(z.numpy()))
        p.fill_diagonal_(float("nan"))
        return torch.where(torch.isfinite(observed), p, torch.full_like(p, float("nan")))

    def blocks(self) -> list[dict]:
        """Maximal runs of consecutive points (at least two) whose every pair is above the null
        and has CKA of at least :data:`BLOCK_LEVEL`."""
        if self.hsic is None:
            return []
        observed, p = self._cka(self.hsic), self.compute()
        ok = (p < self.level) & (observed >= BLOCK_LEVEL)
        found, i, count = [], 0, len(self.names)
        while i < count:
            j = i
            while j + 1 < count and all(bool(ok[k, j + 1]) for k in range(i, j + 1)):
                j += 1
            if j > i:
                sub = observed[i:j + 1, i:j + 1]
                found.append({"first": self.names[i], "last": self.names[j], "points": j - i + 1,
                              "min_cka": float(sub.min())})
            i = j + 1
        return found

    def record(self) -> dict:
        """What the results record: the blocks and how the null was drawn."""
        p = self.compute().numpy() if self.hsic is not None else np.full((0, 0), np.nan)
        pairs = p[np.triu_indices(len(p), 1)]
        pairs = pairs[np.isfinite(pairs)]
        return {"cka_blocks": self.blocks(), "cka_null": {
            "permutations": self.permutations, "level": self.level, "block_level": BLOCK_LEVEL,
            "share_above": float((pairs < self.level).mean()) if len(pairs) else float("nan"),
            "method": "examples of one side shuffled within each minibatch; one-sided normal p-value over the "
                      "permutations' CKA"}}


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Full-data linear CKA in the feature-space form, ``‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``, float64."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((y.T @ x).square().sum() / (torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y)))


BLOCK_ROWS = 1024  # rows of joint features gathered before FullCKA adds their product to its sums


class FullCKA(Accumulator):
    """Full-data linear CKA for all pairs of points, from streamed joint moments.

    Keeps the covariance of the concatenated features, so its state is ``(Σ D_l)²``:
    only for points whose total width is at most ``max_total_dim``. ``matmul_dtype`` is the
    precision of the products of the centred features (sums are float64), as for every other
    moment; the analyses pass their ``precision`` setting. Batches are gathered into blocks of
    :data:`BLOCK_ROWS` rows before each product: adding a ``(Σ D)²`` product to the float64 sums
    costs as much memory traffic as a 256-row product itself (1.8x faster at Σ D = 3,600 on one
    core, measured); a float32 product then sums 1,024 rows instead of a batch.
    """

    def __init__(self, names: Sequence[str], max_total_dim: int = 4096,
                 matmul_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.names = list(names)
        self.max_total_dim = max_total_dim
        self.matmul_dtype = matmul_dtype
        self.moments = Moments(num_classes=1, matmul_dtype=matmul_dtype)
        self.dims: list[int] = []
        self.pending: list[Tensor] = []  # joint features of the batches not yet in the sums

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        if not self.dims:
            self.dims = [features[n].shape[1] for n in self.names]
            if sum(self.dims) > self.max_total_dim:
                raise TunnelscopeError(
                    f"full-data CKA over {sum(self.dims)} dims exceeds max_total_dim={self.max_total_dim}; "
                    "use minibatch CKA, fewer points, or a smaller reduction (gap, project:D)")
        joint, _ = joint_features(features, self.names, self.matmul_dtype)
        self.pending.append(joint)
        if sum(len(x) for x in self.pending) >= BLOCK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Add the gathered batches to the joint moments, as one block."""
        if not self.pending:
            return
        with torch.inference_mode(self.pending[0].is_inference()):  # as the pass that read them, when called after it
            block = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending = []
            self.moments.update({"joint": block}, torch.zeros(len(block), dtype=torch.long, device=block.device))

    def merge(self, other: Accumulator) -> FullCKA:
        """The joint moments are shifted sums: merged by :meth:`Moments.merge`."""
        self._check_mergeable(other)
        assert isinstance(other, FullCKA)
        self.flush()
        other.flush()
        self.moments.merge(other.moments)
        self.dims = self.dims or other.dims
        return self

    def all_reduce(self, group=None) -> None:
        self.flush()
        self.moments.all_reduce(group)

    def compute(self) -> Tensor:
        """The full-data linear CKA matrix (float64)."""
        self.flush()
        scatter = self.moments.points["joint"].scatter()
        bounds = torch.tensor([0] + self.dims).cumsum(0).tolist()
        blocks = [slice(bounds[i], bounds[i + 1]) for i in range(len(self.dims))]
        norms = torch.stack([torch.linalg.norm(scatter[b, b]) for b in blocks])
        out = torch.empty(len(blocks), len(blocks), dtype=torch.float64)
        for i, bi in enumerate(blocks):
            for j, bj in enumerate(blocks):
                out[i, j] = scatter[bi, bj].square().sum() / (norms[i] * norms[j])
        return out


FULL_CKA_MAX_DIM = 4096


class CKAWithoutPC1(Accumulator):
    """Minibatch CKA after removing each point's first principal component (Nguyen et al.
    2021: inside a block structure, the similarity is carried by the dominant PC, and the
    blocks fade once it is removed).

    Each point's features lose their component along the point's PC1 direction ``v`` (fitted
    on the training split): ``x - (x·v) v``. The component of the mean along ``v`` is a
    constant shift, which HSIC₁ ignores, so removing it from uncentred features is exact.
    """

    def __init__(self, directions: dict[str, Tensor], gram_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.directions = {name: v.double() for name, v in directions.items()}
        self.inner = MinibatchCKA(list(directions), gram_dtype)

    def update(self, features: dict[str, Tensor], labels: Tensor | None = None) -> None:
        projected = {}
        for name, v in self.directions.items():
            x = features[name].double()
            projected[name] = x - torch.outer(x @ v, v)
        self.inner.update(projected)

    def merge(self, other: Accumulator) -> CKAWithoutPC1:
        """The sums live in the inner minibatch-CKA accumulator."""
        self._check_mergeable(other)
        assert isinstance(other, CKAWithoutPC1)
        self.inner.merge(other.inner)
        return self

    def all_reduce(self, group=None) -> None:
        self.inner.all_reduce(group)

    def compute(self) -> dict[tuple[str, str], float]:
        """The CKA of every ordered pair of points (NaN where a point's self-HSIC is not positive)."""
        mat = self.inner.compute()
        names = self.inner.names
        return {(a, b): float(mat[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}


def _without_pc1(train: dict[str, PointStats], options: Options) -> CKAWithoutPC1:
    """PC1 directions of the training split (points with non-finite features get none)."""
    return CKAWithoutPC1({name: stats.pc1 for name, stats in train.items() if int(stats.moments.nonfinite) == 0},
                         gram_dtype=options.matmul_dtype)


def _full_cka_fits(dims) -> str | None:
    total = sum(dims)
    return (f"full-data CKA over {total} dims exceeds {FULL_CKA_MAX_DIM}; use minibatch CKA, fewer points, "
            "or a smaller reduction (gap, project:D)") if total > FULL_CKA_MAX_DIM else None


register(Metric("cka", "minibatch CKA (unbiased HSIC₁) between all points, on the test split",
                stream=lambda names, opts: MinibatchCKA(names, gram_dtype=opts.matmul_dtype), repeatable=True,
                min_batch=MIN_BATCH, options=(("passes", "cka_passes"), ("random", "cka_random")),
                shown=Presentation("cka", "minibatch CKA", shape="matrix", bounds=(0, 1), figure="cka")))
register(Metric("cka_nopc1", "minibatch CKA after removing each point's first principal component, test split",
                default=False, readout=_without_pc1, readout_moments="scatter", pairwise=True,
                readout_splits=("test",), min_batch=MIN_BATCH,
                shown=Presentation("cka_nopc1", "CKA without each layer's PC1", shape="matrix", bounds=(0, 1),
                                   figure="cka")))
register(Metric("cka_null", "p-value of each minibatch CKA against a permutation null (examples of one layer "
                "shuffled within each minibatch), test split; blocks of layers above the null in the config",
                default=False, stream=lambda names, opts: CKANull(names, gram_dtype=opts.matmul_dtype),
                min_batch=MIN_BATCH,
                shown=Presentation("cka_null", "CKA p-value against a permutation null", shape="matrix",
                                   bounds=(0, 1))))
CKA_RANDOM = present(Presentation("cka_random", "CKA p-value against re-initialised networks (cka[random=K])",
                                  shape="matrix", bounds=(0, 1)))
register(Metric("cka_full", "full-data linear CKA (feature-space form), for narrow points only", default=False,
                stream=lambda names, opts: FullCKA(names, FULL_CKA_MAX_DIM, opts.matmul_dtype), fits=_full_cka_fits,
                shown=Presentation("cka_full", "full-data linear CKA", shape="matrix", bounds=(0, 1))))
