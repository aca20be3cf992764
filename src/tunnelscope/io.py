"""Atomic file writes: write to a temporary name in the same folder, then rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .interrupts import uninterrupted


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it into place.

    A crash or Ctrl-C leaves either the old file or the new one, never half of one. Under the
    CLI's signal handler a SIGTERM or Ctrl-C waits until the file is in place
    (:func:`tunnelscope.interrupts.uninterrupted`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uninterrupted():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:  # a read-only or full folder: name the file the user asked for, not the temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.filename in (tmp, None) and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and NaN/inf as None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON (see :func:`jsonable`), atomically."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"
    return atomic_write(path, lambda h: h.write(text.encode()))


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return atomic_write(path, lambda h: h.write(text.encode()))
