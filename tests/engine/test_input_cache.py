"""The input point's statistics kept between analyses of the same data (engine/input_cache.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tunnelscope import data, models
from tunnelscope.data import sources
from tunnelscope.engine import analyze_layers
from tunnelscope.engine.input_cache import FOLDER, prune
from tunnelscope.engine.settings import AnalysisSettings
from tunnelscope.metrics.moments import Moments

DATA = "digits"  # 64 pixels: the input is kept as a D x D scatter at any of these sample sizes


@pytest.fixture()
def cache_dir(user_cache):
    """Where this test's entries go (its own user cache, from conftest)."""
    return user_cache / FOLDER


@pytest.fixture(scope="module")
def digits():
    return data.load(DATA)


def _model(ds, seed: int = 0):
    torch.manual_seed(seed)
    return models.build("mlp-3x32", ds.num_classes, ds.input_shape).eval()


def _analyse(model, ds, **kw):
    kw = {"metrics": "default", "batch_size": 64, "max_samples": 300, "progress": False, **kw}
    return analyze_layers(model, ds, **kw)


def _values(results) -> np.ndarray:
    return results.table.value.to_numpy(dtype=float)


def test_a_second_analysis_reads_the_input_point_and_gives_the_same_numbers(cache_dir, digits):
    model = _model(digits)
    cold = _analyse(model, digits)
    assert cold.config["input_cache"]["source"] == "computed" and cold.config["input_cache"]["cached"]
    assert sorted(p.name.rsplit("-", 1)[1] for p in cache_dir.iterdir()) == ["test.pt", "train.pt"]
    warm = _analyse(model, digits)
    assert warm.config["input_cache"] == {**cold.config["input_cache"], "source": "cache"}
    np.testing.assert_array_equal(_values(warm), _values(cold))  # bit for bit, NaN where NaN
    other = _analyse(_model(digits, seed=1), digits)  # another model on the same data also hits
    assert other.config["input_cache"]["source"] == "cache"
    more = _analyse(_model(digits, seed=1), digits, metrics="all")
    assert more.config["input_cache"]["source"] == "cache"  # more metrics derive more from the same moments


def test_a_hit_reads_the_stored_moments_and_skips_the_input_in_the_pass(cache_dir, digits, monkeypatch):
    model = _model(digits)
    cold = _analyse(model, digits, metrics="rank")
    train_file = next(cache_dir.glob("*-train.pt"))
    saved = torch.load(train_file, weights_only=True)
    saved["computed"]["covariance_eigenvalues"] = torch.tensor([4.0, 3.0, 2.0] + [0.0] * 61, dtype=torch.float64)
    torch.save(saved, train_file)
    widths: list[list[str]] = []  # the points each batch's sums were taken over
    update = Moments.update
    monkeypatch.setattr(Moments, "update", lambda self, f, y: (update(self, f, y), widths.append(self.names))[0])
    warm = _analyse(model, digits, metrics="rank")
    assert all("input" not in names for names in widths) and widths
    def input_rank(results) -> float:
        table = results.table
        return table[(table.metric == "rank") & (table.split == "train") & (table.point == "input")].value.item()

    assert input_rank(warm) == 3 != input_rank(cold)  # the tampered spectrum: the value came from the file


@pytest.mark.parametrize("change", [{"max_samples": 200}, {"seed": 1}, {"precision": "float64"}, {"batch_size": 32},
                                    {"reduce": "gap", "max_dim": 16}])
def test_anything_that_changes_the_numbers_misses(cache_dir, digits, change):
    model = _model(digits)
    first = _analyse(model, digits)
    other = _analyse(model, digits, **change)
    assert other.config["input_cache"]["source"] == "computed"
    assert other.config["input_cache"]["key"] != first.config["input_cache"]["key"]


def test_other_data_misses(cache_dir, digits):
    model = _model(digits)
    _analyse(model, digits)
    noisy = data.load(f"{DATA}[noise=0.5]")  # the same images, other training labels
    assert _analyse(model, noisy).config["input_cache"]["source"] == "computed"


def test_a_damaged_entry_is_computed_again_and_rewritten(cache_dir, digits):
    model = _model(digits)
    cold = _analyse(model, digits)
    for path in cache_dir.iterdir():
        path.write_bytes(path.read_bytes()[:100])
    again = _analyse(model, digits)
    assert again.config["input_cache"]["source"] == "computed"
    np.testing.assert_array_equal(_values(again), _values(cold))
    assert _analyse(model, digits).config["input_cache"]["source"] == "cache"


def test_a_read_only_cache_only_costs_the_computation(tmp_path, monkeypatch, digits):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TUNNELSCOPE_CACHE", str(blocked))
    record = _analyse(_model(digits), digits).config["input_cache"]
    assert record["source"] == "computed" and not record["cached"]


