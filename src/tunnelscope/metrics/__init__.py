"""Per-layer metrics: streaming accumulators and the registry the statistics engine plans from.

Importing this package registers every built-in metric (the order below is the order of
``metrics="all"`` and of the docs).
"""

from __future__ import annotations

# The import order is the registration order: that of ``metrics="all"`` and of the docs.
# isort: off
from . import spectrum, collapse, cka, ridge, distance, sparsity, probe  # noqa: F401
# isort: on
from .registry import (
    LEVELS,
    PRESENTATIONS,
    REGISTRY,
    Metric,
    Options,
    PointStats,
    Presentation,
    parse_metrics,
    point_metric,
    present,
    presentation,
    register,
)

METRICS: dict[str, str] = {name: m.description for name, m in REGISTRY.items()}
DEFAULT_METRICS: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.default)

__all__ = ["DEFAULT_METRICS", "LEVELS", "METRICS", "PRESENTATIONS", "REGISTRY", "Metric", "Options", "PointStats",
           "Presentation", "parse_metrics", "point_metric", "present", "presentation", "register"]
