"""tunnelscope: what every layer of a deep network does to its data."""

from __future__ import annotations

__version__ = "0.1.0"

from . import data, models  # noqa: E402
from .checkpoint import load_model  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError, DataNotFoundError, ProbePointError, ShapeError, SpecError, TunnelscopeError,
)
from .pipeline import analyze  # noqa: E402
from .results import Results  # noqa: E402
from .train import train  # noqa: E402

__all__ = [
    "CheckpointError", "DataNotFoundError", "ProbePointError", "ShapeError", "SpecError",
    "Results", "TunnelscopeError", "analyze", "data", "load_model", "models", "train", "__version__",
]
