"""tunnelscope: what every layer of a deep network does to its data.

The public names are imported on first use (PEP 562), so that ``import tunnelscope`` and
``tunnelscope --help`` do not pay for torch, pandas or matplotlib.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (
    CheckpointError,
    ConfigError,
    DataNotFoundError,
    InsufficientDataError,
    MemoryBudgetError,
    MonitorBudgetError,
    ProbePointError,
    RunDirectoryError,
    ShapeError,
    SpecError,
    SweepConfigError,
    TrainingDivergedError,
    TunnelscopeError,
)

if TYPE_CHECKING:
    from . import data, models, report
    from .engine.analyze import analyze, analyze_features
    from .experiments.monitor import Monitor
    from .models import load_model
    from .results import Results
    from .train import train

# public name -> (module, attribute); attribute None: the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    "analyze": ("engine.analyze", "analyze"), "analyze_features": ("engine.analyze", "analyze_features"),
    "Results": ("results", "Results"), "train": ("train", "train"),
    "load_model": ("models", "load_model"), "data": ("data", None), "models": ("models", None),
    "report": ("report", None), "analyze_run": ("experiments.dynamics", "analyze_run"),
    "Monitor": ("experiments.monitor", "Monitor"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(f".{module}", __name__)
    value = value if attribute is None else getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """Keeps ``tunnelscope.train`` the training function: importing the ``train`` subpackage
    (``tunnelscope.train.loop``, say) would otherwise rebind the name to the subpackage."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "CheckpointError", "ConfigError", "DataNotFoundError", "InsufficientDataError", "MemoryBudgetError", "Monitor",
    "MonitorBudgetError", "ProbePointError", "Results", "RunDirectoryError", "ShapeError", "SpecError",
    "SweepConfigError", "TrainingDivergedError", "TunnelscopeError", "__version__", "analyze", "analyze_features",
    "analyze_run", "data", "load_model", "models", "report", "train",
]
