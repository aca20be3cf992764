"""Forgetting against depth: each run's forgetting against an independent loop over its
checkpoints, the intervals against independent formulas, the tables against the runs' own
files, refusals before training, the contract and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cli_helpers import run_cli
from experiment_contract import check_contract
from tunnelscope import data
from tunnelscope.checkpoint import read_checkpoint
from tunnelscope.errors import ConfigError
from tunnelscope.experiments.continual_depth import ContinualDepthResult, continual_depth, run_label
from tunnelscope.models import build
from tunnelscope.report.experiments import draw_experiment

MODELS = ("mlp-2x16", "mlp-4x16")  # one and three probe points
TASK1 = "digits[classes=0-4]"
TASK2 = "digits[classes=5-9]"
OPTIONS = {"epochs": 2, "finetune_epochs": 0, "batch_size": 32, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> ContinualDepthResult:
    out = tmp_path_factory.mktemp("depth")
    return continual_depth(MODELS, TASK1, TASK2, seeds=(0, 1), out=out, **OPTIONS)


def _task1_correct(run_dir, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample task-1 correctness of M1 and of M2's body under M1's head (the MLP's
    ``classifier``), by a plain forward pass over the whole test split."""
    config = json.loads((run_dir / "config.json").read_text())
    task = data.load(TASK1)
    x, y = next(task.test.batches(len(task.test)))
    m1 = read_checkpoint(config["checkpoints"]["M1"])["model"]
    m2 = read_checkpoint(config["checkpoints"]["M2"])["model"]
    m2_task1 = {k: (m1 if k.startswith("classifier.") else m2)[k] for k in m2}
    out = []
    for state in (m1, m2_task1):
        net = build(model, 5, task.input_shape)
        net.load_state_dict(state)
        with torch.no_grad():
            out.append((net.eval()(x).argmax(1) == y).numpy())
    return out[0], out[1]


def _m2_accuracy(run_dir, model: str, task_spec: str = TASK2) -> float:
    """M2 through its own head on a task's test split, by a plain forward pass."""
    config = json.loads((run_dir / "config.json").read_text())
    task = data.load(task_spec)
    x, y = next(task.test.batches(len(task.test)))
    net = build(model, 5, task.input_shape)
    net.load_state_dict(read_checkpoint(config["checkpoints"]["M2"])["model"])
    with torch.no_grad():
        return float((net.eval()(x).argmax(1) == y).double().mean())


def test_each_runs_forgetting_equals_a_plain_loop_over_its_checkpoints(result, tmp_path_factory):
    runs = result.runs
    assert list(zip(runs["model"], runs["seed"])) == [(m, s) for m in MODELS for s in (0, 1)]
    assert runs["probe_points"].tolist() == [1, 1, 3, 3]
    root = Path(result.config["out"])
    for row in runs.itertuples():
        run_dir = root / row.run
        assert row.run == f"runs/{run_label(row.model, row.seed)}"
        c1, c2 = _task1_correct(run_dir, row.model)
        assert row.task1_M1 == pytest.approx(c1.mean(), abs=1e-12)
        assert row.task1_M2 == pytest.approx(c2.mean(), abs=1e-12)
        assert row.forgetting == pytest.approx(c1.mean() - c2.mean(), abs=1e-12)
        assert row.task2_M2 == pytest.approx(_m2_accuracy(run_dir, row.model), abs=1e-12)
        # the paired bootstrap interval against the normal approximation of a paired difference
        d = c1.astype(float) - c2.astype(float)
        half = 1.96 * d.std(ddof=0) / np.sqrt(len(d))
        assert row.forgetting_lo == pytest.approx(row.forgetting - half, abs=0.35 * half + 2 / len(d))
        assert row.forgetting_hi == pytest.approx(row.forgetting + half, abs=0.35 * half + 2 / len(d))
        forgetting = pd.read_csv(run_dir / "forgetting.csv")
        assert row.probe_forgetting_last == forgetting["forgetting"].iloc[-1]


