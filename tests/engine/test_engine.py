"""The statistics engine's plan: only what was asked is computed, memory is checked first,
metrics that do not fit are skipped with a note, and PC1 comes from a cheaper solver."""

import numpy as np
import pytest
import torch

from tunnelscope import models
from tunnelscope.data import load
from tunnelscope.engine.statistics import analyze_layers
from tunnelscope.errors import ConfigError, MemoryBudgetError
from tunnelscope.metrics import REGISTRY
from tunnelscope.metrics.linalg import eigenvalues, top_eigenvector


@pytest.fixture(scope="module")
def digits():
    return load("digits[classes=0-4]")


def run(model, ds, metrics, **kw):
    return analyze_layers(model, ds, metrics=metrics, batch_size=64, progress=False, **kw)


def test_cka_alone_reads_the_test_split_once_and_keeps_no_moments(digits):
    model = models.build("mlp-3x32", 5, digits.input_shape)
    stats = run(model, digits, "cka")
    assert stats.config["passes"] == ["test"]
    assert stats.config["moments"] == {"train": None, "test": None}
    assert set(stats.table.metric) == {"cka"} and stats.config["samples"]["train"] == 0


@pytest.mark.parametrize("metrics, train, test", [
    ("cdnv", "means", "means"), ("trace_w,trace_b", "means", "means"), ("rank,pc1", "scatter", "scatter"),
    ("ncc", "means", None), ("ridge", "scatter", None), ("cdnv,ridge", "scatter", "means"),
])
def test_moments_are_kept_at_the_level_the_metrics_need(digits, metrics, train, test):
    model = models.build("mlp-3x32", 5, digits.input_shape)
    stats = run(model, digits, metrics)
    assert stats.config["moments"] == {"train": train, "test": test}
    assert stats.config["passes"] == ["train", "test"]


def test_a_registered_metric_needs_no_engine_change(digits):
    """trace_w/trace_b are registered in metrics/collapse.py only; the engine plans and tabulates them."""
    model = models.build("mlp-3x32", 5, digits.input_shape)
    stats = run(model, digits, "trace_w,trace_b")
    assert {"trace_w", "trace_b"} == set(stats.table.metric)
    assert np.isfinite(stats.curve("trace_w", split="train")).all() and (stats.curve("trace_b") > 0).all()


def test_plans_that_do_not_fit_the_memory_budget_are_refused_before_any_pass(digits):
    model = models.build("mlp-3x512", 5, digits.input_shape)
    with pytest.raises(MemoryBudgetError, match=r"need about .* GiB .* budget is") as err:
        run(model, digits, "rank", memory_budget=1_000_000)
    assert "\n" not in str(err.value)
    run(model, digits, "cka", memory_budget=1_000_000)  # CKA alone keeps no D x D state


def test_full_cka_over_wide_points_is_skipped_under_all_and_refused_when_named(digits):
    model = models.build("mlp-3x2048", 5, digits.input_shape)
    with pytest.warns(UserWarning):
        stats = run(model, digits, "all", max_samples=200)
    assert "cka_full" in stats.config["skipped_metrics"] and "cka_full" not in set(stats.table.metric)
    assert "exceeds 4096" in stats.config["skipped_metrics"]["cka_full"]
    with pytest.raises(ConfigError, match="exceeds 4096"):
        run(model, digits, "cka_full", max_samples=200)


def test_all_runs_every_registered_metric(digits):
    model = models.build("mlp-3x32", 5, digits.input_shape)
    stats = run(model, digits, "all")
    rows = {REGISTRY[m].table_name for m in REGISTRY}
    assert set(stats.table.metric) == rows and stats.config["skipped_metrics"] == {}


@pytest.mark.parametrize("gap", [1.0, 1e-3])
def test_top_eigenvector_matches_a_full_numpy_decomposition(gap):
    rng = np.random.default_rng(3)
    d = 300
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    spectrum = np.concatenate([[10.0, 10.0 - gap * 10.0], rng.uniform(0, 5, d - 2)])
    m = (q * spectrum) @ q.T
    vals = eigenvalues(torch.as_tensor(m))
    np.testing.assert_allclose(vals.numpy(), np.sort(np.linalg.eigvalsh(m))[::-1], rtol=1e-10, atol=1e-10)
    v = top_eigenvector(torch.as_tensor(m), vals[0]).numpy()
    ref = np.linalg.eigh(m)[1][:, -1]
    assert float(v @ ref) ** 2 == pytest.approx(1.0, abs=1e-9)


def test_metrics_are_listed_in_their_documented_order():
    from tunnelscope.engine.analyze import parse_metrics

    assert list(REGISTRY) == ["rank", "erank", "pc1", "pc1_sim", "nc1", "cdnv", "trace_w", "trace_b", "ncc", "cka",
                              "cka_nopc1", "cka_null", "cka_full", "ridge", "l1_step", "inactive", "dead_units"]
    assert parse_metrics("default") == ["probe", "rank", "erank", "pc1", "pc1_sim", "nc1", "cdnv", "ncc", "cka",
                                        "ridge"]
    assert parse_metrics("nc,rank") == ["nc1", "cdnv", "ncc", "rank"]


