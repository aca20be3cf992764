"""The sweep store: a folder of atomically written files, one per cell and checkpoint.

```
STORE/cells/KEY.json                  the cell's record: variables, config, status, error
STORE/runs/TRAIN_KEY/                 its training run (checkpoints, run.json, resume.pt), shared by
                                      the cells whose training config is the same
STORE/results/KEY/step-NNNNNNN.parquet   the analysis table of one checkpoint (+ cell columns)
STORE/results/KEY/step-NNNNNNN.json      its summary; written last, so it marks the step done
```
Collecting reads only steps whose summary exists, so a cell killed mid-write leaves no
partial rows behind, and re-running never duplicates one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import SweepConfigError
from ..interrupts import pid_alive
from ..io import atomic_write, write_json
from ..results import column_name
from ..rundir import step_name, steps_in
from .spec import Cell, SweepSpec

VAR_PREFIX = "var_"


def live_status(record: dict) -> str:
    """A record's status, with a ``running`` cell whose process on this host is gone shown as
    ``dead`` (killed; run the sweep again to resume it). Cells on other hosts cannot be checked."""
    status = record.get("status", "pending")
    if status != "running" or record.get("host") not in (None, socket.gethostname()) or "pid" not in record:
        return status
    alive = _alive(int(record["pid"]))
    return "running" if alive else "dead"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process that could be a sweep worker."""
    if not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():  # not Linux: the pid exists
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "python" in cmdline or "ray" in cmdline or "tunnelscope" in cmdline


class Store:
    """Paths and reads of one sweep's store."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def run_dir(self, train_key: str) -> Path:
        return self.root / "runs" / train_key

    def record_path(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def record(self, key: str) -> dict | None:
        """The cell's record, or None if it never started."""
        path = self.record_path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def write_record(self, cell: Cell, **fields) -> None:
        record = {"key": cell.key, "variables": cell.variables, "train": cell.train, "analysis": cell.analysis,
                  **(self.record(cell.key) or {}), **fields}
        write_json(self.record_path(cell.key), record)

    def done_steps(self, key: str) -> list[int]:
        """Steps whose analysis is complete (their summary exists)."""
        return list(steps_in(self.root / "results" / key, "json"))

    def step_path(self, key: str, step: int, suffix: str) -> Path:
        """Where one checkpoint's analysis of cell ``key`` lies: its ``parquet`` table or ``json`` summary."""
        return self.root / "results" / key / step_name(step, suffix)

    def write_step(self, cell: Cell, step: int, table: pd.DataFrame, summary: Mapping[str, Any]) -> None:
        """The table of one checkpoint's analysis, then its summary (the completion mark)."""
        cols = {"cell": cell.key, "step": step, **{VAR_PREFIX + k: v for k, v in cell.variables.items()}}
        table = table.assign(**{k: [v] * len(table) for k, v in cols.items()})
        atomic_write(self.step_path(cell.key, step, "parquet"), lambda h: table.to_parquet(h, index=False))
        write_json(self.step_path(cell.key, step, "json"), {**cols, **summary})

    def status(self, spec: SweepSpec) -> pd.DataFrame:
        """One row per cell: its variables, status, analysed steps and error."""
        rows = []
        for cell in spec.cells:
            record = self.record(cell.key) or {}
            rows.append({"cell": cell.key, **cell.variables, "status": live_status(record),
                         "steps_done": len(self.done_steps(cell.key)), "error": record.get("error")})
        return pd.DataFrame(rows)

    def collect(self, spec: SweepSpec) -> pd.DataFrame:
        """Every finished step's table, one tidy frame (cell columns first); the OOD-level table is
        :func:`tunnelscope.sweep.collect` with ``level="ood"``."""
        frames = [self.read_step(cell.key, step) for cell in spec.cells for step in self.done_steps(cell.key)]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def read_step(self, key: str, step: int) -> pd.DataFrame:
        """One finished step's table; a damaged one is a one-line error saying how to redo it."""
        path = self.step_path(key, step, "parquet")
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SweepConfigError(f"{path} is damaged ({str(exc).splitlines()[0][:80]}); delete it and "
                                   f"{self.step_path(key, step, 'json').name} beside it, then run the sweep again "
                                   "to redo that step") from None

    def step_summaries(self, spec: SweepSpec) -> dict[tuple[str, int], dict[str, Any]]:
        """Every finished cell × step's summary, ``{(cell key, step): summary}`` in cell and step order."""
        return {(cell.key, step): json.loads(self.step_path(cell.key, step, "json").read_text())
                for cell in spec.cells for step in self.done_steps(cell.key)}

    def summaries(self, spec: SweepSpec, read: Mapping[tuple[str, int], dict[str, Any]] | None = None
                  ) -> pd.DataFrame:
        """One row per finished cell × step: the cell's variables and its summary's scalars
        (``read``: :meth:`step_summaries` when the caller has them already)."""
        rows = []
        for summary in (read if read is not None else self.step_summaries(spec)).values():
            row = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
            for entry in summary.get("ood", []):
                row[column_name("retained", entry["name"])] = entry["retained"]
            rows.append(row)
        return pd.DataFrame(rows)


__all__ = ["Store", "VAR_PREFIX"]
