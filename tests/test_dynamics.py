"""One training run's dynamics: dense early checkpoints, analyze_run against direct analyze
calls, resumption, step selection, the result contract and the figures' axes."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import tunnelscope as ts
from experiment_contract import check_contract
from tunnelscope.checkpoint import read_checkpoint
from tunnelscope.errors import ConfigError, RunDirectoryError
from tunnelscope.experiments import dynamics
from tunnelscope.experiments.dynamics import DynamicsResult, analyze_run, select_steps
from tunnelscope.metrics import presentation
from tunnelscope.report.dynamics import heatmap_figure, step_edges, step_ticks, tunnel_figure
from tunnelscope.report.experiments import draw_experiment
from tunnelscope.results import COLUMNS
from tunnelscope.summary import MEAN_RETAINED, MEAN_RETAINED_CI, TUNNEL_START, TUNNEL_START_CI

ID_DATA = "digits[classes=0-4,per_class=40,test_per_class=10]"  # 200 training images: 6 steps of 32
OOD_DATA = "digits[classes=5-9,per_class=20,test_per_class=10]"
DENSE = 3
STEPS = [0, 2, 6]
SETTINGS = dict(ood=[OOD_DATA], metrics="probe,rank", resamples=20, max_samples=100, seed=3, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _one_thread):
    out = tmp_path_factory.mktemp("dyn") / "run"
    ts.train("mlp-3x32", ID_DATA, epochs=1, out=out, batch_size=32, dense_steps=DENSE, progress=False)
    return out


@pytest.fixture(scope="module")
def analysed(run_dir) -> DynamicsResult:
    return analyze_run(run_dir, steps=STEPS, **SETTINGS)


def counting(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Wrap analyze_run's ``analyze``: the checkpoints it was called on (KeyboardInterrupt at call ``fail_at``)."""
    calls: list[str] = []
    real = dynamics.analyze

    @functools.wraps(real)
    def wrapped(model, *args, **kwargs):
        calls.append(str(model))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(dynamics, "analyze", wrapped)
    return calls


# ------------------------------------------------------------------------------------ dense_steps
def test_dense_steps_checkpoint_every_early_step_and_are_recorded(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["dense_steps"] == DENSE and run["steps_per_epoch"] == 6
    steps = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))
    # every step 0..3, the log-spaced 0, 1, 2, 4 of the first epoch, and the end of training
    assert steps == [0, 1, 2, 3, 4, 6]
    assert [s for s in run["checkpoints"]] == [f"checkpoints/step-{s:07d}.pt" for s in steps]
    assert read_checkpoint(run_dir / "checkpoints" / "step-0000003.pt")["meta"]["step"] == 3


