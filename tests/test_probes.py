import math

import numpy as np
import pytest
import torch

from tunnelscope.errors import ConfigError
from tunnelscope.probes import ProbeConfig, train_probes


def _features(seed=0, n=600, m=300):
    """Three points: two of width 12 (stacked together), one of width 7; 4 Gaussian classes."""
    g = torch.Generator().manual_seed(seed)
    centres = {"a": torch.randn(4, 12, generator=g) * 2, "b": torch.randn(4, 12, generator=g),
               "c": torch.randn(4, 7, generator=g) * 3}
    y, yt = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (m,), generator=g)
    train = {k: c[y] + torch.randn(n, c.shape[1], generator=g) for k, c in centres.items()}
    test = {k: c[yt] + torch.randn(m, c.shape[1], generator=g) for k, c in centres.items()}
    return train, y, test, yt


def test_joint_training_equals_one_by_one():
    train, y, test, yt = _features()
    cfg = ProbeConfig(protocol="harun", epochs=3, batch_size=32, seed=5)
    joint = train_probes(train, y, test, yt, 4, cfg, progress=False)
    for name in train:
        alone = train_probes({name: train[name]}, y, {name: test[name]}, yt, 4, cfg, progress=False)
        torch.testing.assert_close(alone.weights[name][0], joint.weights[name][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(alone.weights[name][1], joint.weights[name][1], rtol=1e-6, atol=1e-7)
        assert alone.accuracy[name] == joint.accuracy[name]


def test_probes_learn_separable_classes_and_selection_is_recorded():
    train, y, test, yt = _features(seed=1)
    last = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=10, batch_size=64), progress=False)
    assert min(last.accuracy.values()) > 0.6 and set(last.epoch.values()) == {10}
    chosen = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=10, batch_size=64, select="test"),
                          progress=False)
    assert all(chosen.accuracy[n] >= last.accuracy[n] - 1e-12 for n in train)
    assert "test split" in chosen.config["note"]
    val = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=5, batch_size=64, select="val"),
                       progress=False)
    assert all(1 <= e <= 5 for e in val.epoch.values())


def test_harun_protocol_initialisation():
    train, y, test, yt = _features()
    res = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=1, lr=1e-12), progress=False)
    w, b = res.weights["a"]
    assert float(w.std()) == pytest.approx(0.01, rel=0.2) and float(b.abs().max()) < 1e-9


def test_a_diverging_probe_is_reported_without_crashing():
    train, y, test, yt = _features()
    train["b"] = train["b"].clone()
    train["b"][3, 0] = float("inf")
    res = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=2), progress=False)
    assert res.diverged == ["b"] and math.isnan(res.accuracy["b"])
    assert np.isfinite(res.accuracy["a"]) and np.isfinite(res.accuracy["c"])


def test_bad_configs():
    with pytest.raises(ConfigError, match="valid: last, val, test"):
        ProbeConfig(select="best")
    with pytest.raises(ConfigError):
        ProbeConfig(protocol="harun", epochs=0)


def test_lbfgs_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, y, test, yt = _features(seed=3)
    for name in train:  # make the problem hard enough that the penalty matters
        train[name] = train[name] + 2.5 * torch.randn(train[name].shape, generator=torch.Generator().manual_seed(9))
    res = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="lbfgs", C=0.05), progress=False)
    for name in train:
        scaler = StandardScaler().fit(train[name].double().numpy())
        ref = LogisticRegression(C=0.05, max_iter=5000).fit(scaler.transform(train[name].double().numpy()), y.numpy())
        ref_acc = ref.score(scaler.transform(test[name].double().numpy()), yt.numpy())
        assert abs(res.accuracy[name] - ref_acc) <= 0.01
        # the weights in the original feature space reproduce the predictions
        w, b = res.weights[name]
        pred = (test[name].double() @ w + b).argmax(1)
        assert float((pred == yt).double().mean()) == pytest.approx(res.accuracy[name])


def test_ridge_protocol_uses_the_closed_form():
    train, y, test, yt = _features(seed=4)
    res = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="ridge"), progress=False)
    x, xt = train["c"].double().numpy(), test["c"].double().numpy()
    onehot = np.eye(4)[y.numpy()]
    xc = x - x.mean(0)
    cov = xc.T @ xc / len(x)
    w = np.linalg.solve(cov + 1e-3 * np.trace(cov) / x.shape[1] * np.eye(x.shape[1]),
                        xc.T @ (onehot - onehot.mean(0)) / len(x))
    ref = np.mean(((xt - x.mean(0)) @ w + onehot.mean(0)).argmax(1) == yt.numpy())
    assert res.accuracy["c"] == pytest.approx(ref)
    with pytest.raises(ConfigError, match="needs epochs"):
        ProbeConfig(protocol="ridge", select="val")


