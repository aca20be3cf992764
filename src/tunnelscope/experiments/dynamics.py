"""The dynamics of one training run: :func:`analyze_run` analyses a run's checkpoints one by one.

Masarczyk et al. (2023) report that the tunnel forms early in training. ``analyze_run``
runs :func:`tunnelscope.analyze` on each selected checkpoint of a run directory written by
:func:`tunnelscope.train`, and gathers the tables (with ``step`` and ``epoch`` columns) and
the per-checkpoint headline numbers (tunnel start with its interval, mean % OOD retained,
the model's accuracy, effective depth ...) into a :class:`DynamicsResult`.

The output directory (``RUN_DIR/dynamics`` by default)::

    steps/step-NNNNNNN.parquet   one checkpoint's table, written as soon as it is analysed
    steps/step-NNNNNNN.json      its summary, settings and checkpoint digest; written last, it
                                 marks the checkpoint done: a second call skips it
    dynamics.parquet             every analysed checkpoint's table, with step and epoch columns
    steps.csv                    one row per checkpoint: the summary's numbers, intervals as "KEY lo/hi"
    figures/                     heatmaps and tunnel (PNG and SVG)
    config.json                  the kind ("dynamics"), the settings, the run, the steps; written
                                 last (a directory without it holds a partial or interrupted analysis)

The last four are :meth:`DynamicsResult.save` (the :class:`~.base.ExperimentResult` contract:
its table is ``steps``; ``dynamics.parquet`` is the layer table its heatmaps are drawn from).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import data as data_mod
from ..device import resolve_device
from ..engine.analyze import analyze, parse_metrics
from ..engine.settings import DEFAULTS, FIELDS, AnalysisSettings, metric_options, settings_from, with_metric_options
from ..errors import CheckpointError, ConfigError, RunDirectoryError
from ..io import atomic_write, jsonable, write_json, write_text
from ..probes import ProbeConfig
from ..progress import progress_bar
from ..results import COLUMNS, Results, column_name, lower, upper
from ..rundir import (
    CONFIG_FILE,
    FIGURES_DIR,
    KIND_KEY,
    checkpoints,
    claim,
    foreign_checkpoint,
    kind_of,
    refuse_links,
    step_name,
    steps_in,
    whole_or_nothing,
)
from ..summary import FLAGS, OOD, TUNNEL_START, VERDICT, Summary
from ..train.loop import read_run
from .base import ExperimentResult, finish, read_config

DEFAULT_OUT = "dynamics"  # inside the run directory
DYNAMICS_FILE, STEPS_FILE, STEP_RESULTS_DIR = "dynamics.parquet", "steps.csv", "steps"
STEP_COLUMNS = ["step", "epoch"]
# settings that change where files are read or what is shown, not a number
NOT_NUMBERS = frozenset({"data_root", "progress"})
# settings recorded only when they differ from their defaults (records of earlier versions lack them)
RECORDED_IF_CHANGED = frozenset({"ridge", "precision"})


@dataclass
class DynamicsResult(ExperimentResult):
    """One run's checkpoints analysed: ``table`` (the tidy table of every checkpoint, with
    ``step`` and ``epoch`` columns), ``steps`` (one row per checkpoint: its summary's numbers),
    ``summaries`` (each checkpoint's full summary, by step, where its record in ``steps/`` is
    there) and ``config``. Its saved table is ``steps`` (``steps.csv``); ``table`` is saved
    beside it as ``dynamics.parquet``."""

    kind: ClassVar[str] = "dynamics"
    table_files: ClassVar[dict[str, str]] = {"steps": STEPS_FILE}

    table: pd.DataFrame
    steps: pd.DataFrame
    summaries: dict[int, Summary]
    config: dict[str, Any]
    path: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def step_list(self) -> list[int]:
        """The analysed steps, in order."""
        return [int(s) for s in self.steps["step"]]

    def heatmap(self, metric: str = "probe_acc", dataset: str = "id", split: str = "test") -> pd.DataFrame:
        """One metric as a layers × steps frame (rows: layer, 0 = the input; columns: step)."""
        from ..report.dynamics import heatmap_grid

        grid = heatmap_grid(self.table, metric, dataset, split)
        if grid.empty:
            raise KeyError(f"no {metric!r} for dataset {dataset!r} split {split!r}; metrics here: "
                           f"{sorted(self.table.metric.unique())}")
        return grid

    def results(self, step: int) -> Results:
        """The analysis of one checkpoint as a :class:`~tunnelscope.results.Results`."""
        if step not in self.summaries:
            raise KeyError(f"step {step} was not analysed (or its record in {STEP_RESULTS_DIR}/ is gone); "
                           f"summaries here: {sorted(self.summaries)}")
        rows = self.table[self.table.step == step].drop(columns=STEP_COLUMNS)
        return Results(rows.reset_index(drop=True), self.summaries[step], self.config.get("analysis", {}))

    def tables(self) -> dict[str, pd.DataFrame]:
        """``steps``: one row per analysed checkpoint (``steps.csv``)."""
        return {"steps": self.steps}

    def figure_tables(self) -> dict[str, pd.DataFrame]:
        """What the figures are drawn from: :meth:`tables` and the layer table (``layers``)."""
        from ..report.dynamics import LAYER_TABLE

        return {**self.tables(), LAYER_TABLE: self.table}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> DynamicsResult:
        """The result of ``steps`` and, when given, the layer table ``layers`` (else an empty one);
        no per-step summaries (:meth:`load` reads them)."""
        from ..report.dynamics import LAYER_TABLE

        table = tables.get(LAYER_TABLE)
        if table is None:
            table = pd.DataFrame(columns=STEP_COLUMNS + COLUMNS)
        return cls(table, tables["steps"], {}, dict(config))

    def save(self, out: str | Path, overwrite: bool = False, figures: bool = True) -> list[Path]:
        """Claim ``out`` (see :func:`tunnelscope.rundir.claim`), write ``dynamics.parquet``,
        ``steps.csv``, the figures (``figures/``, with ``figures``; none of an earlier run's
        outlives it) and, last, ``config.json`` naming the kind; return the written paths."""
        from ..report.experiments import draw_experiment, figure_names

        config = self.saved_config()
        drawn = draw_experiment(self.kind, self.figure_tables(), config) if figures else {}
        table = self.table
        with whole_or_nothing(out):  # the step files of analyze_run were written before: they stay
            folder = claim(out, self.kind, overwrite, files=(DYNAMICS_FILE, STEPS_FILE))
            paths = [atomic_write(folder / DYNAMICS_FILE, lambda handle: table.to_parquet(handle, index=False)),
                     write_text(folder / STEPS_FILE, self.steps.to_csv(index=False))]
            return paths + finish(folder, drawn, figure_names(self.kind), folder / CONFIG_FILE, config)

    @classmethod
    def load(cls, directory: str | Path) -> DynamicsResult:
        """Read a directory written by :func:`analyze_run` (or :meth:`save`); refuses a partial one."""
        from ..report.dynamics import LAYER_TABLE

        out = Path(directory)
        missing = [f for f in (CONFIG_FILE, DYNAMICS_FILE, STEPS_FILE) if not (out / f).is_file()]
        if missing:
            raise RunDirectoryError(f"{out} holds no complete dynamics analysis (missing {', '.join(missing)}): "
                                    "at most a partial or interrupted one; run analyze_run (tunnelscope dynamics) "
                                    "with the same settings again to finish it")
        config = read_config(out, cls.kind)
        config.pop(KIND_KEY, None)
        try:
            tables = {LAYER_TABLE: pd.read_parquet(out / DYNAMICS_FILE), "steps": pd.read_csv(out / STEPS_FILE)}
            records = steps_in(out / STEP_RESULTS_DIR, "json")
            summaries = {step: json.loads(records[step].read_text())["summary"]
                         for step in config["steps"] if step in records}
        except (OSError, ValueError, KeyError) as exc:
            raise RunDirectoryError(f"cannot read the dynamics in {out}: {type(exc).__name__}: {exc}") from None
        result = cls.from_tables(tables, config)
        result.summaries, result.path = summaries, out
        result.figures = sorted((out / FIGURES_DIR).glob("*.png"))
        return result


# ---------------------------------------------------------------------------------------------- selection
def select_steps(available: Sequence[int], steps: str | Sequence[int] = "all") -> list[int]:
    """The checkpoints to analyse, from the run's ``available`` steps.

    ``"all"``; ``"final"``; ``"every:K"`` (every K-th checkpoint in step order, the last
    always included); ``"log:N"`` (about N checkpoints spread evenly along log(1 + step),
    the first and last included); or a list of steps (a list or ``"0,1,2,16"``), each of which
    must exist."""
    ordered = sorted(set(int(s) for s in available))
    if isinstance(steps, str) and steps in ("all", "final"):
        return ordered if steps == "all" else ordered[-1:]
    if isinstance(steps, str) and ":" in steps:
        kind, _, count_text = steps.partition(":")
        count = _positive_int(count_text, steps)
        if kind == "every":
            return sorted({*ordered[::count], ordered[-1]})
        if kind == "log":
            return _log_spread(ordered, count)
        raise ConfigError(f"unknown step selection {steps!r}; use all, final, every:K, log:N or a list of steps")
    wanted = _step_list(steps)
    missing = [s for s in wanted if s not in ordered]
    if missing:
        raise ConfigError(f"the run has no checkpoint at steps {missing}; its steps are {_short(ordered)}")
    return sorted(set(wanted))


def _positive_int(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{spec!r} needs a whole number >= 1 after the colon, e.g. every:2 or log:8")
    return value


def _step_list(steps: str | Sequence[int]) -> list[int]:
    parts = steps.split(",") if isinstance(steps, str) else list(steps)
    try:
        wanted = [int(str(s).strip()) for s in parts if str(s).strip()]
    except ValueError:
        raise ConfigError(f"steps must be all, final, every:K, log:N or a list of steps such as 0,1,2,16; "
                          f"not {steps!r}") from None
    if not wanted:
        raise ConfigError("no steps given; use all, final, every:K, log:N or a list of steps")
    return wanted


def _log_spread(ordered: list[int], count: int) -> list[int]:
    """About ``count`` steps nearest to evenly spaced points of log(1 + step)."""
    if count >= len(ordered):
        return ordered
    position = np.log1p(np.asarray(ordered, dtype=float))
    targets = np.linspace(position[0], position[-1], count)
    return sorted({ordered[int(np.argmin(np.abs(position - t)))] for t in targets})


def _short(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 20 else f"[{', '.join(map(str, steps[:10]))}, ..., {steps[-1]}]"


# ---------------------------------------------------------------------------------------------- the run
def analyze_run(  # noqa: PLR0913 (a public facade: readable keywords)
    run_dir: str | Path,
    data: str | data_mod.Dataset | None = None,
    ood: Sequence[str] = (),
    metrics: str | Sequence[str] = "default",
    steps: str | Sequence[int] = "all",
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    heatmaps: Sequence[str] | None = None,
    figures: bool = True,
    settings: AnalysisSettings | None = None,
    untrained_reference: bool = False,
    **analyze_options: Any,
) -> DynamicsResult:
    """Analyse the selected checkpoints of a training run; returns a :class:`DynamicsResult`.

    ``data`` defaults to the run's training data (``run.json``); ``ood``, ``metrics``,
    ``untrained_reference`` and the analysis settings (``settings``, an
    :class:`~tunnelscope.engine.settings.AnalysisSettings`, or its fields as keywords:
    ``points``, ``reduce``, ``device``, ``probe``, ``max_samples``, ``resamples``, ``seed``,
    ``data_root`` ...) go to :func:`tunnelscope.analyze` unchanged, so each checkpoint's rows
    equal what ``analyze`` gives for it. ``steps``: see
    :func:`select_steps`. Results go to ``out`` (default ``RUN_DIR/dynamics``) one checkpoint
    at a time; a checkpoint already analysed there with the same settings is skipped, so an
    interrupted call resumes. Finished checkpoints analysed with other settings, or whose
    checkpoint file changed since, are refused unless ``overwrite`` (which starts afresh).
    ``heatmaps`` names the metrics drawn as layer × step heatmaps (default probe accuracy,
    on every dataset, and rank; recorded in ``config.json``); ``figures=False`` draws none.
    The gathered result is written by :meth:`DynamicsResult.save`, ``config.json`` last.
    """
    from ..metrics import PRESENTATIONS
    from ..report.dynamics import HEATMAP_METRICS

    unknown = sorted(set(heatmaps or ()) - set(PRESENTATIONS))
    if unknown:
        raise ConfigError(f"no metric {', '.join(map(repr, unknown))} to draw as a heatmap; valid: "
                          f"{', '.join(sorted(PRESENTATIONS))}")
    run_dir = Path(run_dir)
    available = checkpoints(run_dir, required=True)
    run = read_run(run_dir)
    names, metric_settings = metric_options(metrics)
    chosen = with_metric_options(_chosen_settings(settings, analyze_options), metric_settings)
    out = run_dir / DEFAULT_OUT if out is None else Path(out)
    _check_out(out, run_dir)
    selected = select_steps(sorted(available), steps)
    wanted = parse_metrics(names)  # refuses unknown metric names before any work
    dataset = _dataset(data, run, available, chosen.data_root)
    record = _settings(dataset.spec, ood, wanted, chosen, untrained_reference)
    if overwrite:
        _clear(out)
    done = _finished_steps(out, selected, available, record)  # refuses before anything in out changes
    with whole_or_nothing(out, resumable=True):  # finished steps stay; a folder left empty goes
        claim(out, DynamicsResult.kind, overwrite=True)  # resumed: it reads as partial until the end
        steps_per_epoch = run.get("steps_per_epoch")
        tic = time.perf_counter()
        with progress_bar(progress) as bars:
            task = bars.add_task("checkpoints", total=len(selected), completed=len(done), info="")
            for step in selected:
                if step in done:
                    continue
                bars.update(task, info=f"step {step}")
                results = analyze(available[step], dataset, ood=list(ood), metrics=names,
                                  untrained_reference=untrained_reference, settings=chosen.replace(progress=False))
                info = results.config.get("model") or {}
                if why := foreign_checkpoint(run, available[step], info.get("model"), info.get("data_spec"),
                                             info.get("train_seed")):
                    raise CheckpointError(f"{why}; move it out of {run_dir / 'checkpoints'}")
                _write_step(out, step, _epoch(step, steps_per_epoch), available[step], results, record)
                bars.update(task, advance=1, info=f"step {step}: tunnel start {results.summary.get(TUNNEL_START)}")
        drawn = list(HEATMAP_METRICS if heatmaps is None else heatmaps)
        result = _gather(out, selected, run_dir, run, record, drawn, time.perf_counter() - tic)
        paths = result.save(out, overwrite=True, figures=figures)  # out is this analysis's: checked above
    result.path, result.figures = out, [p for p in paths if p.suffix == ".png"]
    return result


def _chosen_settings(settings: AnalysisSettings | None, options: Mapping[str, Any]) -> AnalysisSettings:
    """``settings`` with the keyword settings given; a keyword that is no setting is refused."""
    unknown = sorted(set(options) - FIELDS)
    if unknown:
        raise ConfigError(f"analyze_run does not take {', '.join(unknown)}; it passes on only untrained_reference "
                          f"and the analysis settings {', '.join(sorted(FIELDS))}")
    return settings_from(settings, options)


def _check_out(out: Path, run_dir: Path) -> None:
    """Refuse an ``out`` that is a file, a training run, an analysis or another kind's experiment
    (:func:`tunnelscope.rundir.kind_of`); a dynamics directory, finished or not, is resumed."""
    refuse_links(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out} is a file, not a directory; choose another out")
    held = kind_of(out)
    if held == "training":
        raise RunDirectoryError(f"{out} is a training run directory; write the dynamics elsewhere "
                                f"(default: {run_dir / DEFAULT_OUT})")
    if held == "analysis":
        raise RunDirectoryError(f"{out} holds a single analysis ('tunnelscope analyze'); choose another out")
    if held not in (None, "unknown", DynamicsResult.kind):
        raise RunDirectoryError(f"{out} holds a {held} experiment, not a dynamics one; choose another out")


def _dataset(data: str | data_mod.Dataset | None, run: dict, available: dict[int, Path],
             data_root: str | Path | None) -> data_mod.Dataset:
    """The ID dataset: the one given, else the run's training data (from run.json or a checkpoint)."""
    if isinstance(data, data_mod.Dataset):
        return data
    return data_mod.load(data if data is not None else _training_data(run, available), root=data_root)


def _training_data(run: dict, available: dict[int, Path]) -> str:
    """The run's training data spec: from run.json, else from its first checkpoint."""
    spec = run.get("config", {}).get("data")
    if spec is None:
        from ..checkpoint import read_checkpoint

        spec = read_checkpoint(available[min(available)])["meta"]["data_spec"]
    return str(spec)


def _settings(data_spec: str, ood: Sequence[str], metrics: list[str], settings: AnalysisSettings,
              untrained_reference: bool) -> dict:
    """Everything that changes a checkpoint's numbers, as JSON reads it back: every setting
    (defaults included), the device resolved and the default probe spelled out, so that the
    same analysis asked for in other words (omitted or explicit defaults) compares equal."""
    chosen = {name: getattr(settings, name) for name in FIELDS - NOT_NUMBERS
              if name not in RECORDED_IF_CHANGED or getattr(settings, name) != DEFAULTS[name]}
    chosen["points"] = settings.points_request
    chosen["untrained_reference"] = untrained_reference
    chosen["device"] = str(resolve_device(chosen["device"]))
    if chosen["probe"] is None:
        chosen["probe"] = ProbeConfig(seed=chosen["seed"])  # what the probes use when given none
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
             for k, v in sorted(chosen.items())}
    record = {"data": data_spec, "ood": list(ood), "metrics": metrics, "analyze": plain}
    return json.loads(json.dumps(jsonable(record), default=str))


