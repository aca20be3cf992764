"""A metric registered in one file, with no other edit, reaches every output: the results table
(results.parquet), the CLI's per-layer table, a figure and report.html (issue 21's registry test)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cli_helpers import run_cli
from references import cov_eigvals, hooked_outputs
from tunnelscope import data, models, train
from tunnelscope.metrics import PRESENTATIONS, REGISTRY, PointStats, Presentation, point_metric

DATA = "digits[classes=0-3,per_class=40,test_per_class=20]"
NAME = "toy_total_variance"


@pytest.fixture()
def toy_metric():
    """The whole registration: one decorated function with its presentation."""
    @point_metric(NAME, "total variance: the trace of the centred covariance (a toy)", moments="scatter",
                  shown=Presentation(NAME, "total variance (toy)", bounds=(0, None), terminal=True, short="TOY"))
    def _total_variance(stats: PointStats) -> float:
        return float(stats.covariance_eigenvalues.sum())

    yield NAME
    del REGISTRY[NAME], PRESENTATIONS[NAME]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ds = data.load(DATA)
    run = train("mlp-3x16", ds, epochs=1, out=tmp_path_factory.mktemp("toy"), batch_size=32, progress=False,
                early_checkpoints=False)
    return run.final_checkpoint


def test_a_metric_registered_in_one_file_reaches_table_cli_figure_and_report(toy_metric, checkpoint, tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["analyze", "--checkpoint", checkpoint, "--data", DATA, "--metrics",
                                 f"probe,{toy_metric}", "--resamples", 10, "--out", out], capsys)
    assert code == 0, err
    table = pd.read_parquet(out / "results.parquet")
    rows = table[(table.metric == toy_metric) & (table.split == "test") & table.reference.isna()].sort_values("layer")
    assert len(rows) == 3  # the input and the two hidden blocks
    # the values are the trace of the covariance of what the points output (numpy, float64)
    net, _ = models.load_model(checkpoint)
    x = torch.cat([xb for xb, _ in data.load(DATA).test.batches(256)])
    outputs = hooked_outputs(net, models.probe_points(net, "blocks"), x)
    expected = [cov_eigvals(x.flatten(1).double().numpy()).sum()]
    expected += [cov_eigvals(outputs[p].double().numpy()).sum() for p in models.probe_points(net, "blocks")]
    assert rows["value"].tolist() == pytest.approx(expected, rel=1e-6)
    header = next(line for line in stdout.splitlines() if "point" in line and "layer" in line)
    assert "TOY" in header  # its column in the CLI table, under its registered short name
    assert (out / "figures" / "metrics.png").is_file()  # the generic figure draws what no other does
    report = (out / "report.html").read_text()
    assert 'alt="metrics"' in report and toy_metric in report
