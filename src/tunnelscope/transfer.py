"""Former home of the probes pass; kept for one release as a re-export of :mod:`tunnelscope.engine.probing`."""

from .data.adapt import load_adapted  # noqa: F401
from .engine.probing import TransferStats, probe_layers

__all__ = ["TransferStats", "probe_layers"]