def _epoch(step: int, steps_per_epoch: int | None) -> float:
    return step / steps_per_epoch if steps_per_epoch else math.nan


def _digest(path: Path) -> str:
    """The SHA-256 of a checkpoint file: a finished step whose checkpoint changed is stale."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------- the store
def _step_paths(out: Path, step: int) -> tuple[Path, Path]:
    """Where one step's table and record go: ``steps/step-NNNNNNN.parquet`` and ``.json``."""
    folder = out / STEP_RESULTS_DIR
    return folder / step_name(step, "parquet"), folder / step_name(step, "json")


def _read_step_record(out: Path, step: int) -> dict:
    return json.loads(_step_paths(out, step)[1].read_text())


def _clear(out: Path) -> None:
    """Remove what an earlier call wrote in ``out`` (nothing else)."""
    (out / CONFIG_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / STEP_RESULTS_DIR, ignore_errors=True)
    for name in (DYNAMICS_FILE, STEPS_FILE):
        (out / name).unlink(missing_ok=True)
    from ..report.experiments import figure_names

    for name in figure_names(DynamicsResult.kind):
        for fmt in ("png", "svg"):
            (out / f"{name}.{fmt}").unlink(missing_ok=True)


STEP_RECORD_KEYS = {"step", "epoch", "checkpoint", "digest", "settings", "summary", "config"}


