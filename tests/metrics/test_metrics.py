"""Known-answer tests of the accumulators and metrics against float64 numpy references."""

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from references import cdnv as ref_cdnv
from references import cov_eigvals, numerical_rank
from references import erank as ref_erank
from references import linear_cka as ref_linear_cka
from references import minibatch_cka as ref_mb_cka
from references import nc1 as ref_nc1
from references import ncc_accuracy as ref_ncc
from tunnelscope.metrics.cka import FullCKA, MinibatchCKA, linear_cka
from tunnelscope.metrics.collapse import NCCAccuracy, cdnv, effective_depth, nc1
from tunnelscope.metrics.moments import Moments
from tunnelscope.metrics.ridge import RidgeAccuracy, ridge_weights
from tunnelscope.metrics.spectrum import effective_rank, eigen, pc1_ratio
from tunnelscope.metrics.spectrum import numerical_rank as ts_rank

RNG = np.random.default_rng(0)


def stream(acc, x, y=None, batch=100):
    x = torch.as_tensor(x)
    y = torch.zeros(len(x), dtype=torch.long) if y is None else torch.as_tensor(y)
    for lo in range(0, len(x), batch):
        acc.update({"a": x[lo:lo + batch]}, y[lo:lo + batch])
    return acc


def clusters(n_per=150, classes=4, d=12, spread=0.5, offset=0.0, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, d))
    x = np.concatenate([centres[c] + spread * rng.normal(size=(n_per, d)) for c in range(classes)]) + offset
    y = np.repeat(np.arange(classes), n_per)
    perm = rng.permutation(len(y))
    return x[perm].astype(dtype), y[perm]


def test_numerical_rank_of_low_rank_plus_noise():
    for k in (1, 5, 17):
        x = RNG.normal(size=(2000, k)) @ RNG.normal(size=(k, 40)) + 1e-5 * RNG.normal(size=(2000, 40))
        m = stream(Moments(1, torch.float64), x).points["a"]
        vals, _ = eigen(m.covariance())
        assert ts_rank(vals) == k == numerical_rank(x)
        np.testing.assert_allclose(vals.numpy(), cov_eigvals(x), rtol=1e-9, atol=1e-12)


def test_pc1_of_spiked_covariance():
    d, spike = 30, 50.0
    u = RNG.normal(size=d)
    u /= np.linalg.norm(u)
    x = RNG.normal(size=(5000, d)) + np.sqrt(spike) * RNG.normal(size=(5000, 1)) * u
    m = stream(Moments(1), x.astype(np.float32)).points["a"]
    vals, vecs = eigen(m.covariance())
    ref = cov_eigvals(x.astype(np.float32))
    assert pc1_ratio(vals) == pytest.approx(ref[0] / ref.sum(), rel=1e-6)
    assert pc1_ratio(vals) == pytest.approx((1 + spike) / (d + spike), rel=0.05)
    assert float(vecs[:, 0] @ torch.as_tensor(u)) ** 2 > 0.99


def test_effective_rank_matches_svd_of_uncentred_features():
    x = RNG.normal(size=(800, 20)) @ np.diag(np.linspace(0.1, 3, 20)) + 2.0
    m = stream(Moments(1, torch.float64), x).points["a"]
    assert effective_rank(torch.linalg.eigvalsh(m.second_moment())) == pytest.approx(ref_erank(x), rel=1e-8)


@pytest.mark.parametrize("spread", [0.3, 2.0])
def test_nc1_and_cdnv_of_gaussian_clusters(spread):
    x, y = clusters(spread=spread)
    m = stream(Moments(4, torch.float64), x, y).points["a"]
    assert nc1(m) == pytest.approx(ref_nc1(x, y), rel=1e-8)
    assert cdnv(m) == pytest.approx(ref_cdnv(x, y), rel=1e-8)


def test_ncc_accuracy_against_brute_force():
    x, y = clusters(spread=3.0, seed=2)
    xt, yt = clusters(spread=3.0, seed=3)
    means = {"a": stream(Moments(4, torch.float64), x, y).points["a"].class_means()}
    acc = stream(NCCAccuracy(means), xt, yt).compute()["a"]
    assert 0.3 < acc < 1.0 and acc == pytest.approx(ref_ncc(x, y, xt, yt), abs=1e-12)


