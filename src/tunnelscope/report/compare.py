"""Several saved runs side by side: one figure (layers by index and by relative depth) and
tables: a row of headline numbers per run (``runs.csv``), the long per-layer table
(``compare.csv``), and, where runs differ only in their training seed, the mean and 95%
Student-t interval over those seeds (``seeds.csv``; drawn as bands in the figure)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import ConfigError
from ..io import atomic_write
from ..results import Results
from ..rundir import COMPARE_FILE, RUNS_FILE, SEEDS_FILE
from ..summary import (
    BEST_TRANSFER_LAYER,
    EFFECTIVE_DEPTH,
    MEAN_RETAINED,
    MODEL_ACCURACY,
    POINTS,
    TUNNEL_LENGTH,
    TUNNEL_START,
)
from ..uncertainty import mean_ci
from .figures import compare_figure, save_figures

HEADLINE = (POINTS, TUNNEL_START, TUNNEL_LENGTH, BEST_TRANSFER_LAYER, EFFECTIVE_DEPTH, MEAN_RETAINED)
SPREAD = (TUNNEL_START, MEAN_RETAINED, "final ID probe accuracy", MODEL_ACCURACY)


def seed_group(run: Results) -> str:
    """What a run is apart from its training seed: model, training data, step, analysis settings.
    Runs with the same group and different seeds are repeats of one experiment."""
    model = run.config.get("model", {})
    probes = run.config.get("probes", {}).get("probe", {})
    key = {"model": run.summary.get("model"), "trained_on": model.get("data_spec"), "step": model.get("step"),
           "data": run.summary.get("data"), "ood": run.config.get("ood"), "metrics": run.config.get("metrics"),
           "protocol": probes.get("protocol"), "points": run.config.get("points_set"),
           "reduce": run.config.get("reduce")}
    return json.dumps(key, sort_keys=True, default=str)


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path,
                 labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Load ``run_dirs``, write ``compare.png``/``.svg``, ``compare.csv``, ``runs.csv`` and (when
    some runs repeat one experiment with other training seeds) ``seeds.csv`` into ``out``.

    Returns the per-run summary table and the written paths.
    """
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    runs = [Results.load(d) for d in run_dirs]
    if labels is not None and len(labels) != len(runs):
        raise ConfigError(f"got {len(labels)} labels for {len(runs)} runs; give one --label per run or none")
    if labels is None:
        labels = [f"{r.summary.get('model', '?')} ({Path(d).name})" for r, d in zip(runs, run_dirs)]
        if len(set(labels)) < len(labels):  # runs/a/analysis and runs/b/analysis: name them by their path
            labels = [f"{r.summary.get('model', '?')} ({d})" for r, d in zip(runs, run_dirs)]
    labels = list(labels)
    if len(set(labels)) < len(labels):
        raise ConfigError(f"labels must differ, got {labels}; give one distinct --label per run")
    rows = []
    for label, run in zip(labels, runs):
        row = {"run": label, "model": run.summary.get("model"), "data": run.summary.get("data"),
               "train_seed": run.config.get("model", {}).get("train_seed"), "group": seed_group(run)}
        row.update({k: run.summary.get(k) for k in HEADLINE})
        row[MODEL_ACCURACY] = run.summary.get(MODEL_ACCURACY)
        if run.has("probe_acc"):
            row["final ID probe accuracy"] = float(run.curve("probe_acc").iloc[-1])
        rows.append(row)
    summary = pd.DataFrame(rows)
    seeds = seed_table(summary)
    long = pd.concat([r.table.assign(run=label) for r, label in zip(runs, labels)], ignore_index=True)
    out = Path(out)
    repeated = {g for g in summary.group if (summary.group == g).sum() > 1}
    bands = [g if g in repeated else None for g in summary.group]  # by position: labels need not be keys
    paths = save_figures({"compare": compare_figure(runs, labels, bands)}, out)
    paths.append(out / "compare.svg")
    atomic_write(out / COMPARE_FILE, lambda h: long.to_csv(h, index=False))
    atomic_write(out / RUNS_FILE, lambda h: summary.drop(columns="group").to_csv(h, index=False))
    paths += [out / COMPARE_FILE, out / RUNS_FILE]
    if not seeds.empty:
        atomic_write(out / SEEDS_FILE, lambda h: seeds.to_csv(h, index=False))
        paths.append(out / SEEDS_FILE)
    return summary.drop(columns="group"), paths


def seed_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per group of runs that differ only in their training seed (two or more): the number of
    seeds, and the mean and 95% Student-t half-width of each headline number over them."""
    rows = []
    for _group, members in summary.groupby("group", sort=False):
        if len(members) < 2:
            continue
        row = {"model": members.model.iloc[0], "data": members.data.iloc[0], "runs": len(members),
               "seeds": ", ".join(str(s) for s in members.train_seed)}
        for column in SPREAD:
            if column in members:
                mean, half = mean_ci(pd.to_numeric(members[column], errors="coerce").to_numpy())
                row[f"{column} mean"], row[f"{column} ±95%"] = mean, half
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["compare_runs", "seed_group", "seed_table"]