def _finished_steps(out: Path, selected: list[int], available: dict[int, Path], settings: dict) -> set[int]:
    """Selected steps already analysed in ``out`` with these settings and this checkpoint file;
    refuses finished steps that differ in either."""
    done = set()
    tables, records = steps_in(out / STEP_RESULTS_DIR, "parquet"), steps_in(out / STEP_RESULTS_DIR, "json")
    for step in selected:
        if step not in tables or step not in records:
            continue
        record_path = records[step]
        try:
            record = json.loads(record_path.read_text())
            pq.read_metadata(tables[step])  # a damaged table fails here (footer and schema)
        except (ValueError, OSError):
            continue  # unreadable: analysed again
        if not isinstance(record, dict) or not STEP_RECORD_KEYS <= set(record):
            continue  # damaged or edited: analysed again
        if record.get("settings") != settings:
            raise RunDirectoryError(f"{out} holds results of step {step} analysed with other settings "
                                    f"({_differences(record.get('settings') or {}, settings)}); pass "
                                    "overwrite=True (--overwrite) to start afresh, or choose another out")
        if record.get("digest") != _digest(available[step]):
            raise RunDirectoryError(f"the checkpoint of step {step} changed since it was analysed in {out} "
                                    "(retrained?); pass overwrite=True (--overwrite) to start afresh")
        done.add(step)
    return done


