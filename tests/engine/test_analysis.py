
import os

import numpy as np
import pytest
import torch
from torch import nn

from references import minibatch_cka, ncc_accuracy, numerical_rank
from tunnelscope import data, models
from tunnelscope.capture import Capture, FeatureCache
from tunnelscope.engine import analyze_layers
from tunnelscope.errors import ConfigError, ProbePointError
from tunnelscope.results import Results


@pytest.fixture(scope="module")
def trained(trained_mlp):
    return trained_mlp[0]  # analysed here on fashion_small: the same classes and input shape


def test_analyze_layers_on_a_checkpoint(trained, fashion_small):
    stats = analyze_layers(trained.final_checkpoint, fashion_small, metrics="all", batch_size=64, progress=False)
    table, config = stats.table, stats.config
    assert isinstance(stats, Results) and len(config["points"]) == 5
    assert set(table.dataset) == {fashion_small.spec} == {stats.id_dataset}  # the ID data named by its spec
    assert {"rank", "erank", "pc1", "nc1", "cdnv", "ncc_acc", "ridge_acc", "cka", "cka_full",
            "pc1_sim"} <= set(table.metric)
    assert set(table.columns) >= {"model", "split", "point", "layer", "depth", "metric", "value", "other_point"}
    assert config["samples"] == {"train": 500, "test": 200} and config["reduce"] == "pool2"
    assert config["versions"]["torch"] and config["layout"]["blocks.0"]["dims"] == 64
    cka = stats.matrix("cka").to_numpy()
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-9)
    np.testing.assert_allclose(cka, cka.T, atol=1e-12)
    assert table[table.metric == "rank"]["depth"].max() == 1.0
    # against the float64 references on the very same features
    model, _ = __import__("tunnelscope").load_model(trained.final_checkpoint)
    cap = Capture(model, "blocks")
    with torch.inference_mode():
        tr = [(cap(x), y) for x, y in fashion_small.train.batches(64)]
        te = [(cap(x), y) for x, y in fashion_small.test.batches(64)]
    for point in cap.names:
        xtr = torch.cat([f[point] for f, _ in tr]).double().numpy()
        ytr = torch.cat([y for _, y in tr]).numpy()
        xte = torch.cat([f[point] for f, _ in te]).double().numpy()
        yte = torch.cat([y for _, y in te]).numpy()
        assert stats.curve("rank", split="test")[point] == numerical_rank(xte)
        assert stats.curve("ncc_acc", split="test")[point] == pytest.approx(ncc_accuracy(xtr, ytr, xte, yte))
        assert stats.curve("ncc_acc", split="train")[point] == pytest.approx(ncc_accuracy(xtr, ytr, xtr, ytr))
    a, b = cap.names[0], cap.names[-1]
    ref = minibatch_cka([f[a].double().numpy() for f, _ in te], [f[b].double().numpy() for f, _ in te])
    assert stats.matrix("cka").loc[a, b] == pytest.approx(ref, rel=1e-6)


def test_effective_depth_and_accuracy_saturate_on_separable_data():
    ds = data.load("digits[per_class=60]")
    torch.manual_seed(0)
    stats = analyze_layers(models.build("mlp-4x64", 10, ds.input_shape), ds, metrics="ncc", ncc_eps=1.0,
                           batch_size=128, progress=False)
    assert stats.summary["effective_depth"] == 1  # eps = 1 accepts any layer


class _Poison(nn.Module):
    """Turns every third row into NaN."""

    def forward(self, h):
        h = h.clone()
        h[::3] = float("nan")
        return h


def test_nonfinite_activations_invalidate_only_that_layer():
    ds = data.load("digits[size=8]")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), _Poison(), nn.Linear(8, 8), nn.Linear(8, 10))
    # every third row is NaN from module 2 on
    with pytest.warns(UserWarning, match="NaN/Inf"):
        stats = analyze_layers(model, ds, metrics="rank,nc1,cka", points=["1", "2"], batch_size=64, progress=False)
    rank = stats.table[(stats.table.metric == "rank") & (stats.table.split == "test")].set_index("point")
    assert rank.loc["1", "valid"] and not rank.loc["2", "valid"] and np.isnan(rank.loc["2", "value"])
    assert np.isfinite(stats.matrix("cka").loc["1", "1"]) and np.isnan(stats.matrix("cka").loc["1", "2"])
    assert any("NaN/Inf" in w for w in stats.config["warnings"])


