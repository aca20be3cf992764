"""Forgetting against depth: the continual-learning experiment over several models in one call.

Masarczyk et al. 2023 (by the summary docs/continual.md cites) report that deeper networks,
whose tunnels are longer, forget the first task more, and shallower ones much less. This
repeats :func:`~tunnelscope.experiments.continual.continual` for every model (typically one
architecture at several depths, e.g. ``mlp-4x128``, ``mlp-8x128``, ``mlp-12x128``) and seed,
each into its own folder under ``out/runs``, and gathers:

- ``runs``: one row per (model, seed): the model's own forgetting of task 1 (task-1 test
  accuracy of M1 minus that of M2, each through the network's own head for task 1) with a
  paired bootstrap interval over task-1 test samples, task-2 accuracy, M1's tunnel start and
  the probe forgetting at the last and the split point;
- ``depth``: one row per model: the mean forgetting over seeds with its interval (the run's
  bootstrap interval for one seed, a Student-t interval over seeds for several);
- ``layers``: every run's per-layer forgetting table, stacked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .. import data as data_mod
from ..errors import ConfigError
from ..rundir import claim
from ..specs import safe_name
from ..uncertainty import DEFAULT_RESAMPLES, LEVEL, interval, mean_ci, resampled_curves
from ..versions import package_versions
from .base import ExperimentResult
from .continual import TRAIN_OPTIONS, ContinualResult, check_model, continual, training_recipes

RUNS_DIR = "runs"
RUN_COLUMNS = ("model", "seed", "probe_points", "tunnel_start_M1", "split_layer", "task1_M1", "task1_M2",
               "forgetting", "forgetting_lo", "forgetting_hi", "task2_M2", "probe_forgetting_split",
               "probe_forgetting_last", "run")
DEPTH_COLUMNS = ("model", "probe_points", "seeds", "forgetting", "forgetting_lo", "forgetting_hi", "interval",
                 "task1_M1", "task2_M2")


@dataclass
class ContinualDepthResult(ExperimentResult):
    """Forgetting against depth (see the module docstring): tables ``runs``, ``depth`` and
    ``layers``; ``config`` holds the shared settings, the models, seeds and each run's folder."""

    kind: ClassVar[str] = "continual-depth"
    table_files: ClassVar[dict[str, str]] = {"runs": "depth_runs.csv", "depth": "depth.csv",
                                              "layers": "depth_layers.csv"}

    runs: pd.DataFrame
    depth: pd.DataFrame
    layers: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, pd.DataFrame]:
        """``runs``, ``depth`` and ``layers``."""
        return {"runs": self.runs, "depth": self.depth, "layers": self.layers}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> ContinualDepthResult:
        """The result whose tables and config were saved."""
        return cls(tables["runs"], tables["depth"], tables["layers"], config)


def run_label(model: str, seed: int) -> str:
    """The folder name of one run under ``out/runs``: the spec made file-safe
    (:func:`~tunnelscope.specs.safe_name`) and the seed."""
    return f"{safe_name(model)}-seed{seed}"


def _run_row(result: ContinualResult, seed: int, resamples: int, label: str) -> dict[str, Any]:
    """One row of the ``runs`` table from the run's per-sample task-1 correctness of M1 and M2
    (``result.task1_correct``, ``(M, 2)``, measured by the run itself); the forgetting's
    interval is a paired bootstrap over task-1 test samples (the same draw for M1 and M2)."""
    correct = result.task1_correct
    if correct is None:
        raise ConfigError("a continual result read back from disk has no per-sample correctness; run it again")
    curves, _ = resampled_curves([correct], resamples, np.random.default_rng(seed))
    lo, hi = interval((curves[:, 0] - curves[:, 1])[:, None])
    task1_m1, task1_m2 = correct.mean(axis=0)
    swaps, layers = result.swaps, result.forgetting
    task2 = swaps["task2_acc"].to_numpy(dtype=float)[swaps.index.get_loc("E2+T2")]
    return {"model": result.config["model"], "seed": seed, "probe_points": len(layers),
            "tunnel_start_M1": result.config["split"].get("tunnel_start_M1"), "split_layer": result.split_layer,
            "task1_M1": float(task1_m1), "task1_M2": float(task1_m2), "forgetting": float(task1_m1 - task1_m2),
            "forgetting_lo": float(lo[0]), "forgetting_hi": float(hi[0]), "task2_M2": float(task2),
            "probe_forgetting_split": float(layers["forgetting"].iloc[result.split_layer - 1]),
            "probe_forgetting_last": float(layers["forgetting"].iloc[-1]), "run": f"{RUNS_DIR}/{label}"}


