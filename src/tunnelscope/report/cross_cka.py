"""The figure of a cross-model CKA experiment (:mod:`tunnelscope.experiments.cross_cka`), from its saved table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .experiments import Tables, experiment_figure


@experiment_figure("cross-cka", "cross_cka")
def cross_cka_figure(tables: Tables, config: dict[str, Any]) -> Figure:
    """Minibatch CKA between the points of two models: rows are model A's points, columns
    model B's, each placed at its relative depth (point / points), so that models of different
    depths align."""
    matrix = matrix_of(tables["cka"], config)
    la, lb = matrix.shape
    fig = Figure(figsize=(5.8, 4.8), layout="constrained")
    ax = fig.subplots()
    # cell edges at relative depth: point i of L spans ((i - 0.5) / L, (i + 0.5) / L], i = 1 … L
    image = ax.pcolormesh((np.arange(lb + 1) + 0.5) / lb, (np.arange(la + 1) + 0.5) / la,
                          matrix.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1, shading="flat")
    fig.colorbar(image, ax=ax, label="CKA")
    ax.set_xlabel(f"{matrix.columns.name or 'model B'}: relative depth ({lb} points)")
    ax.set_ylabel(f"{matrix.index.name or 'model A'}: relative depth ({la} points)")
    ax.set_aspect("equal")
    ax.set_title(f"minibatch CKA across models ({config.get('split', 'test')})", fontsize=10)
    return fig


def matrix_of(table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """The CKA matrix of a ``cka`` table: its first column (model A's points) as the index,
    named ``config["name_a"]``; the columns (model B's points) named ``config["name_b"]``."""
    matrix = table.set_index(table.columns[0]).astype(float)
    matrix.index = pd.Index([str(p) for p in matrix.index], name=config.get("name_a"))
    matrix.columns = pd.Index([str(p) for p in matrix.columns], name=config.get("name_b"))
    return matrix


__all__ = ["cross_cka_figure", "matrix_of"]