def _flat_features(model, split, point: str) -> tuple[np.ndarray, np.ndarray]:
    """A point's whole flattened map over a split, in float64 (an independent read with a hook)."""
    grabbed, labels = [], []
    handle = dict(model.named_modules())[point].register_forward_hook(
        lambda m, i, o: grabbed.append(o.flatten(1).double().clone()))
    with torch.inference_mode():
        for x, y in split.batches(64):
            model(x)
            labels.append(y)
    handle.remove()
    return torch.cat(grabbed).numpy(), torch.cat(labels).numpy()


def test_ncc_and_cdnv_on_whole_flattened_maps_without_the_coordinate_cap():
    """max_dim=None keeps every coordinate of a flattened conv map (128 here, over a cap of 50):
    NCC accuracy and CDNV equal numpy's on the whole map, and no D x D state is planned."""
    from references import cdnv as ref_cdnv
    from references import ncc_accuracy as ref_ncc

    ds = load("digits[size=16,per_class=40,test_per_class=20]")
    torch.manual_seed(0)
    model = models.build("convnet-1x8", ds.num_classes, ds.input_shape).eval()
    capped = run(model, ds, "ncc,cdnv", reduce="flatten", max_dim=50, include_input=False)
    whole = run(model, ds, "ncc,cdnv", reduce="flatten", max_dim=None, include_input=False)
    point = "features.2"
    assert capped.config["layout"][point]["dims"] == 50 and whole.config["layout"][point]["dims"] == 128
    assert whole.config["moments"] == {"train": "means", "test": "means"}
    xtr, ytr = _flat_features(model, ds.train, point)
    xte, yte = _flat_features(model, ds.test, point)
    assert whole.curve("ncc_acc", split="test")[point] == pytest.approx(ref_ncc(xtr, ytr, xte, yte), abs=1e-12)
    assert whole.curve("cdnv", split="test")[point] == pytest.approx(ref_cdnv(xte, yte), rel=1e-8)


def test_readouts_too_large_to_cache_read_the_training_split_again_with_the_same_numbers():
    model = models.build("mlp-3x32", 5, (1, 8, 8))
    ds = load("digits[classes=0-4,per_class=60,test_per_class=20]")
    cached = run(model, ds, "ncc,ridge")
    reread = run(model, ds, "ncc,ridge", cache_budget=1000)
    assert "train (read-out scoring)" in reread.config["passes"]
    assert "train (read-out scoring)" not in cached.config["passes"]
    pd_testing = __import__("pandas").testing
    pd_testing.assert_frame_equal(cached.table, reread.table)


def test_a_readout_is_fitted_once_and_scored_on_both_splits(digits, monkeypatch):
    """The ridge probe's D x D solve runs once per point, not once per split it is scored on."""
    from tunnelscope.metrics import ridge

    calls = []
    original = ridge.ridge_weights
    monkeypatch.setattr(ridge, "ridge_weights", lambda m, r=ridge.DEFAULT_RIDGE: calls.append(1) or original(m, r))
    model = models.build("mlp-3x32", 5, digits.input_shape)
    stats = run(model, digits, "ridge")
    points = stats.config["points"]
    assert len(calls) == len(points) + 1  # the input point too
    acc = stats.table[stats.table.metric == "ridge_acc"]
    assert set(acc.split) == {"train", "test"} and acc.value.between(0, 1).all()


def test_the_memory_budget_reads_a_container_limit(tmp_path, monkeypatch):
    """cgroup v2 and v1 limits (fake files) bound the budget below the host's free memory."""
    import tunnelscope.engine.statistics as statistics

    (tmp_path / "memory.max").write_text("3221225472\n")  # a 3 GiB container
    (tmp_path / "memory.current").write_text("1073741824\n")
    assert statistics.cgroup_headroom(tmp_path) == 2 << 30
    monkeypatch.setattr(statistics, "CGROUP_ROOT", tmp_path)
    assert statistics.available_memory(torch.device("cpu")) <= 2 << 30
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(512 << 20))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(100 << 20))
    assert statistics.cgroup_headroom(v1) == 412 << 20
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the host's memory alone
    assert statistics.cgroup_headroom(tmp_path) is None


def test_a_plan_beyond_a_container_limit_is_refused_up_front(tmp_path, monkeypatch):
    import tunnelscope.engine.statistics as statistics
    from tunnelscope.errors import MemoryBudgetError

    (tmp_path / "memory.max").write_text(str(40 << 20))
    (tmp_path / "memory.current").write_text(str(32 << 20))  # 8 MiB left in the container
    monkeypatch.setattr(statistics, "CGROUP_ROOT", tmp_path)
    with pytest.raises(MemoryBudgetError, match="budget is 0.0 GiB"):
        statistics.analyze_layers("mlp-3x1024", "digits", metrics="rank", progress=False, device="cpu")