def _reference_adamw(x, y, w0, cfg, num_classes, batches):
    """The papers' way: an nn.Linear, autograd, and torch.optim.AdamW over the given batches."""
    lin = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        lin.weight.copy_(w0.t())
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for idx in batches:
        loss = torch.nn.functional.cross_entropy(lin(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin.weight.detach().t(), lin.bias.detach()


@pytest.mark.parametrize("batch_size", [600, 32])
def test_written_out_gradient_and_update_equal_autograd_and_torch_adamw(batch_size):
    from tunnelscope.probes import _init

    train, y, test, yt = _features(seed=2)
    cfg = ProbeConfig(protocol="harun", epochs=4, batch_size=batch_size, seed=1, weight_decay=0.05, lr=3e-3,
                      label_smoothing=0.2)
    res = train_probes(train, y, test, yt, 4, cfg, progress=False)
    for name in ("a", "c"):
        w0 = _init([name], [train[name].shape[1]], 4, cfg.init_std, cfg.seed)[0]
        batches = []
        for epoch in range(1, cfg.epochs + 1):  # the documented order: a seeded permutation per epoch
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            batches += [order[lo : lo + batch_size] for lo in range(0, len(y), batch_size)]
        w, b = _reference_adamw(train[name], y, w0, cfg, 4, batches)
        torch.testing.assert_close(res.weights[name][0], w, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.weights[name][1], b, rtol=1e-4, atol=1e-6)
        assert not torch.equal(w, w0)


def test_memory_mapped_features_are_streamed_with_the_same_result(tmp_path):
    train, y, test, yt = _features(seed=4)

    def mapped(feats, tag):
        out = {}
        for k, x in feats.items():
            out[k] = np.lib.format.open_memmap(tmp_path / f"{tag}-{k}.npy", mode="w+", dtype=np.float32,
                                               shape=tuple(x.shape))
            out[k][:] = x.numpy()
        return out

    cfg = ProbeConfig(protocol="harun", epochs=3, batch_size=64, select="val")
    resident = train_probes(train, y, test, yt, 4, cfg, progress=False)
    streamed = train_probes(mapped(train, "tr"), y, mapped(test, "te"), yt, 4, cfg, progress=False)
    for name in train:
        torch.testing.assert_close(streamed.weights[name][0], resident.weights[name][0], rtol=0, atol=0)
    assert streamed.accuracy == resident.accuracy and streamed.epoch == resident.epoch


def _sklearn_objective(x, y, xt, C, num_classes):
    """scikit-learn's fitted multinomial logistic regression on standardised x: its mean objective
    (cross-entropy + ‖W‖²/(2·C·N)) at its own optimum, and its test predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    ref = LogisticRegression(C=C, max_iter=10_000, tol=1e-8).fit(xs, y)
    logits = xs @ ref.coef_.T + ref.intercept_
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -log_p[np.arange(len(y)), y].mean() + (ref.coef_ ** 2).sum() / (2 * C * len(y))
    return loss, ref.predict(scaler.transform(xt))


def test_lbfgs_reaches_scikit_learns_optimum_and_says_it_converged():
    train, y, test, yt = _features(seed=5, n=400)
    res = train_probes(train, y, test, yt, 4, ProbeConfig(), progress=False)  # the default protocol
    assert res.config["protocol"] == "lbfgs" and res.unconverged == []
    for name in train:
        loss, pred = _sklearn_objective(train[name].double().numpy(), y.numpy(), test[name].double().numpy(), 1.0, 4)
        # |gradient| <= tol = 1e-4 per coordinate and strong convexity 1/(C·N) bound the gap to the optimum
        # by (D·C·tol²)·C·N/2 = 1e-4 here; and no probe can go below scikit-learn's optimum
        assert loss - 1e-9 <= res.train_loss[name] <= loss + 1e-4
        agree = float((torch.from_numpy(pred) == yt).double().mean())
        assert abs(res.accuracy[name] - agree) <= 0.01
        assert res.correct[name].mean() == pytest.approx(res.accuracy[name]) and 0 < res.iterations[name] < 1000


def test_a_starved_probe_is_reported_as_not_converged():
    train, y, test, yt = _features(seed=6, n=300)
    starved = train_probes(train, y, test, yt, 4, ProbeConfig(max_iter=2), progress=False)
    assert sorted(starved.unconverged) == sorted(train)
    short = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=3), progress=False)
    assert sorted(short.unconverged) == sorted(train)  # a fixed budget far too small for 300 samples
    long = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=400, lr=1e-2), progress=False)
    assert long.unconverged == [] and all(long.train_loss[n] < short.train_loss[n] for n in train)
    ridge = train_probes(train, y, test, yt, 4, ProbeConfig(protocol="ridge"), progress=False)
    assert ridge.unconverged == []


@pytest.mark.parametrize("losses, falling", [
    ([1.0], True),  # one epoch shows nothing
    ([1.0, 0.5, 0.4, 0.3, 0.2, 0.1], True),
    ([1.0, 0.5, 0.30, 0.300, 0.2999, 0.2998], False),
    ([1.0] * 12 + [0.9], True),
    ([0.5, float("nan")], True),
])
def test_still_falling(losses, falling):
    from tunnelscope.probes import still_falling

    assert still_falling(losses, 0.01) is falling


def test_probe_seeds():
    from tunnelscope.probes import train_probe_seeds

    train, y, test, yt = _features(seed=7, n=300)
    lbfgs = train_probe_seeds(train, y, test, yt, 4, ProbeConfig(seeds=3), progress=False)
    plain = train_probes(train, y, test, yt, 4, ProbeConfig(), progress=False)
    assert len(lbfgs) == 3 and lbfgs[0].accuracy == plain.accuracy
    assert not torch.equal(lbfgs[1].weights["a"][0], lbfgs[0].weights["a"][0])  # a bootstrap resample of train
    harun = train_probe_seeds(train, y, test, yt, 4, ProbeConfig(protocol="harun", epochs=2, seeds=2), progress=False)
    assert harun[1].config["seed"] == 1 and not torch.equal(harun[1].weights["a"][0], harun[0].weights["a"][0])
