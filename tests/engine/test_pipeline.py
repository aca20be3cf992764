"""tunnelscope.analyze: one pass per ID split shared by the statistics and the probes."""

import math

import pytest

from tunnelscope import analyze
from tunnelscope.engine.analyze import parse_metrics
from tunnelscope.engine.probing import probe_layers
from tunnelscope.errors import ConfigError
from tunnelscope.probes import ProbeConfig

DATA = "fashion-mnist[classes=0-4,per_class=300,test_per_class=100]"


@pytest.fixture(scope="module")
def trained(trained_mlp):
    result, ds = trained_mlp
    return result.model.eval(), ds


def _count_batches(model):
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda m, i, o: calls.append(len(o)))
    return calls, handle


def test_statistics_and_probes_share_one_pass_per_split(trained):
    model, ds = trained
    cfg = ProbeConfig(protocol="harun", epochs=3)
    calls, handle = _count_batches(model)
    try:
        shared = analyze(model, ds, metrics="probe,rank,ncc", probe=cfg, batch_size=256, progress=False)
    finally:
        handle.remove()
    samples = [n for n in calls if n > 2]  # the two-image example batches only check the probe points
    assert sum(samples) == len(ds.train) + len(ds.test) and len(calls) - len(samples) <= 2
    assert shared.config["id_passes"].startswith("one pass per split")
    alone = probe_layers(model, ds, probe=cfg, batch_size=256, progress=False)
    assert shared.curve("probe_acc").tolist() == alone.curve("probe_acc").tolist()


def test_different_probe_samples_read_the_splits_separately(trained):
    model, ds = trained
    calls, handle = _count_batches(model)
    try:
        res = analyze(model, ds, metrics="probe,rank", probe=ProbeConfig(protocol="harun", epochs=1), max_train=700,
                      progress=False)
    finally:
        handle.remove()
    assert sum(n for n in calls if n > 2) == len(ds.train) + len(ds.test) + 700 + len(ds.test)
    assert res.config["probes"]["datasets"]["id"]["train"]["samples"] == 700
    assert res.config["id_passes"].startswith("the statistics and the probes read")


def test_metric_names_and_aliases():
    assert parse_metrics("nc,probe") == ["nc1", "cdnv", "ncc", "probe"]
    assert parse_metrics("default")[0] == "probe"
    with pytest.raises(ConfigError, match="unknown metric"):
        parse_metrics("rank,nope")


def test_ood_without_probes_is_refused(trained):
    model, ds = trained
    with pytest.raises(ConfigError, match="add 'probe'"):
        analyze(model, ds, ood=["digits"], metrics="rank", progress=False)


def test_statistics_only_has_no_verdict_numbers(trained):
    model, ds = trained
    res = analyze(model, ds, metrics="rank", progress=False)
    assert "no probes were run" in res.summary["verdict"] and not res.has("probe_acc")
    assert not math.isnan(res.curve("rank").iloc[0])