class _PoisonTrainOnly(nn.Module):
    """NaN in one training row only (the test rows stay finite)."""

    def forward(self, h):
        h = h.clone()  # a new tensor on every call: a point of its own, not the previous layer's output
        if torch.is_inference_mode_enabled() and len(h) == 100:
            h[0] = float("nan")
        return h


def test_readouts_fitted_on_nonfinite_training_features_are_invalid():
    ds = data.load("digits[per_class=40,test_per_class=10]")
    ds.test = ds.test.subset(torch.arange(99))  # test batches never have 100 rows
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), _PoisonTrainOnly(), nn.Linear(8, 10))
    with pytest.warns(UserWarning, match="NaN/Inf"):
        stats = analyze_layers(model, ds, metrics="ncc,ridge", points=["1", "2"], batch_size=100, progress=False)
    rows = stats.table.set_index(["split", "point", "metric"])
    for split in ("train", "test"):
        for metric in ("ncc_acc", "ridge_acc"):
            assert not rows.loc[(split, "2", metric), "valid"] and np.isnan(rows.loc[(split, "2", metric), "value"])
            assert rows.loc[(split, "1", metric), "valid"]


def _pc1_scores(x: np.ndarray, mean: np.ndarray, direction: np.ndarray) -> np.ndarray:
    return (x - mean) @ direction


def test_pc1_similarity_across_points_of_different_widths_equals_numpy_on_pc1_scores():
    """Nguyen et al.'s view: |cos| between the PC1 scores over the examples, finite for points
    of widths 24 and 7; on the training split (where the PCA is fitted) it is the cosine of the
    first left singular vectors, on the test split the test scores on the training PC1."""
    ds = data.load("digits[per_class=60,test_per_class=30]")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 7), nn.Tanh(),
                          nn.Linear(7, 10)).eval()
    stats = analyze_layers(model, ds, metrics="pc1_sim", points=["2", "4"], batch_size=50,
                           include_input=False, progress=False)
    cap = Capture(model, ["2", "4"])
    with torch.inference_mode():
        tr = {n: torch.cat([cap(x)[n] for x, _ in ds.train.batches(64)]).double().numpy() for n in ("2", "4")}
        te = {n: torch.cat([cap(x)[n] for x, _ in ds.test.batches(64)]).double().numpy() for n in ("2", "4")}
    mean = {n: tr[n].mean(0) for n in tr}
    left, direction = {}, {}
    for n in tr:
        u, _, vt = np.linalg.svd(tr[n] - mean[n], full_matrices=False)
        left[n], direction[n] = u[:, 0], vt[0]
    expected_train = abs(left["2"] @ left["4"])
    a, b = (_pc1_scores(te[n], mean[n], direction[n]) for n in ("2", "4"))
    a, b = a - a.mean(), b - b.mean()
    expected_test = abs(a @ b) / np.sqrt((a @ a) * (b @ b))
    assert tr["2"].shape[1] == 24 and tr["4"].shape[1] == 7 and 0.05 < expected_train < 0.99
    for split, expected in (("train", expected_train), ("test", expected_test)):
        sim = stats.matrix("pc1_sim", split=split)
        assert np.isfinite(sim.to_numpy()).all()
        assert sim.loc["2", "4"] == pytest.approx(expected, abs=1e-8) == sim.loc["4", "2"]  # float32 products
        assert sim.loc["2", "2"] == pytest.approx(1.0, abs=1e-12)


