"""Running a sweep on Ray: every unfinished cell as a task with its resource request; a
task whose worker dies is retried; a cell that fails is recorded and the others go on."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ..errors import TunnelscopeError
from ..progress import progress_bar
from .cell import run_cells
from .spec import SweepSpec
from .store import Store


class RayError(TunnelscopeError):
    """Ray could not be started or reached."""


@dataclass
class SweepOutcome:
    """What one invocation did: cells run now, cells already finished, failures (key → error)."""

    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a ``host:port`` Ray address does not answer."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise RayError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with 'ray start --head' "
                       "or drop --address to run locally") from None


def init_ray(address: str | None, num_cpus: int | None = None):
    """Connect to ``address`` or start a local Ray instance (quiet, no dashboard)."""
    import ray

    if ray.is_initialized():
        return ray
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                 include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except Exception as exc:
        raise RayError(f"could not start Ray{f' at {address!r}' if address else ''}: {type(exc).__name__}: {exc}") \
            from None
    return ray


def run_sweep(spec: SweepSpec, address: str | None = None, max_concurrent: int | None = None,
              device: str = "auto", progress: bool | None = None) -> SweepOutcome:
    """Run every cell of ``spec`` that is not finished; returns what happened."""
    store = Store(spec.store)
    pending, skipped = [], []
    for cell in spec.cells:
        record = store.record(cell.key) or {}
        (skipped if record.get("status") == "finished" else pending).append(cell)
    outcome = SweepOutcome([], [c.key for c in skipped], {})
    if not pending:
        return outcome
    ray = init_ray(address)
    res = spec.resources
    task = ray.remote(run_cells).options(num_cpus=res["cpus"], num_gpus=res["gpus"], max_retries=res["retries"],
                                         retry_exceptions=False)
    threads = max(1, int(res["cpus"]))
    cell_device = device if res["gpus"] else ("cpu" if device == "auto" else device)
    groups: dict[str, list] = {}  # cells sharing a training run go to one task, so it is trained once
    for cell in pending:
        groups.setdefault(cell.train_key, []).append(cell)
    waiting = list(groups.values())
    limit = max_concurrent or len(waiting)
    running: dict = {}
    with progress_bar(progress) as bars:
        bar = bars.add_task(f"sweep {spec.name}", total=len(pending), info=f"{len(skipped)} already done")
        while waiting or running:
            while waiting and len(running) < limit:
                group = waiting.pop(0)
                running[task.remote(group, str(spec.store), cell_device, threads)] = group
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                group = running.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as exc:  # the worker died more often than the retries allow
                    for cell in group:
                        if (store.record(cell.key) or {}).get("status") != "finished":
                            store.write_record(cell, status="failed",
                                               error=f"worker lost: {type(exc).__name__}: {exc}")
                    records = [store.record(cell.key) for cell in group]
                for cell, record in zip(group, records):
                    outcome.ran.append(cell.key)
                    if record.get("status") != "finished":
                        outcome.failed[cell.key] = record.get("error") or "unknown error"
                    bars.advance(bar)
    return outcome


__all__ = ["RayError", "SweepOutcome", "init_ray", "run_sweep"]
