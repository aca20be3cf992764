"""Figures of experiments, registered by kind: each draws from a result's saved tables and config.

A figure function takes ``(tables, config)`` (what :meth:`ExperimentResult.tables` returns and
the config written to ``config.json``) and returns a matplotlib ``Figure``, or None when the
tables hold nothing it can draw. Because figures read only what is saved, a loaded result
draws the same figures as the one that was computed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

Tables = Mapping[str, pd.DataFrame]
FigureFunction = Callable[[Tables, dict[str, Any]], Figure | None]

_FIGURES: dict[str, dict[str, FigureFunction]] = {}
# the report module that registers each kind's figures, imported when the kind is first drawn
_MODULES = {"agreement": "agreement", "explain": "explain", "continual": "continual",
            "interventions": "interventions", "cross-cka": "cross_cka", "dynamics": "dynamics",
            "inversion": "inversion"}


def experiment_figure(kind: str, name: str) -> Callable[[FigureFunction], FigureFunction]:
    """Register the decorated function as figure ``name`` (files ``name.png``/``.svg``) of ``kind``."""
    def register(function: FigureFunction) -> FigureFunction:
        _FIGURES.setdefault(kind, {})[name] = function
        return function
    return register


def _registered(kind: str) -> dict[str, FigureFunction]:
    if kind not in _FIGURES and kind in _MODULES:
        importlib.import_module(f"{__package__}.{_MODULES[kind]}")
    return _FIGURES.get(kind, {})


def figure_names(kind: str) -> list[str]:
    """The names of the figures registered for ``kind``."""
    return list(_registered(kind))


def draw_experiment(kind: str, tables: Tables, config: dict[str, Any]) -> dict[str, Figure]:
    """Every figure registered for ``kind`` that its tables can show, by name."""
    drawn = {name: function(tables, config) for name, function in _registered(kind).items()}
    return {name: fig for name, fig in drawn.items() if fig is not None}


__all__ = ["FigureFunction", "draw_experiment", "experiment_figure", "figure_names"]