def test_extra_cka_passes_shuffle_the_test_split():
    ds = data.load("digits[per_class=20,test_per_class=20]")
    torch.manual_seed(0)
    model = models.build("mlp-4x16", 10, ds.input_shape)
    one = analyze_layers(model, ds, metrics="cka", batch_size=32, progress=False)
    three = analyze_layers(model, ds, metrics="cka", batch_size=32, cka_passes=3, progress=False)
    assert three.config["cka_passes"] == 3 and three.config["cka_batches"] == 3 * one.config["cka_batches"]
    np.testing.assert_allclose(np.diag(three.matrix("cka")), 1.0, atol=1e-9)
    assert not np.allclose(three.matrix("cka").to_numpy(), one.matrix("cka").to_numpy(), atol=1e-9)


def test_absent_class_is_recorded():
    ds = data.load("digits[classes=0-2]")
    ds.test = ds.test.subset(torch.nonzero(ds.test.labels != 2).flatten())
    with pytest.warns(UserWarning, match="absent"):
        stats = analyze_layers(models.build("mlp-3x16", 3, ds.input_shape), ds, metrics="nc1,cdnv", progress=False)
    assert np.isfinite(stats.curve("nc1", split="test")).all()


def test_bad_arguments():
    ds = data.load("digits[per_class=10]")
    model = models.build("mlp-3x16", 10, ds.input_shape)
    with pytest.raises(ConfigError, match="unknown metric"):
        analyze_layers(model, ds, metrics="rank,bogus", progress=False)
    with pytest.raises(ConfigError, match="smallest minibatch"):
        analyze_layers(model, ds, metrics="cka", batch_size=3, progress=False)
    with pytest.raises(ProbePointError):
        analyze_layers(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ds, points="blocks", progress=False)


def test_feature_cache_spills_to_disk_beyond_its_budget(tmp_path):
    feats = {"a": torch.randn(10, 3), "b": torch.randn(10, 5)}
    labels = torch.arange(10)
    with FeatureCache(20, budget_bytes=100, spill_dir=tmp_path) as cache:
        cache.update(feats, labels)
        cache.update({k: v + 1 for k, v in feats.items()}, labels)
        assert cache.spilled_to is not None and any(cache.spilled_to.iterdir())
        got = list(cache.batches(batch_size=15))
        assert [len(y) for _, y in got] == [15, 5]
        allb = torch.cat([f["b"] for f, _ in got])
        torch.testing.assert_close(allb, torch.cat([feats["b"], feats["b"] + 1]))
        spilled = cache.spilled_to
    assert not spilled.exists()


def _distributed_worker(rank: int, world: int, path: str, x, y, out):
    import torch.distributed as dist

    from tunnelscope.metrics.cka import MinibatchCKA
    from tunnelscope.metrics.moments import Moments

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    shard = slice(rank * 128, (rank + 1) * 128)
    m, c = Moments(3), MinibatchCKA(["a", "b"])
    for lo in range(shard.start, shard.stop, 64):
        batch = {"a": x[lo:lo + 64], "b": x[lo:lo + 64] ** 2}
        m.update(batch, y[lo:lo + 64])
        c.update(batch)
    m.all_reduce()
    c.all_reduce()
    if rank == 0:
        p = m.points["a"]
        out.put((p.covariance().numpy(), p.class_variances().numpy(), c.compute().numpy()))
    dist.destroy_process_group()


