"""Former home of the feature cache; kept for one release as a re-export of :mod:`tunnelscope.capture.cache`."""

from .capture.cache import DEFAULT_BUDGET, FeatureCache

__all__ = ["DEFAULT_BUDGET", "FeatureCache"]
