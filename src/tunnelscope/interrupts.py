"""SIGTERM and Ctrl-C as one clean interruption, never delivered in the middle of an import.

The CLI turns SIGTERM into ``KeyboardInterrupt`` so that temporary files are removed and a training
run stays resumable. Raised at an arbitrary point, that exception can land inside an import (the
CLI imports torch, matplotlib and scikit-learn lazily): a C extension's initialisation can then
abort the interpreter, a library may turn it into an ``ImportError`` or ``OSError`` and report a
wrong error, and CPython exits by SIGINT (status -2) once an ``exec``-built function such as a
dataclass's ``__init__`` was interrupted, whatever status the CLI returned. So the handler looks
at the interrupted frames first: inside an import or ``exec``-generated code, or inside an
:func:`uninterrupted` section (file writes), it re-checks every :data:`RETRY_SECONDS` with a
one-shot timer and raises as soon as that code has finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

RETRY_SECONDS = 0.05
_DEFERRED_FILES = ("<frozen importlib", "<string>")
_uninterrupted = 0  # depth of open :func:`uninterrupted` sections


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A section that an installed handler never interrupts: a SIGTERM or Ctrl-C arriving inside
    it is raised shortly after it ends. For writes through C++ code that calls back into Python
    (``torch.save`` to a file object): interrupted there, the writer's destructor later writes to
    a closed file and the process aborts."""
    global _uninterrupted
    _uninterrupted += 1
    try:
        yield
    finally:
        _uninterrupted -= 1


def in_import_or_exec(frame: FrameType | None) -> bool:
    """Whether ``frame`` or one of its callers runs import machinery or ``exec``-generated code."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(_DEFERRED_FILES):
            return True
        frame = frame.f_back
    return False


def interrupt(_signum: int, frame: FrameType | None) -> None:
    """Signal handler: raise ``KeyboardInterrupt`` now, or shortly after the current import,
    ``exec``-built code or :func:`uninterrupted` section ends."""
    if _uninterrupted or in_import_or_exec(frame):
        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM and SIGINT through :func:`interrupt`, unless the embedding program set its own."""
    for number, default in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(number) is default:
            signal.signal(number, interrupt)


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: a zombie has state Z
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    return True

