"""Former home of the probes pass; kept for one release as a re-export of :mod:`tunnelscope.engine.probing`.

``TransferStats`` is now :class:`tunnelscope.results.Results` (tidy rows: ``probe_acc``,
``probe_loss``, ``probe_converged``, ``ncc_acc``); read a curve with
``results.curve("probe_acc", dataset)``.
"""

from .data.adapt import load_adapted  # noqa: F401
from .engine.probing import probe_layers
from .results import Results as TransferStats

__all__ = ["TransferStats", "probe_layers"]
