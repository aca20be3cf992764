"""Sweeps: the YAML spec, a tiny grid in local workers (no network service), the same on Ray,
resuming after a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cli_helpers import run_cli
from tunnelscope.errors import SweepConfigError
from tunnelscope.sweep import Store, SweepSpec
from tunnelscope.uncertainty import mean_ci

KEY_COLUMNS = ["cell", "step", "dataset", "split", "point", "metric", "other_point", "reference"]


def tiny_spec(tmp_path, name="tiny", per_class=100, epochs=1, checkpoints="all", **extra):
    spec = {
        "name": name,
        "store": "store",
        "grid": {"depth": [2, 3], "seed": [0, 1]},
        "cell": {"model": "mlp-{depth}x16",
                 "data": f"fashion-mnist[classes=0-2,per_class={per_class},test_per_class=40]",
                 "epochs": epochs, "seed": "{seed}", "batch_size": 64},
        "analysis": {"ood": ["digits[classes=0-2,per_class=30]"], "metrics": "probe,rank", "probe_epochs": 3,
                     "checkpoints": checkpoints, "max_samples": 2000},
        "resources": {"cpus": 1},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_expands_the_grid_and_hashes_cells(tmp_path):
    spec = SweepSpec.load(tiny_spec(tmp_path))
    assert len(spec.cells) == 4 and spec.store == tmp_path / "store"
    cell = spec.cells[0]
    assert cell.train["model"] == "mlp-2x16" and cell.train["seed"] == 0 and isinstance(cell.train["seed"], int)
    assert len({c.key for c in spec.cells}) == 4
    assert SweepSpec.load(tiny_spec(tmp_path)).cells[0].key == cell.key  # content hash: stable
    assert spec.name == "tiny"  # not the last grid variable's name
    raw = yaml.safe_load(tiny_spec(tmp_path).read_text())
    del raw["store"]
    assert SweepSpec.from_dict(raw).store == (Path.cwd() / "runs" / "sweeps" / "tiny").resolve()


@pytest.mark.parametrize("change, message", [
    ({"grid": {"depth": [2]}, "cell": {"model": "mlp-{depth}x16", "dta": "digits"}}, "unknown key 'dta' in 'cell'"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"cell": {"model": "mlp-{height}x16", "data": "digits"}}, "{height} are not grid variables"),
    ({"grid": {"depth": []}}, "non-empty list"),
])
def test_bad_specs_name_the_key(tmp_path, change, message):
    raw = {"name": "x", "grid": {"depth": [2]}, "cell": {"model": "mlp-{depth}x16", "data": "digits"}, **change}
    with pytest.raises(SweepConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        SweepSpec.from_dict(raw)
    if "valid keys" in message or "unknown key" in message:
        with pytest.raises(SweepConfigError, match="valid keys: "):
            SweepSpec.from_dict(raw)


def test_invalid_yaml_and_unreachable_ray_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [1, 2\n")
    code, _, err = run_cli(["sweep", bad], capsys)
    assert code == 1 and "is not valid YAML at line" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(["sweep", tiny_spec(tmp_path), "--address", "127.0.0.1:1"], capsys)
    assert code == 1 and "cannot reach a Ray cluster at '127.0.0.1:1'" in err and len(err.splitlines()) == 1


def test_mean_ci_matches_scipy():
    from scipy import stats

    values = np.array([3.0, 5.0, 4.0, 6.5])
    mean, half = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean()) and half == pytest.approx((high - low) / 2)
    assert mean_ci(np.array([2.0])) == (2.0, 0.0)


def test_tiny_grid_locally_then_nothing_to_do(tmp_path, capsys):
    path = tiny_spec(tmp_path)
    code, out, _ = run_cli(["sweep", path, "--json"], capsys)
    first = json.loads(out)
    assert code == 0 and first["ran"] == 4 and first["failed"] == {}
    spec = SweepSpec.load(path)
    status = Store(spec.store).status(spec)
    assert (status.status == "finished").all()
    code, out, _ = run_cli(["sweep", "collect", path, "--json"], capsys)
    collected = json.loads(out)
    table = pd.read_parquet(collected["out"])
    assert collected["cells"] == 4 and not table.duplicated(KEY_COLUMNS).any()
    # 1 epoch of 300 samples in full batches of 64 = 4 steps: checkpoints at 0, 1, 2 (log-spaced) and 4 (final)
    assert sorted(table.step.unique()) == [0, 1, 2, 4]
    assert {"var_depth", "var_seed"} <= set(table.columns)
    figures = {p.name for p in (spec.store / "figures").glob("*.png")}
    assert "by-depth.png" in figures and sum(f.startswith("dynamics-") for f in figures) == 4
    assert (spec.store / "report.html").is_file()
    assert "What explains transfer across the sweep" in (spec.store / "report.html").read_text()
    check_ood_level_collect(path, spec, table, capsys)
    code, out, _ = run_cli(["sweep", path, "--json"], capsys)
    again = json.loads(out)
    assert code == 0 and again["ran"] == 0 and again["already_finished"] == 4


def check_ood_level_collect(path, spec, layers: pd.DataFrame, capsys) -> None:
    """``collect --level ood``: one row per cell x step x OOD set, each value traced to its source."""
    import torch

    code, out, _ = run_cli(["sweep", "collect", path, "--level", "ood", "--json"], capsys)
    collected = json.loads(out)
    ood = pd.read_parquet(collected["out"])
    assert code == 0 and collected["out"].endswith("collected-ood.parquet") and len(ood) == 16  # 4 cells x 4 steps
    assert "--vars depth" in collected["explain"]
    assert "--vars overparam" not in collected["explain"]  # a grid over depth alone: γ moves with depth (collinear)
    assert "--vars parameters" not in collected["explain"]  # γ stands for it (collinear)
    assert "--cluster cell" in collected["explain"]  # a cell's OOD rows share its model
    name = "digits[classes=0-2,per_class=30]"
    for row in ood.itertuples():
        summary = json.loads((spec.store / "results" / row.cell / f"step-{row.step:07d}.json").read_text())
        entry = next(e for e in summary["ood"] if e["name"] == name)
        assert row.ood == name and row.retained == pytest.approx(entry["retained"])
        assert row.alignment == pytest.approx(entry["alignment"])
        probes = layers[(layers.cell == row.cell) & (layers.step == row.step) & (layers.metric == "probe_acc")
                        & (layers.split == "test")]
        last = probes[probes.layer == probes.layer.max()].set_index("dataset")["value"]
        assert row.ood_acc == pytest.approx(last[name]) and row.id_acc == pytest.approx(last[row.data])
        cell = next(c for c in spec.cells if c.key == row.cell)
        state = torch.load(spec.store / "runs" / cell.train_key / "checkpoints" / f"step-{row.step:07d}.pt",
                           weights_only=True)["model"]
        parameters = sum(v.numel() for k, v in state.items() if "running_" not in k and "num_batches" not in k)
        assert row.parameters == parameters and row.train_samples == 300  # 3 classes x 100
        assert row.overparam == pytest.approx(parameters / 300)
        assert (row.family, row.kind, row.depth, row.width) == ("mlp", "MLP", row.var_depth, 16)
        assert (row.resolution, row.id_classes, row.augmentation) == (28, 3, "none")


def test_a_worker_killed_mid_cell_then_rerun_gives_a_complete_table(tmp_path):
    path = tiny_spec(tmp_path, name="kill", per_class=400, epochs=2, checkpoints="final")
    spec = SweepSpec.load(path)
    store = Store(spec.store)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tunnelscope.cli", "sweep", str(path), "--max-concurrent", "1", "--quiet"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, finished_before = None, {}
    deadline = time.time() + 240
    try:
        while killed is None and time.time() < deadline and driver.poll() is None:
            records = [store.record(c.key) for c in spec.cells]
            done = [r for r in records if r and r["status"] == "finished"]
            running = [r for r in records if r and r["status"] == "running"]
            if done and running:
                finished_before = {
                    r["key"]: pd.read_parquet(next((spec.store / "results" / r["key"]).glob("*.parquet")))
                    for r in done
                }
                killed = running[0]
                os.kill(killed["pid"], signal.SIGKILL)
            time.sleep(0.05)
        driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert killed is not None, "no cell was caught running after another had finished"
    assert driver.returncode == 0  # Ray retried the killed task on a new worker, which resumed the cell
    assert store.record(killed["key"])["status"] == "finished" and store.record(killed["key"])["pid"] != killed["pid"]
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (store.status(spec).status == "finished").all()
    table = store.collect(spec)
    assert not table.duplicated(KEY_COLUMNS).any()
    assert sorted(table.cell.unique()) == sorted(c.key for c in spec.cells)
    cells = {c.key: c for c in spec.cells}
    points = table.groupby("cell").point.nunique()
    assert all(points[key] == cells[key].variables["depth"] for key in cells)  # mlp-D: D-1 points and the input
    assert (table.groupby("cell").size() / points).nunique() == 1  # the same rows per point in every cell
    for key, before in finished_before.items():
        after = table[table.cell == key].reset_index(drop=True)
        pd.testing.assert_frame_equal(after, before.reset_index(drop=True))
    # the killed cell, resumed, has the numbers of an uninterrupted run of the same cell
    from tunnelscope.sweep.cell import run_cell

    # on the worker's thread count (the spec's cpus): the same float operations, so the same numbers exactly
    threads = int(spec.resources["cpus"])
    clean = run_cell(cells[killed["key"]], str(tmp_path / "clean"), "cpu", threads=threads)
    assert clean["status"] == "finished"
    reference = Store(tmp_path / "clean").collect(spec)
    resumed = table[table.cell == killed["key"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump({
        "name": "fail", "store": "store", "grid": {"classes": ["0-2", "0-42"]},
        "cell": {"model": "mlp-2x16", "data": "fashion-mnist[classes={classes},per_class=50,test_per_class=20]",
                 "epochs": 1},
        "analysis": {"metrics": "rank", "checkpoints": "final"},
    }))
    code, out, err = run_cli(["sweep", path], capsys)
    assert code == 1 and "1 cells run" not in out and "2 cells run, 0 already finished, 1 failed" in out
    assert "failed" in out and "0-42" not in out.split("failed", 1)[0]
    (line,) = err.strip().splitlines()  # one error line on stderr, even with -q
    assert line.startswith("tunnelscope: error: 1 of 2 cells failed; cell ") and "sweep status" in line
    code, out, err = run_cli(["sweep", path, "-q"], capsys)  # the failed cell is tried again, and fails again
    assert code == 1 and out == "" and err.startswith("tunnelscope: error: 1 of 2 cells failed")
    spec = SweepSpec.load(path)
    status = Store(spec.store).status(spec).set_index("classes")
    assert status.loc["0-2", "status"] == "finished" and status.loc["0-42", "status"] == "failed"
    assert "classes" in status.loc["0-42", "error"]
    html = (spec.store / "report.html").read_text()
    assert "1 of 2 cells finished, 1 failed" in html


@pytest.mark.parametrize("name, cells", [("mlp-depth-width.yaml", 12), ("harun-vgg-resnet-cifar.yaml", 24),
                                         ("mlp-dynamics.yaml", 2), ("analyse-models.yaml", 5)])
def test_the_examples_parse(name, cells):
    from pathlib import Path

    spec = SweepSpec.load(Path(__file__).parents[2] / "examples" / name)
    assert len(spec.cells) == cells and spec.store.parts[-3:-1] == ("runs", "sweeps") and ".." not in spec.store.parts


@pytest.mark.parametrize("change, message", [
    ({"cell": ["a"]}, "'cell' in the sweep must be a mapping"),
    ({"cell": {"model": "mlp-{depth}x16", "data": "digits", "lr": "fast"}}, "'cell.lr' must be a finite number"),
    ({"cell": {"model": "mlp-{depth}x16", "data": "digits", "checkpoint_every": "1e400"}},
     "'cell.checkpoint_every' must be a finite integer"),
    ({"resources": {"cpus": float("inf")}}, "'resources.cpus' .* must be a number > 0, not inf"),
    ({"cell": {"model": "mlp-{depth}x16", "data": "digits"}, "analysis": {"ood": ["digits"]}},
     "OOD set 'digits' is the ID data itself"),
    ({"analysis": {"checkpoints": "finall"}}, "'analysis.checkpoints' must be final, all or a list"),
    ({"grid": {"depth": [2, 2]}}, "lists a value twice"),
    ({"grid": {"depth": [[2], [3]]}}, "takes single values"),
])
def test_bad_values_are_refused_when_the_sweep_is_read(change, message):
    raw = {"name": "x", "grid": {"depth": [2, 3]}, "cell": {"model": "mlp-{depth}x16", "data": "digits"}, **change}
    with pytest.raises(SweepConfigError, match=message.replace("(", r"\(")):
        SweepSpec.from_dict(raw)


def test_yaml_numbers_written_as_strings_are_numbers_and_hash_alike():
    base = {"name": "x", "grid": {"depth": [2]}}
    a = SweepSpec.from_dict({**base, "cell": {"model": "mlp-{depth}x16", "data": "digits", "lr": "1e-3", "epochs": 10}})
    b = SweepSpec.from_dict({**base, "cell": {"model": "mlp-{depth}x16", "data": "digits", "lr": 0.001,
                                              "epochs": 10.0}})
    assert a.cells[0].train["lr"] == 0.001 and a.cells[0].key == b.cells[0].key


def test_report_of_a_statistics_only_sweep_and_x_order():
    from tunnelscope.report.sweep import aggregate_figures

    spec = SweepSpec.from_dict({"name": "x", "grid": {"depth": [4, 8, 16], "width": [8, 32]},
                                "cell": {"model": "mlp-{depth}x{width}", "data": "digits"}})
    rows = [{"cell": c.key, "step": 1, "var_depth": c.variables["depth"], "var_width": c.variables["width"],
             "mean_retained": float(c.variables["depth"])} for c in spec.cells
            if not (c.variables["depth"] == 4 and c.variables["width"] == 8)]
    figs = aggregate_figures(spec, pd.DataFrame(rows))
    labels = [t.get_text() for t in figs["by-depth"].axes[0].get_xticklabels()]
    assert labels == ["4", "8", "16"]
    stats_only = pd.DataFrame([{k: v for k, v in r.items() if k != "mean_retained"} for r in rows])
    assert aggregate_figures(spec, stats_only) == {}


def test_cells_that_differ_only_in_their_analysis_share_one_training_run(tmp_path):
    from tunnelscope.sweep.cell import run_cells

    spec = SweepSpec.from_dict({
        "name": "x", "store": str(tmp_path / "store"), "grid": {"metrics": ["rank", "probe"]},
        "cell": {"model": "mlp-2x16", "data": "fashion-mnist[classes=0-2,per_class=50,test_per_class=20]",
                 "epochs": 1},
        "analysis": {"metrics": "{metrics}", "probe_epochs": 1}})
    a, b = spec.cells
    assert a.key != b.key and a.train_key == b.train_key
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        records = run_cells(spec.cells, str(spec.store), "cpu", threads=1)
        assert torch.get_num_threads() == 3  # the worker's thread count holds for the cell only
    finally:
        torch.set_num_threads(before)
    assert [r["status"] for r in records] == ["finished", "finished"]
    assert [p.name for p in (spec.store / "runs").iterdir()] == [a.train_key]
    run = json.loads((spec.store / "runs" / a.train_key / "run.json").read_text())
    assert run["status"] == "finished" and len(Store(spec.store).collect(spec).cell.unique()) == 2


def test_cells_run_as_tasks_on_a_ray_cluster(tmp_path):
    """--address: the same cells as Ray tasks (here an in-process Ray, reached with address 'auto')."""
    import ray

    from tunnelscope.sweep.run import run_sweep

    path = tiny_spec(tmp_path, name="onray", checkpoints="final")
    spec = SweepSpec.load(path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        outcome = run_sweep(spec, address="auto", progress=False)
    finally:
        ray.shutdown()
    assert len(outcome.ran) == 4 and outcome.failed == {}
    assert (Store(spec.store).status(spec).status == "finished").all()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(8)]  # 10^9 values when expanded
    lines += ["name: bomb", "cell: {model: mlp-2x8, data: digits}", "grid: {depth: *i}"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SweepConfigError, match="expands to more than 100,000 values"):  # not minutes expanding
        SweepSpec.load(path)


def test_without_ray_an_address_is_refused_in_one_line(monkeypatch):
    from tunnelscope.errors import RayError
    from tunnelscope.sweep.run import init_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [ray] extra were not installed
    with pytest.raises(RayError, match=r"pip install 'tunnelscope\[ray\]'"):
        init_ray("127.0.0.1:6379")


def test_collect_over_a_damaged_step_table_says_how_to_redo_it(tmp_path, capsys):
    path = tiny_spec(tmp_path, name="damaged", checkpoints="final")
    spec = SweepSpec.load(path)
    code, _, err = run_cli(["sweep", path, "-q"], capsys)
    assert code == 0, err
    store = Store(spec.store)
    cell = spec.cells[0]
    (step,) = store.done_steps(cell.key)
    store.step_path(cell.key, step, "parquet").write_bytes(b"\x00" * 32)
    for level in ("layer", "ood"):
        code, _, err = run_cli(["sweep", "collect", path, "--level", level], capsys)
        assert code != 0 and err.count("\n") == 1 and "is damaged" in err and "run the sweep again" in err
