"""The probes' C in an analysis (issue 24 item 3): recorded per point, every C of the grid kept as
reference rows, the headline recomputed under each C, the report's table, and ``--probe-c``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from tunnelscope import analyze
from tunnelscope.probes import ProbeConfig, c_reference
from tunnelscope.report import save_run
from tunnelscope.results import Results
from tunnelscope.summary import BEST_TRANSFER_LAYER, C_SENSITIVITY, MEAN_RETAINED, TUNNEL_START

OOD = ["digits[per_class=60]"]


@pytest.fixture(scope="module")
def chosen(trained_mlp, tmp_path_factory):
    """The suite's trained MLP analysed with the default probe (C chosen on data) and the untrained
    reference, saved and read back."""
    result, ds = trained_mlp
    out = tmp_path_factory.mktemp("probe-c") / "run"
    res = analyze(result.final_checkpoint, ds, ood=OOD, metrics="probe,rank", untrained_reference=True,
                  resamples=50, progress=False)
    save_run(res, out)
    return Results.load(out)


def test_every_point_records_its_c_and_every_c_of_the_grid_is_kept(chosen):
    grid = ProbeConfig().c_grid
    t = chosen.table
    for dataset in chosen.datasets:
        used = t[(t.metric == "probe_c") & (t.dataset == dataset) & t.reference.isna()]
        assert len(used) == len(chosen.points) + 1 and set(used.value) <= set(grid)  # + layer 0
        assert chosen.config["probes"]["datasets"]["id" if dataset == chosen.id_dataset else dataset]["probe_c"]
        for c in grid:
            rows = chosen.interval("probe_acc", dataset, reference=c_reference(c))
            assert len(rows) == len(chosen.points) + 1 and rows.ci_lo.le(rows.value).all()
            assert chosen.curve("probe_acc", dataset, split="val", reference=c_reference(c)).between(0, 1).all()
        # the model's probe at each point is the chosen C's grid entry
        own = chosen.curve("probe_acc", dataset)
        picked = used.set_index("point").value
        for point, c in picked.items():
            assert own[point] == chosen.curve("probe_acc", dataset, reference=c_reference(c))[point]
    # the untrained reference keeps its own analysis only (no C rows renamed over it)
    assert set(chosen.references) == {"untrained", *(c_reference(c) for c in grid)}


def test_the_sensitivity_rows_span_the_grid_and_the_report_shows_them(chosen):
    rows = chosen.summary[C_SENSITIVITY]
    assert [r["C"] for r in rows] == list(ProbeConfig().c_grid) == chosen.c_sensitivity()["C"].tolist()
    assert sum(r["points_choosing"] for r in rows) == len(chosen.points)
    for r in rows:
        reference = c_reference(r["C"])
        id_curve = chosen.curve("probe_acc", reference=reference, with_input=False).to_numpy()
        assert r["id_final"] == pytest.approx(id_curve[-1])
        assert r[TUNNEL_START] == int(np.argmax(id_curve >= 0.95 * id_curve[-1])) + 1  # numpy, not tunnel.py
        assert 0 < r[MEAN_RETAINED] <= 100 + 1e-9 and 1 <= r[BEST_TRANSFER_LAYER] <= len(chosen.points)
    html = (chosen.path / "report.html").read_text()
    assert "the headline under each C" in html and html.count("<td>0.01</td>") >= 1
    flags = {f["code"] for f in chosen.summary["flags"]}
    starts = {r[TUNNEL_START] for r in rows}
    labels = {r["strength"] for r in rows}
    assert ("probe_c_sensitive" in flags) == (len(starts) > 1 or len(labels) > 1)


def test_a_one_c_grid_reproduces_the_headline_exactly(trained_mlp):
    """With a grid of one C every point's probe is that C's fit, so the sensitivity row is the
    headline, computed a second way."""
    from tunnelscope.engine.settings import AnalysisSettings

    result, ds = trained_mlp
    settings = AnalysisSettings(probe=ProbeConfig(c_grid=(0.3,)), resamples=20, progress=False)
    res = analyze(result.final_checkpoint, ds, ood=OOD, metrics="probe", settings=settings)
    (row,) = res.summary[C_SENSITIVITY]
    assert row["C"] == 0.3 and row["points_choosing"] == len(res.points)
    assert row[MEAN_RETAINED] == pytest.approx(res.summary[MEAN_RETAINED], abs=1e-12)
    assert row[TUNNEL_START] == res.summary[TUNNEL_START]
    assert row[BEST_TRANSFER_LAYER] == res.summary[BEST_TRANSFER_LAYER]
    assert "probe_c_sensitive" not in {f["code"] for f in res.summary["flags"]}


def test_probe_c_on_the_command_line_fixes_c(trained_mlp, tmp_path, capsys):
    result, ds = trained_mlp
    out = tmp_path / "fixed"
    code, _, err = run_cli(["analyze", "--checkpoint", str(result.final_checkpoint), "--data", ds.spec,
                            "--metrics", "probe", "--probe-c", "0.5", "--resamples", "0", "-q", "--out", out], capsys)
    assert code == 0, err
    run = Results.load(out)
    assert run.config["probes"]["probe"]["C"] == 0.5
    assert run.config["probes"]["datasets"]["id"]["c_selection"] == "fixed at 0.5"
    assert set(run.table[run.table.metric == "probe_c"].value) == {0.5}
    assert run.references == [] and C_SENSITIVITY not in run.summary and run.c_sensitivity().empty
    assert "the headline under each C" not in (out / "report.html").read_text()
    code, _, err = run_cli(["analyze", "--checkpoint", str(result.final_checkpoint), "--data", ds.spec,
                            "--probe-c", "0", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "--probe-c" in err and "Traceback" not in err
    assert json.loads((out / "summary.json").read_text())["verdict"]
