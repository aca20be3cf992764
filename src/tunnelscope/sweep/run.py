"""Running a sweep: every unfinished cell in a local worker process (the default; no network
service is started) or as a task on a Ray cluster (``--address``); a worker that dies is
retried; a cell that fails is recorded and the others go on."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from ..errors import RayError
from ..progress import progress_bar
from .cell import run_cells
from .local import run_local, slots
from .spec import Cell, SweepSpec
from .store import Store


@dataclass
class SweepOutcome:
    """What one invocation did: cells run now, cells already finished, failures (key → error)."""

    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a ``host:port`` Ray address does not answer."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise RayError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with 'ray start --head' "
                       "or drop --address to run locally") from None


def init_ray(address: str):
    """Connect to the Ray cluster at ``address`` (``host:port``, ``ray://host:port`` or ``auto``,
    a cluster started on this machine with ``ray start --head``). tunnelscope never starts a Ray
    instance itself: local sweeps run in worker processes without any network service."""
    try:
        import ray
    except ImportError:
        raise RayError("--address runs cells on a Ray cluster, and Ray is not installed here: pip install "
                       "'tunnelscope[ray]' (or drop --address to run locally, without Ray)") from None

    if ray.is_initialized():
        return ray
    _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except Exception as exc:
        raise RayError(f"could not connect to Ray at {address!r}: {type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    return ray


def run_sweep(spec: SweepSpec, address: str | None = None, max_concurrent: int | None = None,
              device: str = "auto", progress: bool | None = None) -> SweepOutcome:
    """Run every cell of ``spec`` that is not finished: in local worker processes, or as Ray tasks
    on the cluster at ``address``. Returns what happened."""
    store = Store(spec.store)
    pending: list[Cell] = []
    skipped: list[Cell] = []
    for cell in spec.cells:
        record = store.record(cell.key) or {}
        (skipped if record.get("status") == "finished" else pending).append(cell)
    outcome = SweepOutcome([], [c.key for c in skipped], {})
    if not pending:
        return outcome
    res = spec.resources
    threads = max(1, int(res["cpus"]))
    cell_device = device if res["gpus"] else ("cpu" if device == "auto" else device)
    groups: dict[str, list] = {}  # cells sharing a training run go to one task, so it is trained once
    for cell in pending:
        groups.setdefault(cell.train_key, []).append(cell)
    with progress_bar(progress) as bars:
        bar = bars.add_task(f"sweep {spec.name}", total=len(pending), info=f"{len(skipped)} already done")

        def done(group: list, error: str | None) -> None:
            for cell in group:
                record = store.record(cell.key) or {}
                if error is not None and record.get("status") != "finished":
                    store.write_record(cell, status="failed", error=error)
                    record = store.record(cell.key) or {}
                outcome.ran.append(cell.key)
                if record.get("status") != "finished":
                    outcome.failed[cell.key] = record.get("error") or "unknown error"
                bars.advance(bar)

        if address is None:
            run_local(list(groups.values()), str(spec.store), cell_device, threads,
                      slots(res["cpus"], max_concurrent), int(res["retries"]), done)
        else:
            _run_on_ray(init_ray(address), list(groups.values()), str(spec.store), cell_device, threads, res,
                        max_concurrent, done)
    return outcome


def _run_on_ray(ray, groups: list[list], store_root: str, device: str, threads: int, res: dict,
                max_concurrent: int | None, done) -> None:
    """Every group as a Ray task with the cell's resource request; a task whose worker dies is retried."""
    task = ray.remote(run_cells).options(num_cpus=res["cpus"], num_gpus=res["gpus"], max_retries=res["retries"],
                                         retry_exceptions=False)
    waiting = list(groups)
    limit = max_concurrent or len(waiting)
    running: dict = {}
    while waiting or running:
        while waiting and len(running) < limit:
            group = waiting.pop(0)
            running[task.remote(group, store_root, device, threads)] = group
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            group = running.pop(ref)
            try:
                ray.get(ref)
                done(group, None)
            except Exception as exc:  # the worker died more often than the retries allow
                done(group, f"worker lost: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")


__all__ = ["RayError", "SweepOutcome", "init_ray", "run_sweep"]