def test_dense_steps_past_the_first_epoch_resume_exactly_from_an_epoch_end(tmp_path):
    kwargs = dict(epochs=2, batch_size=32, dense_steps=7, early_checkpoints=False, checkpoint_every=2, progress=False)
    full = ts.train("mlp-3x32", ID_DATA, out=tmp_path / "full", **kwargs)
    assert [int(p.stem.split("-")[1]) for p in full.checkpoints] == [0, 1, 2, 3, 4, 5, 6, 7, 12]
    # the dense checkpoints hold the weights of their own step
    w = {s: read_checkpoint(tmp_path / "full" / "checkpoints" / f"step-{s:07d}.pt")["model"] for s in (6, 7, 12)}
    first = next(iter(w[6]))
    assert not torch.equal(w[6][first], w[7][first]) and not torch.equal(w[7][first], w[12][first])

    def stop_at_step_7(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped before step 7's checkpoint: resume.pt is step 6's,
        ts.train("mlp-3x32", ID_DATA, out=tmp_path / "cut", on_step=stop_at_step_7, **kwargs)  # the epoch's end
    assert read_checkpoint(tmp_path / "cut" / "resume.pt")["step"] == 6
    resumed = ts.train("mlp-3x32", ID_DATA, out=tmp_path / "cut", resume=True, **kwargs)
    a, b = (read_checkpoint(r.final_checkpoint)["model"] for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(full.history.drop(columns="seconds"), resumed.history.drop(columns="seconds"))


def test_a_run_saved_before_dense_steps_existed_still_resumes(tmp_path):
    out = tmp_path / "old"

    def stop_at_step_8(step, loss):
        if step == 8:
            raise KeyboardInterrupt

    kwargs = dict(epochs=2, batch_size=32, early_checkpoints=False, progress=False)
    with pytest.raises(KeyboardInterrupt):
        ts.train("mlp-3x32", ID_DATA, out=out, on_step=stop_at_step_8, **kwargs)
    state = read_checkpoint(out / "resume.pt")
    del state["config"]["dense_steps"]  # as an older tunnelscope saved it
    torch.save(state, out / "resume.pt")
    resumed = ts.train("mlp-3x32", ID_DATA, out=out, resume=True, **kwargs)
    assert list(resumed.history.epoch) == [1, 2]


def test_negative_dense_steps_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="dense_steps"):
        ts.train("mlp-3x32", ID_DATA, epochs=1, out=tmp_path / "r", dense_steps=-1, progress=False)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ analyze_run
def test_rows_of_each_step_equal_a_direct_analyze_call(run_dir, analysed):
    assert analysed.step_list == STEPS
    assert sorted(analysed.table.step.unique()) == STEPS
    np.testing.assert_array_equal(analysed.table.epoch.to_numpy(), analysed.table.step.to_numpy() / 6)
    options = {k: v for k, v in SETTINGS.items() if k != "progress"}
    for step in STEPS:
        direct = ts.analyze(run_dir / "checkpoints" / f"step-{step:07d}.pt", ID_DATA, progress=False, **options)
        mine = analysed.results(step)
        pd.testing.assert_frame_equal(mine.table.reset_index(drop=True),
                                      direct.table.reindex(columns=COLUMNS).reset_index(drop=True), check_exact=True)
        row = analysed.steps.set_index("step").loc[step]
        assert row[TUNNEL_START] == direct.summary[TUNNEL_START]
        assert [row[f"{TUNNEL_START}_lo"], row[f"{TUNNEL_START}_hi"]] == direct.summary[TUNNEL_START_CI]
        assert row[MEAN_RETAINED] == direct.summary[MEAN_RETAINED]
        assert [row[f"{MEAN_RETAINED}_lo"], row[f"{MEAN_RETAINED}_hi"]] == direct.summary[MEAN_RETAINED_CI]
        ood_row = direct.summary["ood"][0]
        assert row[f"retained@{OOD_DATA}"] == ood_row["retained"]
        assert row["model_accuracy"] == direct.summary["model_accuracy"]


def test_the_saved_directory_reads_back_the_same(run_dir, analysed):
    out = run_dir / "dynamics"
    assert {p.name for p in out.iterdir()} >= {"dynamics.parquet", "steps.csv", "config.json", "figures", "steps"}
    loaded = DynamicsResult.load(out)
    pd.testing.assert_frame_equal(loaded.table, analysed.table, check_exact=True)
    assert loaded.steps[TUNNEL_START].tolist() == analysed.steps[TUNNEL_START].tolist()
    assert loaded.config["steps"] == STEPS and loaded.config["settings"]["data"] == ID_DATA  # run.json's data
    assert loaded.config["run"]["dense_steps"] == DENSE
    assert loaded.summaries == analysed.summaries and loaded.config["heatmaps"] == ["probe_acc", "rank"]
    assert json.loads((out / "config.json").read_text())["kind"] == "dynamics"
    assert (out / "steps.csv").read_text() == analysed.steps.to_csv(index=False)


def test_the_result_keeps_the_experiment_contract(analysed, tmp_path):
    loaded = check_contract(analysed, tmp_path)
    assert loaded.steps.to_csv(index=False) == analysed.steps.to_csv(index=False)  # as computed
    copy = tmp_path / "contract-dynamics"  # saved by the check: the layer table and the figures too
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "dynamics.parquet"), analysed.table, check_exact=True)
    assert {p.name for p in (copy / "figures").iterdir()} == {"heatmaps.png", "heatmaps.svg", "tunnel.png",
                                                              "tunnel.svg"}


