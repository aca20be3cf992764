"""The analysis engine: the statistics pass (plan → passes → table) and cross-model CKA."""

from .cross_model import cross_model_cka
from .statistics import LayerStats, analyze_layers, run_pass

__all__ = ["LayerStats", "analyze_layers", "cross_model_cka", "run_pass"]
