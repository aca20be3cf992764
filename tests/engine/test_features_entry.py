"""``analyze_features``: features extracted beforehand give the numbers ``analyze`` computes
from the model itself (same code paths), maps are reduced as captured outputs are, and bad
feature dicts are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tunnelscope as ts
from tunnelscope import data, models
from tunnelscope.capture import Capture
from tunnelscope.data.objects import split_indices
from tunnelscope.errors import ConfigError, ShapeError
from tunnelscope.summary import MEAN_RETAINED, TUNNEL_START

OOD_SPEC = "digits[classes=0-4]"
RUN = dict(max_samples=900, batch_size=128, device="cpu", progress=False, resamples=20, seed=2)


def captured(net, split, include_input: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every probe point's reduced features over a whole split, with tunnelscope's own capture."""
    example = next(split.batches(2))[0]
    capture = Capture(net, "blocks", include_input=include_input, example=example)
    parts, labels = [], []
    for feats, y in capture.stream(split, 256, torch.device("cpu")):
        parts.append(feats)
        labels.append(y)
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}, torch.cat(labels)


def per_split(net, ds, include_input: bool = True) -> tuple[dict, dict]:
    out = {s: captured(net, getattr(ds, s), include_input) for s in ("train", "test")}
    return {s: f for s, (f, _) in out.items()}, {s: y for s, (_, y) in out.items()}


@pytest.fixture(scope="module")
def setup(one_thread):
    ds, ood = data.load("digits"), data.load(OOD_SPEC)
    torch.manual_seed(0)
    net = models.build("mlp-4x32", ds.num_classes, ds.input_shape)
    x, y = (torch.cat(t) for t in zip(*ds.train.batches(2048)))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):  # a quick fit, so that the layers hold learned features (NCC reaches its effective depth)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval(), ds, ood


def assert_same_table(got_results, expected_results) -> None:
    """Equal tables, the ID data's name aside (each run names it as it was given)."""
    got = got_results.table.replace({"dataset": {got_results.id_dataset: "ID"}}).drop(columns="model")
    expected = expected_results.table.replace({"dataset": {expected_results.id_dataset: "ID"}}).drop(columns="model")
    assert len(got) == len(expected) > 20
    for column in ("dataset", "split", "point", "layer", "metric", "other_point"):
        assert got[column].tolist() == expected[column].tolist()
    np.testing.assert_allclose(got["depth"].to_numpy(float), expected["depth"].to_numpy(float))
    for column in ("value", "ci_lo", "ci_hi"):
        np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float),
                                   rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("include_input", [True, False])
def test_precomputed_features_give_the_numbers_analyze_computes_from_the_model(setup, include_input):
    net, ds, ood = setup
    reference = ts.analyze(net, ds, ood=[OOD_SPEC], metrics="all", include_input=include_input, **RUN)
    features, labels = per_split(net, ds, include_input)
    ood_features = per_split(net, ood, include_input)
    results = ts.analyze_features(features, labels, ood={OOD_SPEC: ood_features}, metrics="all",
                                  include_input=include_input, **RUN)
    assert_same_table(results, reference)
    assert {"rank", "pc1", "nc1", "cdnv", "ncc_acc", "cka", "probe_acc", "ridge_acc"} <= set(results.table.metric)
    for key in (TUNNEL_START, MEAN_RETAINED, "effective_depth"):
        assert results.summary[key] == pytest.approx(reference.summary[key], rel=1e-6, nan_ok=True)
    assert results.config["points"] == reference.config["points"]
    assert results.config["input_point"] == reference.config["input_point"]
    assert results.table.model.unique().tolist() == ["precomputed"]
    assert results.config["model"]["precomputed_features"] is True
    assert np.isnan(results.summary["model_accuracy"])  # features carry no model output
    records = results.config["data_objects"]
    assert records["id"]["kind"] == "features" and records["id"]["train_samples"] == len(ds.train)


def test_one_feature_dict_is_split_as_the_data_objects_are(setup):
    net, ds, _ = setup
    features, labels = captured(net, ds.train)
    train, test = split_indices(labels, 0.3, 4)
    split = {"train": {k: v[train] for k, v in features.items()}, "test": {k: v[test] for k, v in features.items()}}
    expected = ts.analyze_features(split, {"train": labels[train], "test": labels[test]}, **RUN)
    results = ts.analyze_features(features, labels, test_fraction=0.3, split_seed=4, **RUN)
    assert_same_table(results, expected)
    assert results.config["data_objects"]["id"]["split"]["seed"] == 4
    assert results.config["data_objects"]["id"]["test_samples"] == len(test)


def test_rank_of_features_of_known_rank(one_thread):
    """An independent property: features A @ B with A (N, r) and B (r, D) have rank r."""
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 3
    features = {f"layer{r}": rng.normal(size=(600, r)) @ rng.normal(size=(r, 40)) for r in (3, 11, 25)}
    results = ts.analyze_features(features, labels, metrics="rank", progress=False, device="cpu")
    ranks = results.table.query("metric == 'rank' and split == 'train'").set_index("point").value
    assert ranks.to_dict() == {"layer3": 3, "layer11": 11, "layer25": 25}


def test_feature_maps_are_reduced_as_captured_outputs_are(one_thread):
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    maps = rng.normal(size=(300, 4, 6, 6)).astype(np.float32) + labels[:, None, None, None] * 0.3
    flat = rng.normal(size=(300, 7)).astype(np.float32)
    given = ts.analyze_features({"conv": maps, "fc": flat}, labels, reduce="gap", metrics="default",
                                progress=False, device="cpu", resamples=0)
    pooled = ts.analyze_features({"conv": maps.mean((2, 3)), "fc": flat}, labels, metrics="default",
                                 progress=False, device="cpu", resamples=0)
    assert_same_table(given, pooled)
    layout = given.config["statistics"]["layout"]["conv"]
    assert layout["raw_shape"] == [4, 6, 6] and layout["dims"] == 4


F = {"a": np.zeros((10, 3), np.float32), "b": np.ones((10, 2), np.float32)}
Y = np.arange(10) % 2


@pytest.mark.parametrize("features, labels, error, message", [
    ({}, Y, ConfigError, "features must be a non-empty dict"),
    ({"a": np.zeros(10, np.float32)}, Y, ShapeError, r"shape \(10,\): give one row per sample"),
    (F, Y[:9], ShapeError, "at 'a' has 10 inputs but 9 labels"),
    (F, Y.astype(float), ConfigError, "integer class indices"),
    ({"train": F, "test": F}, Y, ConfigError, r"labels must be \{'train': y, 'test': y\}"),
    ({"train": F, "test": {"a": F["a"]}}, {"train": Y, "test": Y}, ShapeError, "differ in points or shapes"),
    ({"input": F["a"]}, Y, ConfigError, "one point at least besides 'input'"),
])
def test_bad_features_are_refused_in_one_line(features, labels, error, message):
    with pytest.raises(error, match=message) as info:
        ts.analyze_features(features, labels, progress=False, device="cpu")
    assert "\n" not in str(info.value)


def test_ood_features_must_have_the_id_points():
    with pytest.raises(ShapeError, match="give every dataset the same points and shapes") as info:
        ts.analyze_features(F, Y, ood={"other": ({"a": F["a"]}, Y)}, progress=False, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="must be a \\(features, labels\\) pair"):
        ts.analyze_features(F, Y, ood={"other": F}, progress=False, device="cpu")
