import numpy as np
import pytest
import torch

from tunnelscope import data
from tunnelscope.data.adapt import adapted_spec
from tunnelscope.engine.probing import probe_layers
from tunnelscope.errors import InsufficientDataError, ShapeError
from tunnelscope.probes import ProbeConfig, validation_split


def test_adapted_spec_resizes_and_converts_channels():
    assert adapted_spec("digits", (1, 8, 8), (1, 8, 8)) == ("digits", [])
    spec, changes = adapted_spec("digits[per_class=5]", (3, 28, 28), (1, 8, 8))
    assert spec == "digits[per_class=5,size=28,channels=3]"
    assert changes == ["resized 8x8 -> 28x28", "channels 1 -> 3"]
    assert data.load(spec).input_shape == (3, 28, 28)
    with pytest.raises(ShapeError, match="only images"):
        adapted_spec("mnist1d", (1, 28, 28), (1, 40))


@pytest.fixture(scope="module")
def small_mlp(trained_mlp):
    return trained_mlp


def test_end_to_end_id_accuracy_saturates_before_the_last_layer(small_mlp):
    result, ds = small_mlp
    stats = probe_layers(result.final_checkpoint, ds, ood=["digits[per_class=60]"],
                         batch_size=128, progress=False)
    id_curve = stats.curve("probe_acc").to_numpy()[1:]  # layer 0 (the input) first
    assert stats.curve("probe_acc").index[0] == "input" and len(id_curve) == 5
    assert stats.summary["tunnel_start@0.95"] < 5
    assert id_curve.max() > 0.7
    assert stats.summary["verdict_valid"] and stats.config["probe"]["protocol"] == "lbfgs"
    assert ("the tunnel starts at layer" in stats.summary["verdict"]) != ("first_layer" in
                                                                        {f["code"] for f in stats.summary["flags"]})
    assert stats.config["datasets"]["digits[per_class=60]"]["adapted"] == ["resized 8x8 -> 28x28"]
    ood = stats.summary["ood"][0]
    curve = stats.curve("probe_acc", "digits[per_class=60]").to_numpy()[1:]
    assert ood["retained_in_sample"] == pytest.approx(100 * curve[-1] / curve.max())  # the plug-in
    assert abs(ood["retained"] - ood["retained_in_sample"]) < 15  # the headline: best layer chosen apart
    assert set(stats.table.metric) == {"probe_acc", "probe_loss", "probe_converged", "probe_c", "ncc_acc"}
    assert set(stats.config["datasets"]["id"]["iterations"]) == set(stats.curve("probe_acc").index)


def test_single_class_ood_and_unadaptable_ood_are_refused(small_mlp):
    result, ds = small_mlp
    with pytest.raises(InsufficientDataError, match="single class"):
        probe_layers(result.final_checkpoint, ds, ood=["digits[classes=3]"], progress=False)
    with pytest.raises(ShapeError):
        probe_layers(result.final_checkpoint, ds, ood=["mnist1d[n=200]"], progress=False)


def test_small_cache_budget_spills_and_gives_the_same_probes(small_mlp):
    result, ds = small_mlp
    cfg = ProbeConfig(protocol="harun", epochs=2)
    a = probe_layers(result.final_checkpoint, ds, probe=cfg, progress=False)
    with pytest.warns(UserWarning, match="exceed the cache budget"):
        b = probe_layers(result.final_checkpoint, ds, probe=cfg, cache_budget=1000, progress=False)
    spilled = b.config["datasets"]["id"]["train"]["spilled"]
    assert spilled is not None and not __import__("pathlib").Path(spilled).exists()  # cleaned up
    np.testing.assert_allclose(a.curve("probe_acc").to_numpy(), b.curve("probe_acc").to_numpy())


def features(capture, split) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every point's features of a split in float64 numpy, and the labels (an independent read)."""
    feats, labels = {n: [] for n in capture.names}, []
    with torch.no_grad():
        for x, y in split.batches(256):
            for n, f in capture(x).items():
                feats[n].append(f.double().numpy())
            labels.append(y.numpy())
    return {n: np.concatenate(v) for n, v in feats.items()}, np.concatenate(labels)


