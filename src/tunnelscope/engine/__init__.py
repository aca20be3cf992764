"""The analysis engine, in the order a run flows through it.

- :mod:`.settings`: :class:`AnalysisSettings`, how an analysis reads its data, validated in one place;
- :mod:`.analyze`: :func:`analyze`, the public entry point (statistics, probes, verdict);
- :mod:`.statistics`: the per-layer statistics pass (plan → passes → table);
- :mod:`.probing`: linear probes on the ID and OOD datasets, and the tunnel's metrics;
- :mod:`.cross_model`: CKA between the layers of two models.

``analyze``, ``analyze_layers`` and ``probe_layers`` all return one container,
:class:`tunnelscope.results.Results`, with one tidy table layout.
"""

from .analyze import ANALYZE_METRICS, analyze, analyze_features, parse_metrics
from .cross_model import cross_model_cka
from .probing import probe_layers
from .settings import AnalysisSettings
from .statistics import analyze_layers, run_pass

__all__ = ["ANALYZE_METRICS", "AnalysisSettings", "analyze", "analyze_features", "analyze_layers", "cross_model_cka",
           "parse_metrics", "probe_layers", "run_pass"]