def test_ridge_probe_against_numpy_closed_form():
    x, y = clusters(spread=2.5, seed=4)
    m = stream(Moments(4, torch.float64), x, y).points["a"]
    w, mu, prior = ridge_weights(m, ridge=1e-2)
    xc = x - x.mean(0)
    onehot = np.eye(4)[y]
    cov = xc.T @ xc / len(x)
    lam = 1e-2 * np.trace(cov) / x.shape[1]
    ref_w = np.linalg.solve(cov + lam * np.eye(x.shape[1]), xc.T @ (onehot - onehot.mean(0)) / len(x))
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-8, atol=1e-12)
    acc = stream(RidgeAccuracy({"a": (w, mu, prior)}), x, y).compute()["a"]
    ref_acc = np.mean(((x - x.mean(0)) @ ref_w + onehot.mean(0)).argmax(1) == y)
    assert acc == pytest.approx(ref_acc)


def test_effective_depth():
    assert effective_depth([0.5, 0.02, 0.009, 0.0]) == 3
    assert effective_depth([0.5, 0.2], eps=0.3) == 2
    assert effective_depth([0.5, float("nan"), 0.4]) is None


# ----------------------------------------------------------------------------- CKA
def _batches(x, n):
    return [x[lo:lo + n] for lo in range(0, len(x), n)]


def _mb_cka(x, y, n=64, dtype=torch.float32):
    acc = MinibatchCKA(["x", "y"], gram_dtype=dtype)
    for bx, by in zip(_batches(torch.as_tensor(x), n), _batches(torch.as_tensor(y), n)):
        acc.update({"x": bx, "y": by})
    return acc


def test_minibatch_cka_matches_the_formula():
    x = RNG.normal(size=(500, 30))
    y = np.tanh(x @ RNG.normal(size=(30, 20))) + 0.3 * RNG.normal(size=(500, 20))
    acc = _mb_cka(x, y, n=64, dtype=torch.float64)
    ref = ref_mb_cka(_batches(x, 64), _batches(y, 64))
    assert acc.compute()[0, 1].item() == pytest.approx(ref, rel=1e-10)
    hsic_ref = __import__("references").hsic1
    k = x[:64] @ x[:64].T
    one = MinibatchCKA(["x"], gram_dtype=torch.float64)
    one.update({"x": torch.as_tensor(x[:64])})
    assert one.hsic[0, 0].item() == pytest.approx(hsic_ref(k, k), rel=1e-10)


def test_hsic1_is_unchanged_by_shifting_features():
    """The identity behind centring each minibatch before its Gram is formed."""
    hsic_ref = __import__("references").hsic1
    x = RNG.normal(size=(40, 6))
    y = RNG.normal(size=(40, 4))
    shifted = x + RNG.normal(size=6) * 3
    assert hsic_ref(shifted @ shifted.T, y @ y.T) == pytest.approx(hsic_ref(x @ x.T, y @ y.T), rel=1e-9)
    assert hsic_ref((x - x.mean(0)) @ (x - x.mean(0)).T, y @ y.T) == pytest.approx(hsic_ref(x @ x.T, y @ y.T), rel=1e-9)


def test_unbiased_cka_can_be_negative_and_is_not_clamped():
    rng = np.random.default_rng(11)
    values = [_mb_cka(rng.normal(size=(8, 3)), rng.normal(size=(8, 3)), n=8, dtype=torch.float64).compute()[0, 1].item()
              for _ in range(40)]
    assert min(values) < 0


@pytest.mark.parametrize("kind", ["minibatch", "full"])
def test_cka_invariances(kind):
    x = RNG.normal(size=(600, 16)) @ RNG.normal(size=(16, 16))
    y = np.maximum(x @ RNG.normal(size=(16, 24)), 0)

    def cka(a, b):
        if kind == "minibatch":
            return _mb_cka(a, b, n=100, dtype=torch.float64).compute()[0, 1].item()
        full = FullCKA(["x", "y"])
        full.update({"x": torch.as_tensor(a), "y": torch.as_tensor(b)})
        return full.compute()[0, 1].item()

    base = cka(x, y)
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(16, random_state=3)
    assert cka(x @ q, y) == pytest.approx(base, rel=1e-9)
    assert cka(x, 7.5 * y) == pytest.approx(base, rel=1e-9)
    general = RNG.normal(size=(16, 16)) @ np.diag(np.logspace(-2, 1, 16))
    assert abs(cka(x @ general, y) - base) > 1e-3
    if kind == "full":
        assert base == pytest.approx(ref_linear_cka(x, y), rel=1e-10)
        assert linear_cka(torch.as_tensor(x), torch.as_tensor(y)) == pytest.approx(ref_linear_cka(x, y), rel=1e-10)


