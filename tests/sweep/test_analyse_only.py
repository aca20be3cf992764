"""Sweeps that analyse existing models without training (``cell.train: false``): checkpoints
and random-init hub specs × data, as Ray tasks, resumable after a killed driver, ending in the
table that ``explain`` reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from cli_helpers import run_cli
from tunnelscope.errors import SweepConfigError
from tunnelscope.sweep import Store, SweepSpec

DATA = "fashion-mnist[classes=0-4,per_class=60,test_per_class=30]"
OOD = "fashion-mnist[classes=5-9,per_class=40,test_per_class=20]"
OOD2 = "digits[size=28]"
KEYS = ["cell", "step", "dataset", "split", "point", "metric", "other_point", "reference"]


def _spec(tmp_path, models: list[str], name: str = "asis", **analysis) -> tuple:
    settings = {"ood": [OOD, OOD2], "metrics": "probe,rank", "max_samples": 1000, **analysis}
    raw = {"name": name, "store": "store", "grid": {"model": models},
           "cell": {"train": False, "model": "{model}", "data": DATA, "seed": 0}, "analysis": settings,
           "resources": {"cpus": 1, "retries": 0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


@pytest.fixture(scope="module")
def checkpoints(trained_mlp) -> list[str]:
    """Two checkpoints of the suite's trained MLP (its first and its last)."""
    from tunnelscope.rundir import checkpoints as listed

    result, _ = trained_mlp
    found = listed(result.final_checkpoint.parent.parent)
    steps = sorted(found)
    return [str(found[steps[0]]), str(found[steps[-1]])]


def test_six_models_on_ray_one_table_that_explain_reads(checkpoints, tmp_path, capsys):
    import ray

    from tunnelscope.sweep.run import run_sweep

    models = [*checkpoints, "mlp-3x16", "mlp-5x32", "timm:resnet10t", "timm:mobilenetv3_small_050"]
    path, _ = _spec(tmp_path, models)
    spec = SweepSpec.load(path)
    assert [c.trains for c in spec.cells] == [False] * 6
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        outcome = run_sweep(spec, address="auto", progress=False)
    finally:
        ray.shutdown()
    assert outcome.failed == {} and len(outcome.ran) == 6
    store = Store(spec.store)
    assert not (spec.store / "runs").exists() or not any((spec.store / "runs").glob("*/checkpoints"))  # no training
    table = store.collect(spec)
    assert sorted(table.cell.unique()) == sorted(c.key for c in spec.cells)
    assert not table.duplicated(KEYS).any()
    steps = table.groupby("cell").step.first()
    by_model = {c.variables["model"]: c.key for c in spec.cells}
    assert steps[by_model[checkpoints[-1]]] > 0 and steps[by_model["mlp-3x16"]] == 0  # a checkpoint keeps its step
    code, out, err = run_cli(["sweep", "collect", str(path), "--level", "ood", "--out", str(tmp_path / "ood.csv")],
                             capsys)
    assert code == 0, err
    ood = pd.read_csv(tmp_path / "ood.csv")
    assert len(ood) == 12 and sorted(ood["ood"].unique()) == sorted([OOD, OOD2])  # model x OOD set
    trained = ood[ood.cell == by_model[checkpoints[-1]]].iloc[0]
    assert (trained.family, trained.depth, trained.width) == ("mlp", 6, 64)  # read from the checkpoint's spec
    assert set(ood[ood.cell == by_model["timm:resnet10t"]].family) == {"timm"}
    code, out, err = run_cli(["explain", str(tmp_path / "ood.csv"), "--target", "retained", "--vars", "family",
                              "--out", str(tmp_path / "explain")], capsys)
    assert code == 0, err
    assert (tmp_path / "explain" / "explain.png").is_file()


def test_a_killed_driver_then_rerun_leaves_every_model_once(checkpoints, tmp_path):
    models = [checkpoints[-1], "mlp-3x16", "mlp-4x16"]
    path, _ = _spec(tmp_path, models, name="killed", ood=[], metrics="rank")
    spec = SweepSpec.load(path)
    store = Store(spec.store)
    command = [sys.executable, "-m", "tunnelscope.cli", "sweep", str(path), "--max-concurrent", "1", "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    try:
        while time.time() < deadline and driver.poll() is None:
            if any((store.record(c.key) or {}).get("status") == "finished" for c in spec.cells):
                driver.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL, "the driver finished before it could be killed"
    finished_before = sum((store.record(c.key) or {}).get("status") == "finished" for c in spec.cells)
    assert 1 <= finished_before < len(models)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (store.status(spec).status == "finished").all()
    table = store.collect(spec)
    assert not table.duplicated(KEYS).any()
    assert sorted(table.cell.unique()) == sorted(c.key for c in spec.cells)
    rows_per_point = table.groupby("cell").size() / table.groupby("cell").point.nunique()
    assert rows_per_point.nunique() == 1  # every model complete: the same rows at each of its points


def test_analyse_only_cells_refuse_training_keys_and_missing_checkpoints(tmp_path):
    path, raw = _spec(tmp_path, ["mlp-3x16"])
    raw["cell"]["epochs"] = 3
    with pytest.raises(SweepConfigError, match="train: false but training keys epochs"):
        SweepSpec.from_dict(raw, path)
    _, raw = _spec(tmp_path, ["no/such/checkpoint.pt"])
    with pytest.raises(SweepConfigError, match="does not exist"):
        SweepSpec.from_dict(raw, path)
    _, raw = _spec(tmp_path, ["mlp-3x16"])
    raw["cell"]["train"] = "no"
    with pytest.raises(SweepConfigError, match="must be true or false"):
        SweepSpec.from_dict(raw, path)


def test_a_relative_checkpoint_is_found_from_the_sweep_file(checkpoints, tmp_path):
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(checkpoints[-1], tmp_path / "models" / "final.pt")
    path, _ = _spec(tmp_path, ["models/final.pt"])
    cell = SweepSpec.load(path).cells[0]
    assert cell.train["model"] == str((tmp_path / "models" / "final.pt").resolve())