def test_all_reduce_across_processes_equals_one_pass(tmp_path):
    import torch.multiprocessing as mp

    from tunnelscope.metrics.cka import MinibatchCKA
    from tunnelscope.metrics.moments import Moments

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g) + 10
    y = torch.randint(0, 3, (256,), generator=g)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, 2, str(tmp_path / "store"), x, y, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    cov, var, cka = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    whole, c = Moments(3), MinibatchCKA(["a", "b"])
    for lo in range(0, 256, 64):
        batch = {"a": x[lo:lo + 64], "b": x[lo:lo + 64] ** 2}
        whole.update(batch, y[lo:lo + 64])
        c.update(batch)
    np.testing.assert_allclose(cov, whole.points["a"].covariance().numpy(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(var, whole.points["a"].class_variances().numpy(), rtol=1e-6)
    np.testing.assert_allclose(cka, c.compute().numpy(), rtol=1e-12)


def test_cross_model_cka(trained, fashion_small):
    from tunnelscope.engine import cross_model_cka

    within = analyze_layers(trained.final_checkpoint, fashion_small, metrics="cka", batch_size=64,
                            precision="float64", progress=False, include_input=False).matrix("cka")
    same = cross_model_cka(trained.final_checkpoint, trained.final_checkpoint, fashion_small, batch_size=64,
                           precision="float64", progress=False)
    np.testing.assert_allclose(same.to_numpy(), within.to_numpy(), rtol=1e-9, atol=1e-12)
    torch.manual_seed(1)
    other = models.build("mlp-3x32", 5, fashion_small.input_shape)
    cross = cross_model_cka(trained.final_checkpoint, other, fashion_small, batch_size=64, progress=False)
    assert cross.shape == (5, 2) and list(cross.columns) == ["blocks.0", "blocks.1"]
    assert np.isfinite(cross.to_numpy()).all() and cross.attrs["samples"] == 200


def test_cka_without_pc1_and_consecutive_l1_equal_numpy():
    """cka_nopc1: minibatch CKA of the test batches with each point's training PC1 removed
    (numpy eigh, numpy HSIC₁); l1_step: mean |h_l − h_{l−1}| per coordinate, NaN across widths."""
    ds = data.load("digits[per_class=60,test_per_class=30]")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 10)).eval()
    points = ["2", "4", "5"]
    stats = analyze_layers(model, ds, metrics="cka_nopc1,l1_step", points=points, batch_size=50,
                           include_input=False, precision="float64", progress=False)
    cap = Capture(model, points)
    with torch.inference_mode():
        tr = {n: torch.cat([cap(x)[n] for x, _ in ds.train.batches(64)]).double().numpy() for n in points}
        te_batches = [{n: v.double().numpy() for n, v in cap(x).items()} for x, _ in ds.test.batches(50)]
    removed = []
    for batch in te_batches:
        out = {}
        for n in points:
            v = np.linalg.eigh(np.cov(tr[n], rowvar=False))[1][:, -1]
            out[n] = batch[n] - np.outer(batch[n] @ v, v)
        removed.append(out)
    sim = stats.matrix("cka_nopc1")
    assert stats.config["passes"][:2] == ["train", "test"]
    for a, b in (("2", "4"), ("2", "5"), ("4", "5")):
        ref = minibatch_cka([r[a] for r in removed], [r[b] for r in removed])
        assert sim.loc[a, b] == pytest.approx(ref, abs=1e-9)
    te = {n: np.concatenate([b[n] for b in te_batches]) for n in points}
    step = stats.curve("l1_step")
    assert step["4"] == pytest.approx(np.abs(te["4"] - te["2"]).mean(), rel=1e-10)
    assert np.isnan(step["2"]) and np.isnan(step["5"])  # the first point; 16 -> 10 wide


def test_a_full_disk_is_a_clear_error_when_the_cache_spills(tmp_path, monkeypatch):
    import errno
    import os

    from tunnelscope.errors import CacheSpaceError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    cache = FeatureCache(1000, budget_bytes=100, spill_dir=tmp_path)
    with pytest.raises(CacheSpaceError, match="needs 0 MiB on disk in .* but no space left on device; free space"):
        cache.update({"a": torch.randn(10, 3)}, torch.arange(10))
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


def test_spills_of_killed_processes_are_removed_by_the_next_spill(tmp_path):
    import subprocess
    import sys

    from tunnelscope.capture.cache import SPILL_PREFIX

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{SPILL_PREFIX}{dead.stdout.strip()}-abc"
    stale.mkdir()
    (stale / "0.npy").write_bytes(b"x" * 1000)
    mine = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-live"
    mine.mkdir()
    with FeatureCache(20, budget_bytes=10, spill_dir=tmp_path) as cache:
        cache.update({"a": torch.randn(10, 3)}, torch.arange(10))
        assert not stale.exists() and mine.exists()  # a live process's spill stays
