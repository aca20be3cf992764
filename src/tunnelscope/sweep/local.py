"""Running cells on this machine without Ray: each group of cells (those sharing a training run)
in a worker subprocess, at most a slot's worth at once.

A local sweep opens no network socket at all (a local Ray instance would listen on every
interface, with no authentication). Workers are started with the parent-death signal set
(Linux), so a driver that is killed takes its workers with it; a worker that dies is
started again up to ``retries`` times, and its cells resume from their training run's
``resume.pt`` and skip the checkpoints already analysed.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from ..threads import usable_cpus
from .spec import Cell

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: a killed driver leaves its workers to finish their cell
        pass


@dataclass
class _Worker:
    group: list[Cell]
    process: subprocess.Popen
    attempt: int
    log: list[str] = field(default_factory=list)


def _start(group: list[Cell], store_root: str, device: str, threads: int, attempt: int) -> _Worker:
    payload = json.dumps({"store": store_root, "device": device, "threads": threads,
                          "cells": [{"variables": c.variables, "train": c.train, "analysis": c.analysis}
                                    for c in group]})
    process = subprocess.Popen([sys.executable, "-m", "tunnelscope.sweep.worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    assert process.stdin is not None  # stdin=PIPE
    process.stdin.write(payload)
    process.stdin.close()
    return _Worker(group, process, attempt)


def slots(cpus_per_cell: float, max_concurrent: int | None) -> int:
    """How many workers run at once: ``max_concurrent``, else the cores over each cell's cpus."""
    if max_concurrent:
        return max_concurrent
    return max(1, int(usable_cpus() // max(cpus_per_cell, 1e-9)))


def run_local(groups: list[list[Cell]], store_root: str, device: str, threads: int, limit: int, retries: int,
              on_done) -> None:
    """Run every group in worker processes, ``limit`` at once; ``on_done(group, error)`` after each
    group ends for good (``error`` is None, or why the worker was lost after its retries)."""
    waiting = [(group, 0) for group in groups]
    running: list[_Worker] = []
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                group, attempt = waiting.pop(0)
                running.append(_start(group, store_root, device, threads, attempt))
            time.sleep(0.1)
            for worker in [w for w in running if w.process.poll() is not None]:
                running.remove(worker)
                code = worker.process.returncode
                stderr = worker.process.stderr.read() if worker.process.stderr else ""
                if code == 0:
                    on_done(worker.group, None)
                elif worker.attempt < retries:
                    waiting.insert(0, (worker.group, worker.attempt + 1))
                else:
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
                    on_done(worker.group, f"worker lost ({how}) after {worker.attempt + 1} attempt(s)"
                                          + (f": {last}" if last else ""))
    finally:
        for worker in running:  # interrupted: no worker outlives the driver
            worker.process.kill()
            worker.process.wait()


__all__ = ["run_local", "slots"]