def test_ncc_accuracy_and_effective_depth_match_a_numpy_nearest_centre(small_mlp):
    from tunnelscope.capture import Capture
    from tunnelscope.models import load_model

    result, ds = small_mlp
    stats = probe_layers(result.final_checkpoint, ds, probe=ProbeConfig(protocol="harun", epochs=1), ncc_eps=0.05,
                         progress=False)
    model, _ = load_model(result.final_checkpoint)
    capture = Capture(model.eval(), "blocks")

    (tr, ytr), (te, yte) = features(capture, ds.train), features(capture, ds.test)
    errors = []
    for name in capture.names:
        means = np.stack([tr[name][ytr == c].mean(0) for c in range(ds.num_classes)])
        for split, x, y in (("train", tr[name], ytr), ("test", te[name], yte)):
            pred = ((x[:, None, :] - means[None]) ** 2).sum(2).argmin(1)
            table = stats.table
            row = table[(table.dataset == ds.spec) & (table.split == split) & (table.point == name)
                        & (table.metric == "ncc_acc")]
            assert row.value.item() == pytest.approx((pred == y).mean(), abs=1e-12)
            if split == "train":
                errors.append(1 - (pred == y).mean())
    expected = next((i + 1 for i, e in enumerate(errors) if e <= 0.05), None)
    assert stats.summary["effective_depth"] == expected and stats.summary["ncc_eps"] == 0.05


def test_default_probes_agree_with_scikit_learn_within_a_point_and_all_converge(small_mlp):
    """The acceptance check of the default protocol, on a trained model with an OOD set: per layer,
    within 1 pp of scikit-learn's LogisticRegression (standardised features, at the C the probe
    chose, on the training rows it did not hold out), fitted on the same features independently."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tunnelscope.capture import Capture
    from tunnelscope.data.adapt import load_adapted
    from tunnelscope.models import load_model

    result, ds = small_mlp
    ood = "digits[per_class=60]"
    stats = probe_layers(result.final_checkpoint, ds, ood=[ood], batch_size=128, progress=False, resamples=0)
    converged = stats.table.query("metric == 'probe_converged'").value
    assert stats.config["probe"]["protocol"] == "lbfgs" and (converged == 1).all()
    model, _ = load_model(result.final_checkpoint)
    capture = Capture(model.eval(), "blocks", include_input=True)

    for key, dataset in (("id", ds), (ood, load_adapted(ood, ds.input_shape)[0])):
        (tr, ytr), (te, yte) = features(capture, dataset.train), features(capture, dataset.test)
        ours = stats.curve("probe_acc", key)
        chosen = stats.curve("probe_c", key, split="train")
        fit_rows = validation_split(len(ytr), ProbeConfig())[0].numpy()
        for name in capture.names:
            scaler = StandardScaler().fit(tr[name])
            ref = LogisticRegression(C=chosen[name], max_iter=5000).fit(scaler.transform(tr[name])[fit_rows],
                                                                        ytr[fit_rows])
            assert abs(ours[name] - ref.score(scaler.transform(te[name]), yte)) <= 0.01, (key, name)


def test_class_means_of_a_cache_match_numpy_and_mark_absent_classes():
    from tunnelscope.capture.cache import FeatureCache
    from tunnelscope.engine.probing import class_means

    rng = np.random.default_rng(0)
    x, y = rng.normal(3.0, 1.0, (1000, 7)).astype(np.float32), rng.integers(0, 3, 1000)  # class 3 of 4 absent
    with FeatureCache(len(y)) as cache:
        for lo in range(0, len(y), 300):
            cache.update({"a": torch.from_numpy(x[lo:lo + 300])}, torch.from_numpy(y[lo:lo + 300]))
        means = class_means(cache, 4, "cpu")["a"].numpy()
    expected = np.stack([x[y == c].astype(np.float64).mean(0) for c in range(3)])
    np.testing.assert_allclose(means[:3], expected, rtol=1e-13)
    assert np.isnan(means[3]).all()
