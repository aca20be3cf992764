"""ReLU sparsity (inactive, dead_units) against numpy on activations read by the test's own hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from references import hooked_outputs
from tunnelscope import data
from tunnelscope.engine import analyze_layers


def test_inactive_and_dead_units_equal_numpy_counts_of_zero_activations():
    ds = data.load("digits[per_class=40,test_per_class=20]")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 10)).eval()
    with torch.no_grad():  # units 0-4 of the second layer can never fire: a large negative bias
        model[3].bias[:5] = -1e3
    points = ["1", "2", "4"]  # a pre-activation (no exact zeros) and two ReLU outputs
    stats = analyze_layers(model, ds, metrics="inactive,dead_units", points=points, batch_size=64,
                           include_input=False, progress=False)
    x = torch.cat([xb for xb, _ in ds.test.batches(1000)])
    acts = {k: v.numpy().astype(np.float64) for k, v in hooked_outputs(model, points, x).items()}
    inactive, dead = stats.curve("inactive"), stats.curve("dead_units")
    for point in points:
        zero = acts[point] == 0
        assert inactive[point] == pytest.approx(zero.mean(), abs=1e-12)
        assert dead[point] == pytest.approx(zero.all(axis=0).mean(), abs=1e-12)
    assert inactive["1"] == 0 and dead["4"] >= 5 / 32 and inactive["4"] > inactive["2"]


def test_merged_shards_count_like_one_pass():
    from tunnelscope.metrics.sparsity import ZeroActivations

    rng = np.random.default_rng(0)
    feats = np.maximum(rng.normal(size=(60, 6)), 0)
    feats[:, 2] = 0  # dead
    feats[:30, 3] = 0  # active only in the second shard
    whole, first, second = (ZeroActivations(["p"], dead=d) for d in (True, True, True))
    whole.update({"p": torch.from_numpy(feats)})
    first.update({"p": torch.from_numpy(feats[:30])})
    second.update({"p": torch.from_numpy(feats[30:])})
    assert first.merge(second).compute() == whole.compute() == {"p": pytest.approx(1 / 6)}