def test_a_directory_of_another_kind_is_refused_as_out(run_dir, tmp_path):
    other = tmp_path / "agreement"
    other.mkdir()
    (other / "config.json").write_text('{"kind": "agreement"}')
    with pytest.raises(RunDirectoryError, match="holds a agreement experiment, not a dynamics one"):
        analyze_run(run_dir, steps=[0], out=other, **SETTINGS)
    analysis = tmp_path / "analysis"
    analysis.mkdir()
    (analysis / "summary.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="single analysis"):
        analyze_run(run_dir, steps=[0], out=analysis, **SETTINGS)


def test_heatmap_is_the_table_pivoted(analysed):
    grid = analysed.heatmap("probe_acc", OOD_DATA)
    t = analysed.table
    for step in STEPS:
        for layer in grid.index:
            rows = t[(t.metric == "probe_acc") & (t.dataset == OOD_DATA) & (t.split == "test") & (t.step == step)
                     & (t.layer == layer)]
            assert len(rows) == 1 and grid.loc[layer, step] == rows.value.iloc[0]
    with pytest.raises(KeyError, match="no 'cka'"):
        analysed.heatmap("cka")


# ------------------------------------------------------------------------------------ resuming
def test_a_second_call_analyses_only_the_new_checkpoints(run_dir, analysed, monkeypatch):
    calls = counting(monkeypatch)
    again = analyze_run(run_dir, steps=STEPS, figures=False, **SETTINGS)
    assert calls == []
    pd.testing.assert_frame_equal(again.table, analysed.table, check_exact=True)
    more = analyze_run(run_dir, steps=[*STEPS, 3], figures=False, **SETTINGS)
    assert calls == [str(run_dir / "checkpoints" / "step-0000003.pt")]
    assert more.step_list == [0, 2, 3, 6]
    old = more.table[more.table.step != 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, analysed.table, check_exact=True)


def test_an_interrupted_call_resumes_where_it_stopped(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "dyn"
    calls = counting(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(run_dir, steps=[0, 6], out=out, **SETTINGS)
    assert (out / "steps" / "step-0000000.json").is_file() and not (out / "config.json").exists()
    with pytest.raises(RunDirectoryError, match="partial or interrupted"):
        DynamicsResult.load(out)
    calls.clear()
    result = analyze_run(run_dir, steps=[0, 6], out=out, figures=False, **SETTINGS)
    assert calls == [str(run_dir / "checkpoints" / "step-0000006.pt")]
    assert result.step_list == [0, 6] and (out / "config.json").is_file()


def test_other_settings_are_refused_unless_overwrite(run_dir, analysed, monkeypatch):
    calls = counting(monkeypatch)
    other = {**SETTINGS, "max_samples": 80}
    with pytest.raises(RunDirectoryError, match="other settings.*max_samples"):
        analyze_run(run_dir, steps=[0], **other)
    assert calls == []
    # the same settings in other words (an explicit default, the probe that None stands for) are the same
    from tunnelscope.probes import ProbeConfig

    analyze_run(run_dir, steps=[0], reduce="pool2", probe=ProbeConfig(seed=3), figures=False, **SETTINGS)
    assert calls == []


# ------------------------------------------------------------------------------------ selection
def test_step_selection():
    available = [0, 1, 2, 3, 4, 6]
    assert select_steps(available, "all") == available
    assert select_steps(available, "final") == [6]
    assert select_steps(available, "every:3") == [0, 3, 6]  # indices 0 and 3, and the last
    assert select_steps(available, "2, 0") == [0, 2]
    powers = [0, *(2 ** k for k in range(11))]  # 0, 1, 2, 4, ..., 1024
    # log(1 + step) runs from 0 to log(1025) = 6.93; its midpoint 3.47 is step 31, nearest checkpoint 32
    assert select_steps(powers, "log:3") == [0, 32, 1024]
    assert select_steps(powers, "log:50") == powers
    with pytest.raises(ConfigError, match=r"no checkpoint at steps \[5\]"):
        select_steps(available, [5])
    for bad in ("every:0", "some:3", "first", ""):
        with pytest.raises(ConfigError):
            select_steps(available, bad)


def test_bad_calls_are_refused_before_any_work(run_dir, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    with pytest.raises(RunDirectoryError, match="no checkpoints"):
        analyze_run(tmp_path)
    with pytest.raises(RunDirectoryError, match="training run directory"):
        analyze_run(run_dir, out=run_dir)
    with pytest.raises(ConfigError, match="does not take weights"):
        analyze_run(run_dir, weights="x.pt")
    with pytest.raises(ConfigError):
        analyze_run(run_dir, metrics="probe,no_such_metric")
    assert calls == []


# ------------------------------------------------------------------------------------ figures
def test_heatmaps_have_one_column_per_step_and_the_tunnel_start_overlaid(analysed):
    fig = heatmap_figure(analysed.table, analysed.steps)
    panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("layer")]  # not the colour bars
    probe, rank = presentation("probe_acc").title, presentation("rank").title  # titles from the registry
    assert [ax.get_title() for ax in panels] == [f"ID: {probe}", f"OOD {OOD_DATA}: {probe}", f"ID: {rank}"]
    layers = analysed.table.layer.nunique()
    for ax in panels:
        mesh = ax.collections[0]
        assert mesh.get_array().shape == (layers, len(STEPS))  # layers × steps, one column per step
        edges = mesh.get_coordinates()[0, :, 0]
        assert all(edges[i] < step < edges[i + 1] for i, step in enumerate(STEPS))
        line = ax.get_lines()[0]
        assert list(line.get_xdata()) == STEPS
        assert list(line.get_ydata()) == analysed.steps[TUNNEL_START].astype(float).tolist()
        assert ax.get_xscale() == "function"
    grid = analysed.heatmap("rank")
    np.testing.assert_array_equal(np.asarray(panels[2].collections[0].get_array()), grid.to_numpy())
    tunnel = tunnel_figure(analysed.steps)
    assert len(tunnel.axes) == 3 and all(ax.collections for ax in tunnel.axes[:2])  # interval bands
    assert {p.name for p in analysed.figures} == {"heatmaps.png", "tunnel.png"}


def test_figures_drawn_from_the_saved_tables_show_the_computed_numbers(analysed, tmp_path):
    analysed.save(tmp_path / "saved")
    loaded = DynamicsResult.load(tmp_path / "saved")
    figures = draw_experiment("dynamics", loaded.figure_tables(), loaded.saved_config())
    assert set(figures) == {"figures/heatmaps", "figures/tunnel"}
    panels = [ax for ax in figures["figures/heatmaps"].axes if ax.get_ylabel().startswith("layer")]
    grids = [analysed.heatmap("probe_acc"), analysed.heatmap("probe_acc", OOD_DATA), analysed.heatmap("rank")]
    for ax, grid in zip(panels, grids, strict=True):
        np.testing.assert_array_equal(np.asarray(ax.collections[0].get_array()), grid.to_numpy())
    start, retained, accuracy = figures["figures/tunnel"].axes
    for ax, key in ((start, TUNNEL_START), (retained, MEAN_RETAINED), (accuracy, "model_accuracy")):
        assert list(ax.get_lines()[0].get_xdata()) == STEPS
        np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), analysed.steps[key].astype(float))
    # the heatmap metrics are the config's: without the layer table there is no heatmap
    only_rank = draw_experiment("dynamics", loaded.figure_tables(), {**loaded.saved_config(), "heatmaps": ["rank"]})
    titles = [ax.get_title() for ax in only_rank["figures/heatmaps"].axes if ax.get_ylabel()]
    assert titles == [f"ID: {presentation('rank').title}"]
    assert set(draw_experiment("dynamics", loaded.tables(), loaded.saved_config())) == {"figures/tunnel"}


def test_step_axis_helpers():
    edges = step_edges([0, 1, 3])
    u = np.log1p(edges)
    # the inner edges halve log(1 + step) between neighbours; the outer ones mirror them
    np.testing.assert_allclose(u, [-math.log(2) / 2, math.log(2) / 2, (math.log(2) + math.log(4)) / 2,
                                   math.log(4) + (math.log(4) - math.log(2)) / 2])
    ticks = step_ticks(list(range(17)) + [32, 64, 128, 234, 468], most=8)
    assert ticks[0] == 0 and ticks[-1] == 468 and len(ticks) <= 8


def test_the_command_prints_each_steps_tunnel_start_and_retained_with_intervals(run_dir, analysed, capsys):
    """``tunnelscope dynamics`` on the analysed run (nothing new to analyse): one table row per step
    with the numbers and intervals of steps.csv."""
    from cli_helpers import run_cli

    code, out, err = run_cli(["dynamics", str(run_dir), "--ood", OOD_DATA, "--metrics", "probe,rank",
                              "--resamples", "20", "--max-samples", "100", "--seed", "3",
                              "--steps", ",".join(map(str, STEPS))], capsys)
    assert code == 0, err
    for step, row in analysed.steps.set_index("step").iterrows():
        cells = next(line.split() for line in out.splitlines() if line.split()[:1] == [str(step)])
        assert f"{row[TUNNEL_START]:.0f}" in cells
        assert f"{row[TUNNEL_START + '_lo']:.0f}-{row[TUNNEL_START + '_hi']:.0f}" in cells, cells
        assert f"{row[MEAN_RETAINED + '_lo']:.1f}-{row[MEAN_RETAINED + '_hi']:.1f}" in cells, cells


def test_damaged_step_files_are_analysed_again(run_dir, tmp_path, monkeypatch):
    """A step table that is not parquet and a step record that is not an object (they ended in
    internal errors) count as not done: those steps are analysed again, the others kept."""
    out = tmp_path / "dyn"
    first = analyze_run(run_dir, steps=[0, 2, 6], out=out, figures=False, **SETTINGS)
    (out / "steps" / "step-0000000.parquet").write_bytes(b"\x00" * 64)
    (out / "steps" / "step-0000002.json").write_text("[1, 2]")
    calls = counting(monkeypatch)
    again = analyze_run(run_dir, steps=[0, 2, 6], out=out, figures=False, **SETTINGS)
    assert sorted(calls) == [str(run_dir / "checkpoints" / f"step-000000{s}.pt") for s in (0, 2)]
    pd.testing.assert_frame_equal(again.table, first.table, check_exact=False, rtol=1e-9)
