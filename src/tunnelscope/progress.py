"""Progress bars on standard error, shown only when someone is watching."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

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


def should_show(progress: bool | None) -> bool:
    """``None`` means: show bars when standard error is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


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


@contextmanager
def progress_bar(progress: bool | None) -> Iterator[Progress | _Silent]:
    """A rich Progress (description, bar, count, elapsed, ETA, a free ``info`` field)."""
    if not should_show(progress):
        yield _Silent()
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )
    with bar:
        yield bar