def test_full_cka_gathers_batches_into_blocks_and_matches_float64():
    """Batches are gathered into blocks of BLOCK_ROWS rows before each float32 product; the
    rows left over are added when the value is read or the shards merged."""
    from tunnelscope.metrics.cka import BLOCK_ROWS

    x = RNG.normal(size=(2 * BLOCK_ROWS + 300, 12)) @ RNG.normal(size=(12, 12)) + 4.0
    y = np.maximum(x @ RNG.normal(size=(12, 20)), 0)
    want = ref_linear_cka(x, y)

    def streamed(rows: slice) -> FullCKA:
        full = FullCKA(["x", "y"], matmul_dtype=torch.float32)
        for lo in range(rows.start, rows.stop, 100):
            hi = min(lo + 100, rows.stop)
            full.update({"x": torch.as_tensor(x[lo:hi], dtype=torch.float32),
                         "y": torch.as_tensor(y[lo:hi], dtype=torch.float32)})
        return full

    whole = streamed(slice(0, len(x)))
    left = sum(len(block) for block in whole.pending)  # rows past the last block, not yet in the sums
    assert 0 < left < BLOCK_ROWS and whole.moments.points["joint"].count == len(x) - left
    assert whole.compute()[0, 1].item() == pytest.approx(want, rel=1e-6) and not whole.pending
    merged = streamed(slice(0, 750)).merge(streamed(slice(750, len(x))))  # both shards hold pending rows
    assert merged.compute()[0, 1].item() == pytest.approx(want, rel=1e-6)
    assert merged.moments.points["joint"].count == len(x)


# ----------------------------------------------------------------------------- merging and precision
def test_merging_shards_equals_one_pass():
    x, y = clusters(n_per=100, d=9, offset=5.0, seed=5)
    for dtype, cut, tol in ((torch.float64, 256, 1e-11), (torch.float32, 250, 1e-6)):
        # float64 products and shards cut on a batch boundary: equal up to float64 rounding;
        # float32 products on other batches: equal up to the products' own rounding
        whole = stream(Moments(4, dtype), x.astype(np.float32), y, batch=64)
        a = stream(Moments(4, dtype), x[:cut].astype(np.float32), y[:cut], batch=64)
        b = stream(Moments(4, dtype), x[cut:].astype(np.float32), y[cut:], batch=64)
        merged = a.merge(b).points["a"]
        ref = whole.points["a"]
        for name in ("mean", "scatter", "class_means", "class_variances", "within_scatter"):
            got, want = getattr(merged, name)().numpy(), getattr(ref, name)().numpy()
            assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want), name
        assert nc1(merged) == pytest.approx(nc1(ref), rel=tol)
    # CKA: merging per-shard HSIC sums is exactly the one-pass sum
    c1, c2 = _mb_cka(x[:256], x[:256] ** 2, n=64), _mb_cka(x[256:], x[256:] ** 2, n=64)
    cw = _mb_cka(x, x ** 2, n=64)
    np.testing.assert_allclose(c1.merge(c2).compute().numpy(), cw.compute().numpy(), rtol=1e-12)
    means = {"a": ref.class_means()}
    n1, n2 = stream(NCCAccuracy(means), x[:250], y[:250]), stream(NCCAccuracy(means), x[250:], y[250:])
    assert n1.merge(n2).compute() == stream(NCCAccuracy(means), x, y).compute()