def test_the_depth_table_is_the_mean_over_seeds_with_a_student_t_interval(result):
    depth = result.depth.set_index("model")
    assert list(depth.index) == list(MODELS) and depth["seeds"].tolist() == [2, 2]
    for model in MODELS:
        values = result.runs.loc[result.runs["model"] == model, "forgetting"].to_numpy()
        lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert depth.loc[model, "forgetting"] == pytest.approx(values.mean(), abs=1e-12)
        assert (depth.loc[model, "forgetting_lo"], depth.loc[model, "forgetting_hi"]) == pytest.approx((lo, hi))
        assert depth.loc[model, "interval"].startswith("Student t over 2 seeds")


def test_one_model_over_seeds_gets_an_interval_over_seeds(tmp_path):
    one = continual_depth(MODELS[:1], TASK1, TASK2, seeds=(0, 1), out=tmp_path / "seeds", **OPTIONS)
    assert len(one.runs) == 2 and one.depth["seeds"].tolist() == [2]
    assert one.depth["interval"].iloc[0].startswith("Student t over 2 seeds")


def test_one_seed_takes_the_runs_bootstrap_interval(tmp_path):
    one = continual_depth(MODELS, TASK1, TASK2, seeds=(3,), out=tmp_path / "one", **OPTIONS)
    pd.testing.assert_series_equal(one.depth["forgetting_lo"], one.runs["forgetting_lo"], check_names=False)
    pd.testing.assert_series_equal(one.depth["forgetting_hi"], one.runs["forgetting_hi"], check_names=False)
    assert one.depth["interval"].str.startswith("bootstrap over task-1 test samples").all()


def test_the_layers_table_stacks_every_runs_forgetting_table(result):
    root = Path(result.config["out"])
    for row in result.runs.itertuples():
        own = pd.read_csv(root / row.run / "forgetting.csv")
        mine = result.layers[(result.layers["model"] == row.model) & (result.layers["seed"] == row.seed)]
        pd.testing.assert_frame_equal(mine.drop(columns=["model", "seed"]).reset_index(drop=True), own)


def test_refused_before_anything_is_trained(tmp_path):
    out = tmp_path / "refused"
    cases = [((MODELS[0],), {}, "at least two models"),
             ((MODELS[0], MODELS[0]), {}, "different models"),
             (MODELS, {"split_at": 1}, "split_at does not apply"),
             (MODELS, {"seeds": (1, 1)}, "different seeds"),
             (MODELS, {"lr": -1.0}, "lr"),
             (("mlp-2x16", "mlp-2x16[]"), {}, "share a folder name"),
             (("mlp-2x16", "mlp-3x16"), {"points": ["blocks.0", "classifier"]}, "is or follows the classifier head"),
             (("mlp-2x16", "mlp-99"), {}, "mlp-99")]
    for models, extra, message in cases:
        with pytest.raises((ConfigError, ValueError), match=message):
            continual_depth(models, TASK1, TASK2, out=out, **{**OPTIONS, **extra})
    assert not out.exists()


def test_the_result_keeps_the_contract_and_its_figure_shows_the_table(result, tmp_path):
    loaded = check_contract(result, tmp_path)
    pd.testing.assert_frame_equal(loaded.depth, result.depth)
    fig = draw_experiment("continual-depth", loaded.tables(), loaded.saved_config())["continual-depth"]
    left = fig.axes[0]
    means = [c.lines[0].get_ydata()[0] for c in left.containers]
    np.testing.assert_array_equal(means, result.depth["forgetting"].to_numpy())
    assert (Path(result.config["out"]) / "continual-depth.png").stat().st_size > 0


def test_the_command_runs_several_models_and_refuses_one_line(tmp_path, capsys):
    args = ["continual", "--model", MODELS[0], "--model", MODELS[1], "--task1", TASK1, "--task2", TASK2,
            "--epochs", 1, "--finetune-epochs", 0, "--batch-size", 32, "--heads", "shared", "--out", tmp_path / "d"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert [row["model"] for row in printed["depth"]] == list(MODELS)
    # one shared head: the forgetting reads M2 on task 1 through M2's own head (per-task: M1's)
    runs = ContinualDepthResult.load(tmp_path / "d").runs
    for row in runs.itertuples():
        assert row.task1_M2 == pytest.approx(_m2_accuracy(tmp_path / "d" / row.run, row.model, TASK1), abs=1e-12)
    code, _, err = run_cli([*args[:-2], "--split-at", 1, "--out", tmp_path / "e"], capsys)
    assert code == 1 and err.count("\n") == 1 and "split_at" in err and not (tmp_path / "e").exists()
