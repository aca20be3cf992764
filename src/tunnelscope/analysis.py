"""Former home of the statistics pass; kept for one release as a re-export.

Use :mod:`tunnelscope.engine` (``analyze_layers``, ``cross_model_cka``),
:func:`tunnelscope.models.resolve_model` and :func:`tunnelscope.data.sample_split`.
``LayerStats`` is now :class:`tunnelscope.results.Results`: ``stats.metric(name, split)``
became ``results.curve(name, split=split)``.
"""

from __future__ import annotations

from .data import sample_split
from .engine.cross_model import cross_model_cka
from .engine.statistics import analyze_layers, run_pass
from .metrics import DEFAULT_METRICS, METRICS
from .models import resolve_model
from .results import Results as LayerStats

__all__ = ["DEFAULT_METRICS", "METRICS", "LayerStats", "analyze_layers", "cross_model_cka", "resolve_model",
           "run_pass", "sample_split"]