def test_float32_relu_features_with_large_means_match_float64():
    """ReLU-like features offset by 20, streamed as float32 with the default float32 products."""
    x64, y = clusters(n_per=2500, classes=5, d=64, spread=1.0, seed=6)
    x64 = np.maximum(x64, 0) + 20.0
    x32 = x64.astype(np.float32)
    ref_x = x32.astype(np.float64)  # the reference sees exactly the float32 values
    m = stream(Moments(5), x32, y, batch=256).points["a"]

    def rel(a, b):
        return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)

    assert rel(m.covariance().numpy(), np.cov(ref_x, rowvar=False)) < 1e-6
    assert rel(m.mean().numpy(), ref_x.mean(0)) < 1e-6
    assert nc1(m) == pytest.approx(ref_nc1(ref_x, y), rel=1e-6)
    assert cdnv(m) == pytest.approx(ref_cdnv(ref_x, y), rel=1e-6)
    vals, _ = eigen(m.covariance())
    assert rel(vals.numpy(), cov_eigvals(ref_x)) < 1e-6
    y2 = np.maximum(ref_x @ RNG.normal(size=(64, 32)) / 8, 0) + 20
    got = _mb_cka(x32, y2.astype(np.float32), n=256, dtype=torch.float32).compute()[0, 1].item()
    want = ref_mb_cka(_batches(ref_x, 256), _batches(y2.astype(np.float32).astype(np.float64), 256))
    assert got == pytest.approx(want, rel=1e-6)


def test_absent_class_and_nonfinite_rows_are_tracked():
    x, y = clusters(n_per=50, classes=3, d=5, seed=7)
    x = x.copy()
    m = stream(Moments(4, torch.float64), x, y).points["a"]
    assert m.present().tolist() == [True, True, True, False]
    assert nc1(m) == pytest.approx(ref_nc1(x, y), rel=1e-8)  # over the classes present
    x[3, 2] = np.nan
    x[7, 0] = np.inf
    assert int(stream(Moments(4), x, y).points["a"].nonfinite) == 2


def test_nc1_ignores_the_rounding_null_direction_of_offset_class_means():
    """Σ n_c(μ_c - μ) = 0 leaves M one direction that rounding makes ~eps·|μ|, not 0."""
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(5), 40)
    x = (100 + rng.normal(size=(5, 10))[y] + 0.3 * rng.normal(size=(len(y), 10))).astype(np.float32)
    m = stream(Moments(5, torch.float64), x, y).points["a"]
    assert nc1(m) == pytest.approx(ref_nc1(x.astype(np.float64), y), rel=1e-8)


def test_effective_rank_with_fewer_samples_than_dimensions():
    x = RNG.normal(size=(120, 500))
    m = stream(Moments(1, torch.float64), x).points["a"]
    assert effective_rank(torch.linalg.eigvalsh(m.second_moment()), m.count) == pytest.approx(ref_erank(x), rel=1e-8)


def test_large_finite_values_are_not_flagged_nonfinite():
    x = np.ones((8, 3), dtype=np.float32) * 3e19
    x[::2] *= -1
    assert int(stream(Moments(1), x).points["a"].nonfinite) == 0


def test_within_and_between_class_traces_match_numpy():
    from tunnelscope.metrics.collapse import trace_b, trace_w
    from tunnelscope.metrics.registry import PointStats

    x, y = clusters(classes=5, d=9, offset=50.0, dtype=np.float32)
    stats = PointStats(stream(Moments(5, scatter=False), x, y).points["a"])
    x64 = x.astype(np.float64)
    means = np.stack([x64[y == c].mean(0) for c in range(5)])
    within = np.mean([np.sum((x64[i] - means[y[i]]) ** 2) for i in range(len(y))])
    between = np.mean(np.sum((means - x64.mean(0)) ** 2, axis=1))
    assert trace_w(stats) == pytest.approx(within, rel=1e-9)
    assert trace_b(stats) == pytest.approx(between, rel=1e-9)


def test_ridge_probe_on_constant_features_predicts_the_majority_class():
    """A dead layer (every feature constant, tr Σ = 0) must not make the solve singular."""
    y = np.array([0] * 30 + [1] * 50 + [2] * 20)
    x = np.full((len(y), 6), 0.0)
    m = stream(Moments(3, torch.float64), x, y).points["a"]
    w, _, _ = ridge_weights(m)
    assert torch.count_nonzero(w) == 0
    acc = stream(RidgeAccuracy({"a": ridge_weights(m)}), x, y).compute()["a"]
    assert acc == pytest.approx(0.5)  # the majority class, 50 of 100


