"""Former home of :func:`analyze`; kept for one release as a re-export of :mod:`tunnelscope.engine.analyze`."""

from .engine.analyze import ANALYZE_METRICS, PROBE, analyze, parse_metrics  # noqa: F401

__all__ = ["ANALYZE_METRICS", "analyze", "parse_metrics"]
