"""Reading probe points: forward hooks, reductions to vectors, and the feature cache.

- :mod:`.hooks`: :class:`Capture` (hooks on a model's probe points, one streaming pass),
  :func:`run_points` and :func:`activations`;
- :mod:`.reduce`: :class:`Reduction` (``pool2``, ``gap``, ``flatten``, ``project:D``, ...);
- :mod:`.cache`: :class:`FeatureCache`, a split's features kept for the probes.

The per-batch container, :class:`tunnelscope.features.Features`, lives below both the
capture and the metrics, so neither imports the other.
"""

from ..features import Features, joint_features, point_views
from .cache import DEFAULT_BUDGET, FeatureCache
from .hooks import DEFAULT_MAX_DIM, INPUT_POINT, Capture, activations, capture_for, run_points
from .reduce import Reduction

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MAX_DIM", "INPUT_POINT", "Capture", "FeatureCache", "Features", "Reduction",
           "activations", "capture_for", "joint_features", "point_views", "run_points"]