def test_a_metric_record_is_tagged_by_where_its_value_comes_from():
    from tunnelscope.metrics import REGISTRY, Metric

    assert {m.kind for m in REGISTRY.values()} == {"point", "stream", "readout"}
    assert REGISTRY["rank"].kind == "point" and REGISTRY["cka"].kind == "stream" and REGISTRY["ncc"].kind == "readout"
    with pytest.raises(ValueError, match="exactly one of value, stream or readout"):
        Metric("two", "both", value=lambda s: 0.0, stream=lambda n, o: None, moments="means")
    with pytest.raises(ValueError, match="which moments"):
        Metric("bare", "no moments", value=lambda s: 0.0)
    with pytest.raises(TypeError, match="'cka' is a stream metric, not a point one"):
        REGISTRY["cka"].point_value(None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_triangular_gram_update_equals_a_full_product_once_symmetrised(dtype):
    from tunnelscope.metrics.moments import add_gram, symmetrise

    x = torch.as_tensor(RNG.normal(size=(300, 70))).to(dtype)
    total = torch.zeros(70, 70, dtype=torch.float64)
    for lo in range(0, 300, 64):  # a strided column slice, as the update passes it
        wide = torch.cat([x[lo:lo + 64], x[lo:lo + 64]], 1)
        assert add_gram(total, wide[:, 70:])
    assert not torch.equal(total, total.T)  # only the upper triangle was added
    symmetrise(total)
    ref = x.double().numpy().T @ x.double().numpy()
    np.testing.assert_allclose(total.numpy(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-3)


def test_merged_and_reshifted_triangular_moments_give_the_numpy_scatter():
    x, y = clusters(spread=1.0, offset=40.0, seed=7)
    half = len(x) // 2
    a = stream(Moments(4, torch.float32), x[:half].astype(np.float32), y[:half])
    b = stream(Moments(4, torch.float32), x[half:].astype(np.float32), y[half:])
    m = a.merge(b).points["a"]
    xc = x.astype(np.float32).astype(np.float64)
    ref = (xc - xc.mean(0)).T @ (xc - xc.mean(0))
    got = m.scatter().numpy()
    np.testing.assert_allclose(got, got.T, rtol=1e-13, atol=1e-12 * np.abs(got).max())
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("d", [5, 512, 700, 1100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetrise_copies_the_upper_triangle_exactly(d, dtype):
    """Both paths (the two-triu form up to two blocks, numpy block columns beyond), in and out of
    inference mode, against numpy's triangles; the diagonal and upper triangle are left alone."""
    from tunnelscope.metrics.moments import symmetrise

    source = np.random.default_rng(d).standard_normal((d, d))
    expected = np.triu(source) + np.triu(source, 1).T
    for inference in (False, True):
        with torch.inference_mode(inference):
            total = torch.from_numpy(source.copy()).to(dtype)
        symmetrise(total)
        np.testing.assert_array_equal(total.numpy(), expected.astype(total.numpy().dtype))


def test_derived_quantities_handed_to_another_process_are_used_not_recomputed():
    """What one process derives from a point's moments (eigenvalues, PC1, ridge weights) is taken
    over by the same point's stats elsewhere: the values are the owner's, and nothing is
    recomputed (a poisoned ridge function would show)."""
    from tunnelscope.metrics.registry import REGISTRY, Options, PointStats

    x, y = clusters(classes=4, d=9)
    owner = PointStats(stream(Moments(4, torch.float64), x, y).points["a"])
    other = PointStats(stream(Moments(4, torch.float64), x, y).points["a"])
    REGISTRY["ridge"].new_readout({"a": owner}, Options())
    _ = owner.pc1, owner.second_moment_eigenvalues
    other.adopt(owner.computed())
    key = ("ridge", Options().ridge)
    assert other.once(key, lambda: pytest.fail("ridge weights recomputed")) is owner.memo[key]
    np.testing.assert_allclose(np.sort(other.covariance_eigenvalues.numpy()), np.sort(cov_eigvals(x)), rtol=1e-9,
                               atol=1e-12)
    assert other.pc1 is owner.pc1 and other.second_moment_eigenvalues is owner.second_moment_eigenvalues
