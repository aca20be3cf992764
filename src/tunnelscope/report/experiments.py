"""Figures of experiments, registered by kind: each draws from a result's saved tables and config.

A figure function takes ``(tables, config)`` (what :meth:`ExperimentResult.tables` returns and
the config written to ``config.json``) and returns a matplotlib ``Figure``, or None when the
tables hold nothing it can draw. Because figures read only what is saved, a loaded result
draws the same figures as the one that was computed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pandas as pd
from matplotlib.figure import Figure

Tables = Mapping[str, pd.DataFrame]
FigureFunction = Callable[[Tables, dict[str, Any]], Figure | None]

F = TypeVar("F", bound=FigureFunction)

_FIGURES: dict[str, dict[str, FigureFunction]] = {}


def experiment_figure(kind: str, name: str) -> Callable[[F], F]:
    """Register the decorated function as figure ``name`` (files ``name.png``/``.svg``) of ``kind``.
    A kind's figures live in the report module named after it (``cross-cka``: ``cross_cka``),
    imported when the kind is first drawn."""
    def register(function: F) -> F:
        _FIGURES.setdefault(kind, {})[name] = function
        return function
    return register


def _registered(kind: str) -> dict[str, FigureFunction]:
    module = f"{__package__}.{kind.replace('-', '_')}"
    if kind not in _FIGURES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            # a kind with no report module has no figures
    return _FIGURES.get(kind, {})


def figure_names(kind: str) -> list[str]:
    """The names of the figures registered for ``kind``."""
    return list(_registered(kind))


def draw_experiment(kind: str, tables: Tables, config: dict[str, Any]) -> dict[str, Figure]:
    """Every figure registered for ``kind`` that its tables can show, by name."""
    drawn = {name: function(tables, config) for name, function in _registered(kind).items()}
    return {name: fig for name, fig in drawn.items() if fig is not None}


__all__ = ["FigureFunction", "draw_experiment", "experiment_figure", "figure_names"]
