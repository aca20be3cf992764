"""Former home of OOD dataset adaptation; kept for one release as a re-export of :mod:`tunnelscope.data.adapt`."""

from .data.adapt import adapted_spec, load_adapted

__all__ = ["adapted_spec", "load_adapted"]