def _differences(before: dict, now: dict, prefix: str = "") -> str:
    """The settings that differ, as ``name: old then, new now`` (nested settings dotted)."""
    parts = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            parts.append(_differences(old, new, f"{prefix}{key}."))
        elif old != new:
            parts.append(f"{prefix}{key}: {old!r} then, {new!r} now")
    return "; ".join(p for p in parts if p)


def _write_step(out: Path, step: int, epoch: float, checkpoint: Path, results: Results, settings: dict) -> None:
    """One checkpoint's table, then its record (summary, settings, digest): the record marks it done."""
    parquet, record = _step_paths(out, step)
    table = results.table.reindex(columns=COLUMNS)
    atomic_write(parquet, lambda handle: table.to_parquet(handle, index=False))
    write_json(record, {"step": step, "epoch": epoch, "checkpoint": str(checkpoint), "digest": _digest(checkpoint),
                        "settings": settings, "summary": results.summary, "config": results.config})


def _gather(out: Path, selected: list[int], run_dir: Path, run: dict, settings: dict, heatmaps: list[str],
            seconds: float) -> DynamicsResult:
    """Every selected step read back into one result (its ``config``: ``heatmaps`` the metrics drawn)."""
    frames, rows, summaries, last_config = [], [], {}, {}
    for step in selected:
        parquet, _ = _step_paths(out, step)
        record = _read_step_record(out, step)
        table = pd.read_parquet(parquet)
        frames.append(table.assign(step=step, epoch=record["epoch"]).reindex(columns=STEP_COLUMNS + COLUMNS))
        rows.append(step_row(step, record["epoch"], record["checkpoint"], record["summary"]))
        summaries[step] = record["summary"]
        last_config = record["config"]
    table = pd.concat(frames, ignore_index=True)
    table["epoch"] = table["epoch"].astype(float)
    steps = pd.DataFrame(rows)
    config = {"run_dir": str(run_dir), "run": _run_info(run), "settings": settings, "steps": selected,
              "analysis": {k: v for k, v in last_config.items() if k != "model"}, "heatmaps": heatmaps,
              "seconds": round(seconds, 3)}
    return DynamicsResult(table, steps, summaries, config)


