"""Typed exceptions raised by the tunnelscope API.

Every error a user can cause derives from :class:`TunnelscopeError`; the command line
prints its message as one line and exits non-zero, with no traceback.
"""

from __future__ import annotations


class TunnelscopeError(Exception):
    """Base class of every error tunnelscope raises on bad input."""


class SpecError(TunnelscopeError, ValueError):
    """A spec string (a dataset, model or reduction spec) whose syntax is wrong, that names
    something unknown, or whose modifiers are out of range."""


class DataNotFoundError(TunnelscopeError, FileNotFoundError):
    """A dataset whose files are not on this machine."""


class ShapeError(TunnelscopeError, ValueError):
    """Inputs whose shape does not fit the model."""


class CheckpointError(TunnelscopeError):
    """A checkpoint that is corrupt, of another format, or does not match the request."""


class ProbePointError(TunnelscopeError, ValueError):
    """Probe points that cannot be found or do not fire in a forward pass."""


class InsufficientDataError(TunnelscopeError, ValueError):
    """Too few samples or classes for a measurement to mean anything (refused, not guessed)."""


class MemoryBudgetError(TunnelscopeError, MemoryError):
    """A computation whose planned state does not fit in the memory available."""


class MonitorBudgetError(TunnelscopeError, RuntimeError):
    """A training monitor whose measurements would take more of the training time than its budget."""


class CacheSpaceError(TunnelscopeError, OSError):
    """The feature cache could not reserve the disk space it needs to spill to."""


class ConfigError(TunnelscopeError, ValueError):
    """A setting (an argument or option, not a spec string) that is out of range or
    inconsistent with the others: a batch size, a probe protocol, a metric name, a device, a
    thread count, labels that do not match the runs."""


class SweepConfigError(ConfigError):
    """A sweep file (YAML) that is malformed, unsafe or too large."""


class RunDirectoryError(TunnelscopeError):
    """A run directory that is missing, partial, unreadable, or already taken."""


class MissingRowsError(RunDirectoryError, KeyError):
    """A saved results table lacks rows its summary or report needs (a ``KeyError`` too, as a
    missing metric of an in-memory table is)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(TunnelscopeError):
    """The training loss became NaN or infinite."""


class RayError(TunnelscopeError):
    """Ray could not be started or reached."""
