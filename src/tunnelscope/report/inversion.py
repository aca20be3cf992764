"""The score figure of an inversion (:mod:`tunnelscope.experiments.inversion`), from its saved table.

``figures/inversion-scores``: m_g, m_i and m_r against layer, one line style per model state
(trained / untrained), each point the mean over images and restarts of ``inversion.parquet``.
The reconstruction grids (``figures/inversion-grid-STATE``) need the images themselves, so
they are drawn from the inversions (:func:`tunnelscope.report.figures.inversion_grid`), not here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ..rundir import FIGURES_DIR
from .experiments import Tables, experiment_figure

SCORE_TITLES = {"m_g": "embedding distance m_g = ‖O(a) − O(a_g)‖", "m_i": "input distance m_i = ‖a_g − a‖",
                "m_r": "reference m_r = ‖O(a) − O(a′)‖"}
SCORES_FIGURE = f"{FIGURES_DIR}/inversion-scores"


def mean_scores(scores: pd.DataFrame, metric: str, state: str | None = None) -> pd.DataFrame:
    """``metric`` averaged over images and restarts: one row per model state, layer and point
    (what :meth:`tunnelscope.experiments.inversion.Inversion.score` gives)."""
    rows = scores[scores.metric == metric]
    if state is not None:
        rows = rows[rows.state == state]
    return rows.groupby(["state", "layer", "point"], as_index=False)[["value"]].mean()


@experiment_figure("inversion", SCORES_FIGURE)
def inversion_scores(tables: Tables, config: dict[str, Any]) -> Figure | None:
    """m_g, m_i and m_r against layer (log scale), one line per model state, from ``tables["scores"]``;
    None without scores."""
    scores = tables.get("scores")
    if scores is None or scores.empty:
        return None
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for state, style in zip(dict.fromkeys(scores.state), ("-", "--", ":")):
        for ax, metric in zip(axes, SCORE_TITLES):
            s = mean_scores(scores, metric, state)
            ax.plot(s.layer, s.value, style, marker="o", ms=3, label=state)
    for ax, metric in zip(axes, SCORE_TITLES):
        ax.set_title(SCORE_TITLES[metric], fontsize=9)
        ax.set_xlabel("layer")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


__all__ = ["SCORES_FIGURE", "inversion_scores", "mean_scores"]
