"""Watch the tunnel form inside a training run: :class:`Monitor` analyses the live model on a
fixed held-out probe set every K steps, without disturbing training.

Masarczyk et al. (2023) report that the tunnel forms early in training. ``tunnelscope
dynamics`` analyses saved checkpoints afterwards; a monitor does the same analysis
(:func:`tunnelscope.analyze`'s engine, the same rows) on the model as it trains, at the steps
its schedule picks, and gathers a :class:`~tunnelscope.experiments.dynamics.DynamicsResult`
(the layer × step table and one row of headline numbers per step) that ``tunnelscope report``
and the dynamics figures read.

A measurement leaves training as it was: the model's train/eval mode of every module, the
global random states (torch, CUDA, numpy, ``random``) and gradient mode are restored; the
analysis runs in eval mode without gradients, so batch-norm running statistics and ``.grad``
are untouched (training with and without a monitor gives bit-identical weights; tested).

The integrations (:mod:`tunnelscope.integrations`) call :meth:`Monitor.step` from a plain
loop, a Lightning callback or a Hugging Face ``TrainerCallback``, and send each measurement
to TensorBoard, Weights & Biases, MLflow or a table file.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import Dataset, resolve_data
from ..data.objects import ood_dataset
from ..engine.analyze import parse_metrics, run_analysis
from ..engine.distributed import alone, current_world
from ..engine.settings import AnalysisSettings
from ..errors import ConfigError, MonitorBudgetError
from ..probes import ProbeConfig
from ..results import COLUMNS, Results
from ..summary import TUNNEL_START, Summary
from ..versions import package_versions
from .dynamics import STEP_COLUMNS, DynamicsResult, step_row

T = TypeVar("T")
MONITOR_METRICS = ("probe", "rank", "ncc", "cka")  # a closed-form probe, rank, NCC, CKA between points
MONITOR_SAMPLES = 256  # per split: a monitor's probe set is small, so that a measurement is cheap
MONITOR_REDUCE = "gap"  # one number per channel: on the demo VGG a quarter of pool2's cost (docs/monitor.md)


class Writer(Protocol):
    """Where a monitor sends each measurement (:mod:`tunnelscope.integrations.writers`)."""

    def write(self, step: int, results: Results, history: pd.DataFrame) -> None:
        """One measurement at ``step``; ``history`` is every measurement so far (the monitor's table)."""

    def close(self) -> None:
        """Flush and release what the writer holds."""


def due(step: int, every: int, dense_early: bool) -> bool:
    """Whether ``step`` is measured: every ``every``-th step (step 0 included) and, with
    ``dense_early``, also steps 1, 2, 4, 8, ... below ``every`` (the tunnel forms early)."""
    if step < 0:
        return False
    if step % every == 0:
        return True
    return dense_early and step < every and step & (step - 1) == 0


@contextlib.contextmanager
def undisturbed(model: nn.Module) -> Iterator[None]:
    """Run the body and put back what it may change of a training run: every module's
    train/eval mode, the global random states (torch CPU and CUDA, numpy, ``random``) and
    whether gradients are enabled."""
    modes = [(module, module.training) for module in model.modules()]
    cpu_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None  # no new CUDA context
    grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        torch.set_rng_state(cpu_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_grad_enabled(grad_enabled)


def stable_step(steps: pd.DataFrame) -> tuple[int | None, str]:
    """``(step, why)``: the first measured step after which the tunnel start (τ = 0.95) stays
    within one layer of its last measured value; None (and why) when no start is defined at the
    last step, or only the last step qualifies (it has not been seen to stay)."""
    if TUNNEL_START not in steps or steps.empty:
        return None, "no tunnel start was measured (the monitor's metrics need 'probe')"
    rows = steps.sort_values("step")
    if len(rows) < 2:
        return None, "one step measured: a start cannot be seen to stay"
    starts = rows[TUNNEL_START].astype(float).to_numpy()
    if not math.isfinite(starts[-1]):
        return None, "the tunnel start is undefined at the last measured step"
    near = np.abs(starts - starts[-1]) <= 1  # NaN compares False: an undefined start breaks the run
    first = len(near)
    while first > 0 and near[first - 1]:
        first -= 1
    if first >= len(near) - 1:
        return None, "the tunnel start moved by more than one layer up to the last measured step: not yet stable"
    step = int(rows["step"].iloc[first])
    return step, (f"from step {step} on, the tunnel start stays within one layer of its last value "
                  f"({int(starts[-1])}) over {len(near) - first} measured steps")


class Monitor:
    """Measure ``model`` on a fixed probe set during training (module docstring).

    ``data`` (and each ``ood`` set) is anything :func:`tunnelscope.analyze` accepts; at most
    ``max_samples`` samples per split are read (a seeded subset, the same at every step).
    Feature maps are reduced by ``reduce`` (``gap`` by default, one number per channel: a
    monitor watches; ``pool2``, the analyses' default, costs about 4x more on the demo VGG).
    ``metrics`` default to a closed-form ``ridge`` probe (``probe``), ``rank``, ``ncc`` and
    ``cka`` (between every pair of points, the previous layer included); ``probe`` sets the
    probe protocol, ``resamples`` the bootstrap behind the intervals (0: none, the default:
    a monitor is for watching, ``tunnelscope dynamics`` for intervals). :meth:`step` measures
    at every ``every``-th step and, with ``dense_early``, at steps 1, 2, 4, 8, ... below it.
    ``budget`` (a fraction, e.g. 0.1) refuses (:class:`MonitorBudgetError`), as soon as
    ``every`` training steps have been timed, a schedule whose measurements would add more than
    that share to the training time. ``writers`` receive each measurement (from the first
    process only under ``torchrun``). Under ``torchrun`` (DDP, say) every process measures the
    whole probe set by itself: the same numbers on every process, and no collective of the
    monitor's inside a training step (a small probe set could not give every process a batch
    anyway). ``settings`` (an :class:`AnalysisSettings`) replaces the
    capture and sampling settings whole; the device is always the model's at the time.
    """

    def __init__(self, model: nn.Module, data: object, ood: object = (), *, every: int = 50,  # noqa: PLR0913 (a public facade: readable keywords)
                 dense_early: bool = True, metrics: str | Sequence[str] = MONITOR_METRICS,
                 points: str | Sequence[str] = "blocks", reduce: str = MONITOR_REDUCE,
                 max_samples: int | None = MONITOR_SAMPLES,
                 probe: ProbeConfig | None = None, resamples: int = 0, seed: int = 0, budget: float | None = None,
                 writers: Sequence[Writer] = (), data_root: str | Path | None = None,
                 settings: AnalysisSettings | None = None) -> None:
        if every < 1:
            raise ConfigError(f"every must be >= 1 (measure every K steps), got {every}")
        if budget is not None and not 0 < budget:
            raise ConfigError(f"budget is a share of the training time > 0 (0.1: 10%), got {budget}")
        self.model, self.every, self.dense_early, self.budget = model, every, dense_early, budget
        self.metrics = parse_metrics(metrics)
        device = next(model.parameters()).device
        base = settings or AnalysisSettings(points=points, reduce=reduce, max_samples=max_samples, resamples=resamples,
                                            seed=seed, probe=probe or ProbeConfig(protocol="ridge", seed=seed))
        self.settings = base.replace(device=device, progress=False, data_root=data_root or base.data_root)
        self.dataset, ood_sets = resolve_data(data, ood, self.settings.data_root)
        self.ood, self.ood_changes = self._load_ood(ood_sets)
        self.writers = list(writers)
        self.frames: list[pd.DataFrame] = []
        self.rows: list[dict[str, Any]] = []
        self.summaries: dict[int, Summary] = {}
        self.last_config: dict[str, Any] = {}
        self.seconds: list[float] = []
        self._clock: tuple[float, int] | None = None  # (time, step) of the first measurement
        self.global_step = 0  # the optimiser steps :meth:`watch` has counted

    def _load_ood(self, ood_sets: Sequence[str | Dataset]) -> tuple[list[Dataset], dict[str, list[str]]]:
        """Every OOD set loaded and adapted to the ID input shape once (not at every step)."""
        loaded, changes = [], {}
        for item in ood_sets:
            spec, dataset, made = ood_dataset(item, self.dataset.input_shape, self.settings.data_root)
            loaded.append(dataset)
            changes[spec] = made
        return loaded, changes

    def step(self, step: int, epoch: float | None = None) -> Results | None:
        """Measure at ``step`` when the schedule says so (:func:`due`); returns the analysis or
        None. Call it after the optimiser step that makes the model's step ``step``."""
        if not due(step, self.every, self.dense_early) or step in self.summaries:
            return None
        return self.measure(step, epoch)

    def watch(self, batches: Iterable[T], epoch: int | None = None) -> Iterator[T]:
        """The plain-loop helper: yield each of ``batches``; once the loop body has run for it
        (its optimiser step done), count one step and call :meth:`step`. Steps continue across
        calls (one per epoch, say), from :attr:`global_step`; step 0 is measured before the
        first batch. ``epoch`` (0-based) sets the fractional epoch recorded, when ``batches``
        has a length.

            for epoch in range(epochs):
                for x, y in monitor.watch(loader, epoch):
                    optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        """
        if self.global_step == 0:
            self.step(0, epoch=None if epoch is None else float(epoch))
        total = len(batches) if isinstance(batches, Sized) else 0
        for index, batch in enumerate(batches, 1):
            yield batch
            self.global_step += 1
            self.step(self.global_step, epoch=None if epoch is None or not total else epoch + index / total)

    def measure(self, step: int, epoch: float | None = None) -> Results:
        """Analyse the model now, whatever the schedule, and record it as step ``step``."""
        tic = time.perf_counter()
        # the model's device now: a trainer may have moved it since the monitor was made
        settings = self.settings.replace(device=next(self.model.parameters()).device)
        with undisturbed(self.model), alone():  # see the class docstring: each process measures by itself
            results = run_analysis(self.model, self.dataset, list(self.ood), self.metrics, settings,
                                   model_info={"step": step})
        seconds = time.perf_counter() - tic
        self.seconds.append(seconds)
        epoch_value = math.nan if epoch is None else float(epoch)
        self.frames.append(results.table.reindex(columns=COLUMNS).assign(step=step, epoch=epoch_value))
        self.rows.append({**step_row(step, epoch_value, "", results.summary), "seconds": seconds})
        self.summaries[step] = results.summary
        self.last_config = dict(results.config)
        if current_world().leader:  # under torchrun every process measures, the first one writes
            history = self.table
            for writer in self.writers:
                writer.write(step, results, history)
        self._check_budget(step, tic)
        return results

    def _check_budget(self, step: int, tic: float) -> None:
        """Refuse a schedule over ``budget`` once ``every`` training steps have been timed: the
        mean cost of a measurement against the time of ``every`` training steps at the speed
        seen so far (wall time between measurements, less the measuring)."""
        if self._clock is None:
            self._clock = (time.perf_counter(), step)
            return
        start, first_step = self._clock
        if self.budget is None or step - first_step < self.every:
            return
        training = (tic - start) - sum(self.seconds[1:-1])
        per_step = max(training, 1e-9) / (step - first_step)
        cost = float(np.mean(self.seconds[1:]))  # the first measurement pays for warming up
        share = cost / (self.every * per_step)
        if share > self.budget:
            needed = math.ceil(cost / (self.budget * per_step))
            raise MonitorBudgetError(
                f"a measurement takes {cost:.3f} s and {self.every} training steps {self.every * per_step:.3f} s: the "
                f"monitor would add {share:.0%} to the training time (budget {self.budget * 100:g}%); measure every "
                f"{needed} steps or more (every=), or read fewer samples (max_samples={self.settings.max_samples}) "
                "or metrics")

    @property
    def table(self) -> pd.DataFrame:
        """Every measurement's rows (the tidy table of :func:`tunnelscope.analyze`), with ``step``
        and ``epoch`` columns."""
        if not self.frames:
            return pd.DataFrame(columns=STEP_COLUMNS + COLUMNS)
        return pd.concat(self.frames, ignore_index=True).reindex(columns=STEP_COLUMNS + COLUMNS)

    @property
    def steps(self) -> pd.DataFrame:
        """One row per measurement: the step, its summary's numbers and the seconds it took."""
        return pd.DataFrame(self.rows)

    def result(self) -> DynamicsResult:
        """The measurements so far as a :class:`DynamicsResult` (``config["tunnel_stable"]``: the
        step from which the tunnel start stays within one layer, and why)."""
        if not self.rows:
            raise ConfigError("the monitor has measured nothing yet: call step() from the training loop first")
        stable, why = stable_step(self.steps)
        config = {"monitor": {"every": self.every, "dense_early": self.dense_early, "metrics": self.metrics,
                              "budget": self.budget, "ood_changes": self.ood_changes,
                              "seconds_per_measurement": float(np.mean(self.seconds))},
                  "run": {"model": getattr(self.model, "spec", type(self.model).__name__), "data": self.dataset.spec},
                  "steps": [int(r["step"]) for r in self.rows], "analysis": self.last_config,
                  "heatmaps": None, "tunnel_stable_step": stable, "tunnel_stable": why,
                  "versions": package_versions()}
        steps = self.steps.drop(columns=["seconds"])
        return DynamicsResult(self.table, steps, dict(self.summaries), config)

    def save(self, out: str | Path, overwrite: bool = False) -> DynamicsResult:
        """Write :meth:`result` into ``out`` (``dynamics.parquet``, ``steps.csv``, the figures,
        ``config.json``: what ``tunnelscope report`` reads) and return it."""
        result = self.result()
        result.save(out, overwrite=overwrite)
        result.path = Path(out)
        return result

    def close(self) -> None:
        """Close every writer."""
        for writer in self.writers:
            writer.close()


__all__ = ["MONITOR_METRICS", "MONITOR_REDUCE", "MONITOR_SAMPLES", "Monitor", "MonitorBudgetError", "Writer", "due",
           "stable_step", "undisturbed"]
