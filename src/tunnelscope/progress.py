"""Progress on standard error: a live bar where one can be drawn (a terminal, or a notebook
with ipywidgets), else a plain line per task every half minute (logs, pipes, notebooks
without widgets), or nothing when switched off."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


LINE_EVERY_S = 30.0  # a plain progress line per task at most this often (env TUNNELSCOPE_PROGRESS_EVERY)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _can_draw() -> bool:
    """True where a live bar renders: a terminal, or a notebook with ipywidgets installed."""
    if _in_notebook():
        return importlib.util.find_spec("ipywidgets") is not None
    return sys.stderr.isatty()


def progress_mode(progress: bool | None) -> str:
    """``bar``, ``lines`` or ``off``: ``False`` is off; otherwise a live bar where one can be
    drawn and plain periodic lines elsewhere (``None`` and ``True`` alike)."""
    if progress is False:
        return "off"
    return "bar" if _can_draw() else "lines"


def should_show(progress: bool | None) -> bool:
    """True when a live bar is drawn (see :func:`progress_mode`)."""
    return progress_mode(progress) == "bar"


class _Silent:
    """Stands in for a rich Progress when bars are off."""

    def add_task(self, *args, **kwargs) -> TaskID:
        return TaskID(0)

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass

    def remove_task(self, *args, **kwargs) -> None:
        pass


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    info: str = ""
    started: float = 0.0
    last_line: float = 0.0


class _Lines:
    """Stands in for a rich Progress where no bar can be drawn: one plain line per task on
    standard error at most every ``every`` seconds, and one when a task that took longer ends."""

    def __init__(self, every: float, stream: Any = None) -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self.tasks: dict[int, _Task] = {}

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        now = time.monotonic()
        task_id = TaskID(len(self.tasks))
        self.tasks[task_id] = _Task(description, total, 0.0, str(fields.get("info", "")), now, now)
        return task_id

    def update(self, task_id: TaskID, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self.tasks.get(task_id)
        if task is None:
            return
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        task.total = total if total is not None else task.total
        task.description = description if description is not None else task.description
        task.info = str(fields.get("info", task.info))
        self._maybe_print(task)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: TaskID) -> None:
        self.tasks.pop(task_id, None)

    def _maybe_print(self, task: _Task) -> None:
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if now - task.last_line < self.every and not (done and now - task.started >= self.every):
            return
        task.last_line = now
        elapsed = now - task.started
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        share = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
        eta = ""
        if task.total and 0 < task.completed < task.total:
            eta = f", about {elapsed * (task.total - task.completed) / task.completed:.0f} s to go"
        info = f" {task.info}" if task.info else ""
        print(f"{task.description}: {count}{share}, {elapsed:.0f} s{eta}{info}", file=self.stream, flush=True)


def line_every() -> float:
    """Seconds between plain progress lines (``TUNNELSCOPE_PROGRESS_EVERY``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("TUNNELSCOPE_PROGRESS_EVERY", LINE_EVERY_S)))
    except ValueError:
        return LINE_EVERY_S


@contextmanager
def progress_bar(progress: bool | None) -> Iterator[Progress | _Silent | _Lines]:
    """A rich Progress (description, bar, count, elapsed, ETA, a free ``info`` field) where it
    can be drawn; plain periodic lines where it cannot; nothing for ``progress=False``."""
    mode = progress_mode(progress)
    if mode == "off":
        yield _Silent()
        return
    if mode == "lines":
        yield _Lines(line_every())
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )
    with bar:
        yield bar