def _by_model(runs: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """One row per model, in the order given: mean forgetting over seeds and its interval."""
    rows = []
    for model in models:
        mine = runs[runs["model"] == model]
        if len(mine) == 1:
            mean, lo, hi = mine.iloc[0][["forgetting", "forgetting_lo", "forgetting_hi"]]
            how = f"bootstrap over task-1 test samples ({LEVEL:.0%})"
        else:
            mean, half = mean_ci(mine["forgetting"])
            lo, hi = mean - half, mean + half
            how = f"Student t over {len(mine)} seeds ({LEVEL:.0%})"
        rows.append({"model": model, "probe_points": int(mine["probe_points"].iloc[0]), "seeds": len(mine),
                     "forgetting": float(mean), "forgetting_lo": float(lo), "forgetting_hi": float(hi),
                     "interval": how, "task1_M1": float(mine["task1_M1"].mean()),
                     "task2_M2": float(mine["task2_M2"].mean())})
    return pd.DataFrame(rows, columns=list(DEPTH_COLUMNS))


def _check(models: Sequence[str], seeds: Sequence[int], task1: str, options: Mapping[str, Any]) -> None:
    """Refuse, before anything is trained or written, what cannot give a forgetting table."""
    if len(set(models)) != len(models) or len(set(seeds)) != len(seeds) or not seeds or min(seeds) < 0:
        raise ConfigError(f"give different models and different seeds >= 0, got models {list(models)} and seeds "
                          f"{list(seeds)}")
    if len(models) < 2 and len(seeds) < 2:
        raise ConfigError("give at least two models (forgetting against depth) or two seeds (an interval over "
                          "seeds); for one run use continual()")
    labels = [run_label(model, 0) for model in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two model specs share a folder name after cleaning ({labels}); give distinct specs")
    if options.get("split_at") is not None:
        raise ConfigError("split_at does not apply over several runs: each model is split at its own tunnel start")
    training_recipes(options.get("epochs", 10), options.get("finetune_epochs", 5),
                     {k: v for k, v in options.items() if k in TRAIN_OPTIONS})
    task = data_mod.load(task1, root=options.get("data_root"))
    for model in models:
        check_model(model, task, options.get("points", "blocks"), options.get("heads", "per-task"))


def continual_depth(models: Sequence[str], task1: str, task2: str, seeds: Sequence[int] = (0,),
                    out: str | Path = "runs/continual-depth", *, resamples: int = DEFAULT_RESAMPLES,
                    progress: bool | None = None, overwrite: bool = False,
                    **options: Any) -> ContinualDepthResult:
    """Run :func:`~tunnelscope.experiments.continual.continual` for every model in ``models``
    and seed in ``seeds`` (``out/runs/<model>-seed<seed>``) and tabulate forgetting against
    depth (module docstring). ``options`` are ``continual``'s (``epochs``, ``finetune_epochs``,
    ``points``, ``heads``, ``device``, ``probe``, ``max_train``, ``max_test``, ``data_root`` and
    the training options), shared by every run; ``split_at`` is refused (each model splits at
    its own tunnel start). One model over several seeds gives its forgetting with an interval
    over seeds. Every model and option is checked before anything is trained or written.
    ``out`` holding a finished or partial experiment is refused unless ``overwrite``.
    """
    tic = time.perf_counter()
    _check(models, seeds, task1, options)
    folder = claim(out, ContinualDepthResult.kind, overwrite, files=(RUNS_DIR,))
    rows: list[dict[str, Any]] = []
    layer_tables: list[pd.DataFrame] = []
    settings: dict[str, Any] = {}
    for model in models:
        for seed in seeds:
            label = run_label(model, seed)
            run = continual(model, task1, task2, seed=seed, out=folder / RUNS_DIR / label, progress=progress,
                            overwrite=overwrite, **options)
            rows.append(_run_row(run, seed, resamples, label))
            layer_tables.append(run.forgetting.assign(model=model, seed=seed))
            settings = settings or run.config
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    layers = pd.concat(layer_tables, ignore_index=True)[["model", "seed", "layer", "point", "acc_M1", "acc_M2",
                                                         "forgetting"]]
    config = {"experiment": "forgetting against depth: continual learning over several models (Masarczyk et al. "
                            "2023)", "out": str(folder), "models": list(models), "seeds": list(seeds),
              "task1": task1, "task2": task2,
              "runs": {row["run"]: {"model": row["model"], "seed": row["seed"]} for row in rows},
              "forgetting": "task-1 test accuracy of M1 minus that of M2, each through the network's head for task 1",
              "interval": {"level": LEVEL, "resamples": resamples, "per_run": "paired bootstrap over task-1 test "
                           "samples", "per_model": "the run's bootstrap for one seed, Student t over seeds for more"},
              "shared": {k: settings[k] for k in ("heads", "epochs", "finetune_epochs", "batch_size", "recipe",
                                                  "points", "probe", "probe_samples", "tasks")},
              "device": settings.get("device"), "versions": package_versions(), "seconds": time.perf_counter() - tic}
    result = ContinualDepthResult(runs, _by_model(runs, models), layers, config)
    result.save(folder, overwrite=True)
    return result


__all__ = ["ContinualDepthResult", "continual_depth", "run_label"]
