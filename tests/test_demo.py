"""``run_demo``, the library side of ``tunnelscope demo``, on a tiny stand-in: an MLP on digits
with cheap analysis settings (the real demo trains for minutes; tests/test_cli.py runs its
quick version, marked slow)."""

import importlib

import pytest

import tunnelscope.experiments.demo as demo
from tunnelscope.experiments.demo import run_demo
from tunnelscope.probes import ProbeConfig

pipeline = importlib.import_module("tunnelscope.engine.analyze")  # the module (the package exports the function)


@pytest.fixture()
def tiny_demo(monkeypatch):
    monkeypatch.setattr(demo, "DEMO_MODEL", "mlp-3x32")
    monkeypatch.setattr(demo, "demo_settings", lambda quick=False: ("digits[classes=0-4]", ("digits[classes=5-9]",), 1))
    analyze = pipeline.analyze
    cheap = {"metrics": "probe,rank", "resamples": 0, "probe": ProbeConfig(protocol="ridge")}
    monkeypatch.setattr(pipeline, "analyze", lambda *args, **kwargs: analyze(*args, **{**kwargs, **cheap}))


def test_settings_are_the_documented_ones():
    assert demo.demo_settings() == ("fashion-mnist[classes=0-4]", ("fashion-mnist[classes=5-9]", "digits[size=28]"), 4)
    data, ood, epochs = demo.demo_settings(quick=True)
    assert "per_class=1000" in data and "per_class=1000" in ood[0] and epochs == 2


def test_run_demo_trains_analyses_then_reuses(tiny_demo, tmp_path):
    lines: list[str] = []
    run = run_demo(tmp_path, progress=False, log=lines.append)
    assert not run.training_reused and not run.analysis_reused and run.checkpoint.is_file()
    assert run.results.path == tmp_path and run.results.references == ["untrained"]
    assert run.results.config["model"]["checkpoint"] == str(run.checkpoint)
    for name in ("run.json", "history.csv", "results.parquet", "summary.json", "report.html"):
        assert (tmp_path / name).is_file(), name
    assert lines[0].startswith("demo: training mlp-3x32 on digits[classes=0-4]") and len(lines) == 3

    lines.clear()
    again = run_demo(tmp_path, progress=False, log=lines.append)
    assert again.training_reused and again.analysis_reused and again.checkpoint == run.checkpoint
    assert len(lines) == 2 and all("reusing it" in line for line in lines)
    assert again.training_summary() == {"test_accuracy": run.test_accuracy, "reused": True, "analysis_reused": True,
                                        "checkpoint": str(run.checkpoint)}
