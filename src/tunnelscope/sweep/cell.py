"""Running one cell: train (or resume) into the store, then analyse the chosen checkpoints,
skipping those already done. Runs inside a Ray worker or in-process."""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..rundir import checkpoints
from ..threads import torch_threads
from .spec import Cell
from .store import Store

if TYPE_CHECKING:
    from ..engine.settings import AnalysisSettings


def chosen_steps(available: list[int], which) -> list[int]:
    """``final``, ``all``, or a list of steps (each must exist)."""
    if which == "final":
        return available[-1:]
    if which == "all":
        return available
    if isinstance(which, list):
        missing = [s for s in which if s not in available]
        if missing:
            raise ConfigError(f"checkpoints {missing} do not exist; the run has steps {available}")
        return list(which)
    raise ConfigError(f"analysis.checkpoints must be final, all or a list of steps, not {which!r}")


def _train(cell: Cell, run_dir: Path, device: str) -> None:
    from ..train.loop import train_once

    options = {k: v for k, v in cell.train.items() if k not in ("model", "data", "epochs")}
    train_once(cell.train["model"], cell.train["data"], cell.train["epochs"], run_dir, device=device, progress=False,
               **options)


def run_cell(cell: Cell, store_root: str, device: str = "auto", threads: int | None = None) -> dict:
    """Train and analyse ``cell``; returns its record. Errors are recorded, not raised."""
    # one worker per core: oversubscribed OpenMP threads crawl; the count is restored afterwards
    with torch_threads(threads or None):
        return _run_cell(cell, store_root, device)


def _run_cell(cell: Cell, store_root: str, device: str) -> dict:
    """:func:`run_cell` on the thread count already set."""
    from ..engine.analyze import analyze
    store = Store(store_root)
    run_dir = store.run_dir(cell.train_key)
    store.write_record(cell, status="running", pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                       error=None)
    try:
        if not cell.trains:
            _analyse_as_is(cell, store, device)
            store.write_record(cell, status="finished", finished=time.time(), steps=store.done_steps(cell.key),
                               error=None, traceback=None)
            return store.record(cell.key) or {}
        _train(cell, run_dir, device)
        available = checkpoints(run_dir)
        a = cell.analysis
        done = set(store.done_steps(cell.key))
        for step in chosen_steps(sorted(available), a["checkpoints"]):
            if step in done:
                continue
            results = analyze(available[step], cell.train["data"], ood=a["ood"], metrics=a["metrics"],
                              settings=cell_settings(cell, device))
            store.write_step(cell, step, results.table, results.summary)
        store.write_record(cell, status="finished", finished=time.time(), steps=store.done_steps(cell.key),
                           error=None, traceback=None)
    except Exception as exc:  # a failing cell is recorded and the sweep goes on
        store.write_record(cell, status="failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc(limit=8))
    return store.record(cell.key) or {}  # written above, so never None


def _analyse_as_is(cell: Cell, store: Store, device: str) -> None:
    """Analyse a cell's model as it is (a checkpoint, or a spec at its seeded initialisation or
    hub weights), once: its table and summary as step 0 (or the checkpoint's step), and what
    ``explain`` needs to know of the model and data in ``model.json`` beside the cell's runs."""
    import torch

    from ..data.objects import as_dataset
    from ..device import resolve_device
    from ..engine.analyze import analyze
    from ..io import write_json
    from ..models import resolve_model

    if store.done_steps(cell.key):
        return
    settings = cell_settings(cell, device)
    data = as_dataset(cell.train["data"])
    net, spec, info = resolve_model(cell.train["model"], resolve_device(settings.device), data,
                                    seed=cell.train.get("seed", 0))
    results = analyze(net, data, ood=cell.analysis["ood"], metrics=cell.analysis["metrics"], settings=settings,
                      model_info={"model": spec, **info})
    described = {"model": {"spec": spec, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                           "parameters": sum(p.numel() for p in net.parameters()), **info},
                 "data": {"train_samples": len(data.train), "augmentation": data.info.get("augmentation")}}
    write_json(store.run_dir(cell.train_key) / MODEL_FILE, described)
    step = info.get("step") or 0
    store.write_step(cell, int(step), results.table, results.summary)
    del net
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


MODEL_FILE = "model.json"  # an analysed-as-is cell's model and data, for the design variables


def cell_settings(cell: Cell, device: str) -> AnalysisSettings:
    """The analysis settings of a cell: its ``analysis`` section's settings, its probe protocol
    and epochs, the training seed, no progress bars."""
    from ..engine.settings import FIELDS, AnalysisSettings
    from ..probes import ProbeConfig

    a, seed = cell.analysis, cell.train.get("seed", 0)
    given = {key: value for key, value in a.items() if key in FIELDS}
    probe = ProbeConfig(protocol=a["protocol"], epochs=a["probe_epochs"], seed=seed)
    return AnalysisSettings.from_dict({**given, "device": device, "seed": seed, "probe": probe, "progress": False})


def run_cells(cells: list[Cell], store_root: str, device: str = "auto", threads: int | None = None) -> list[dict]:
    """Cells that share a training run, one after another (so that it is trained once)."""
    return [run_cell(cell, store_root, device, threads) for cell in cells]


__all__ = ["MODEL_FILE", "chosen_steps", "run_cell", "run_cells"]