def _run_info(run: dict) -> dict:
    config = run.get("config", {})
    return {"model": config.get("model"), "data": config.get("data"), "epochs": config.get("epochs"),
            "seed": config.get("seed"), "dense_steps": config.get("dense_steps", 0),
            "steps_per_epoch": run.get("steps_per_epoch"), "total_steps": run.get("total_steps"),
            "status": run.get("status"), "final": run.get("final")}


def step_row(step: int, epoch: float, checkpoint: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One checkpoint's summary as a flat row: scalars as they are, each ``KEY_ci`` interval as
    ``KEY_lo`` / ``KEY_hi``, each OOD set's ``retained@NAME`` (with its interval), the flag codes."""
    row: dict[str, Any] = {"step": step, "epoch": epoch, "checkpoint": checkpoint}
    for key, value in summary.items():
        if key in (OOD, FLAGS, VERDICT) or isinstance(value, dict):
            continue
        if key.endswith("_ci") and isinstance(value, list) and len(value) == 2:
            base = key.removesuffix("_ci")
            row[lower(base)], row[upper(base)] = _number(value[0]), _number(value[1])
        elif not isinstance(value, list):
            row[key] = value
    for entry in summary.get(OOD, []):
        name = column_name("retained", entry["name"])
        row[name] = _number(entry.get("retained"))
        interval = entry.get("retained_ci") or [None, None]
        row[lower(name)], row[upper(name)] = _number(interval[0]), _number(interval[1])
    row["flags"] = ",".join(flag["code"] for flag in summary.get(FLAGS, []))
    row[VERDICT] = summary.get(VERDICT)
    return row


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


__all__ = ["DEFAULT_OUT", "DYNAMICS_FILE", "STEPS_FILE", "STEP_RESULTS_DIR", "DynamicsResult", "analyze_run",
           "select_steps", "step_row"]