def test_runs_that_do_not_qualify_say_why(cache_dir, digits):
    model = _model(digits)
    switched = _analyse(model, digits, settings=AnalysisSettings(input_cache=False, batch_size=64, max_samples=300))
    assert switched.config["input_cache"] == {"source": "computed", "cached": False,
                                             "why": "switched off (input_cache=False)"}
    assert not cache_dir.exists()
    without = _analyse(model, digits, include_input=False).config["input_cache"]
    assert not without["cached"] and "no input point" in without["why"]
    narrow = _analyse(model, digits, max_samples=50).config["input_cache"]  # 64 pixels > 50 samples: kept as rows
    assert not narrow["cached"] and "wider than" in narrow["why"]
    cka_only = _analyse(model, digits, metrics="cka").config["input_cache"]
    assert not cka_only["cached"] and "no scatter" in cka_only["why"]


def test_moments_adopt_only_points_they_skip():
    moments = Moments(3, skip=frozenset({"input"}))
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    moments.update({"input": torch.randn(8, 5), "a": x}, y)
    assert moments.names == ["a"]
    other = Moments(3)
    other.update({"input": x}, y)
    moments.adopt_point("input", other.points["input"])
    assert list(moments.points) == ["input", "a"]
    moments.release("input")
    assert list(moments.points) == ["a"]
    with pytest.raises(ValueError, match="not skipped"):
        moments.adopt_point("a", other.points["input"])


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNNELSCOPE_CACHE", str(tmp_path / "here"))
    assert sources.user_cache_dir() == tmp_path / "here"


def test_the_folder_keeps_the_most_recently_used_entries_within_its_limit(tmp_path):
    for age, name in enumerate(["new", "middle", "old"]):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"x" * 100)
        os.utime(path, ns=(10**18 - age * 10**12, 10**18 - age * 10**12))
    prune(tmp_path, limit=250)
    assert sorted(p.stem for p in tmp_path.iterdir()) == ["middle", "new"]


def test_the_command_line_reads_the_cache_and_can_switch_it_off(tmp_path, capsys, cache_dir):
    import json

    from cli_helpers import run_cli

    def analyse(out: str, *flags: str) -> dict:
        args = ["analyze", "--model", "mlp-3x32", "--data", DATA, "--metrics", "rank,ncc", "--max-samples", 300,
                "--batch-size", 64, "--out", tmp_path / out, "-q", *flags]
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
        return json.loads((tmp_path / out / "config.json").read_text())["statistics"]["input_cache"]

    assert analyse("a")["source"] == "computed"
    assert analyse("b")["source"] == "cache"
    assert analyse("c", "--no-input-cache") == {"source": "computed", "cached": False,
                                                "why": "switched off (input_cache=False)"}


def test_a_hit_reuses_what_was_derived_from_the_input(cache_dir, digits, monkeypatch):
    """The input's ridge weights (a D x D solve) come from the entry: one solve fewer on a hit."""
    from tunnelscope.metrics import ridge

    calls: list[int] = []
    original = ridge.ridge_weights
    monkeypatch.setattr(ridge, "ridge_weights", lambda m, r=ridge.DEFAULT_RIDGE: calls.append(m.dims) or original(m, r))
    model = _model(digits)
    cold = _analyse(model, digits, metrics="ridge")
    solved_cold, calls[:] = list(calls), []
    warm = _analyse(model, digits, metrics="ridge")
    assert len(solved_cold) == len(cold.config["points"]) + 1 and solved_cold.count(64) == 1  # the input: 64 pixels
    assert 64 not in calls and len(calls) == len(solved_cold) - 1
    np.testing.assert_array_equal(_values(warm), _values(cold))


def test_a_change_to_the_code_that_makes_the_numbers_misses(cache_dir, digits, monkeypatch):
    from tunnelscope.engine import input_cache

    model = _model(digits)
    _analyse(model, digits)
    monkeypatch.setattr(input_cache, "_source_digest", lambda: "another version of moments.py")
    assert _analyse(model, digits).config["input_cache"]["source"] == "computed"


def test_a_hit_on_a_wide_input_runs_none_of_its_decompositions(cache_dir, digits, monkeypatch):
    """With the wide path from 32 units, the 64-pixel input's top eigenpair, rank count and both
    spectra come from the entry (numbers, tuples and tensors alike): none is computed on a hit."""
    from tunnelscope.metrics import moments, registry

    monkeypatch.setattr(registry.PointStats, "WIDE", 32)
    sizes: list[int] = []
    for module, name in ((registry, "top_eigenpair"), (registry, "count_above"), (moments, "eigenvalues"),
                         (moments, "top_eigenvector")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda m, *a, f=original, **k: sizes.append(m.shape[0]) or f(m, *a, **k))
    model = _model(digits)
    cold = _analyse(model, digits, metrics="rank,erank,pc1,pc1_sim")
    assert sizes.count(64) == 6  # per split: Lanczos (λ₁ and PC1), the LDLᵀ count, the uncentred spectrum
    sizes.clear()
    warm = _analyse(model, digits, metrics="rank,erank,pc1,pc1_sim")
    assert warm.config["input_cache"]["source"] == "cache" and 64 not in sizes and sizes
    np.testing.assert_array_equal(_values(warm), _values(cold))
