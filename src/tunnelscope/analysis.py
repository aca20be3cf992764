"""Former home of the statistics pass; kept for one release as a re-export.

Use :mod:`tunnelscope.engine` (``analyze_layers``, ``cross_model_cka``),
:func:`tunnelscope.models.resolve_model` and :func:`tunnelscope.data.sample_split`.
"""

from __future__ import annotations

from .data import sample_split
from .engine.cross_model import cross_model_cka
from .engine.statistics import LayerStats, analyze_layers, run_pass
from .metrics import DEFAULT_METRICS, METRICS
from .models import resolve_model

__all__ = ["DEFAULT_METRICS", "METRICS", "LayerStats", "analyze_layers", "cross_model_cka", "resolve_model",
           "run_pass", "sample_split"]
