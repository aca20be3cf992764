"""The score figure of an inversion (:mod:`tunnelscope.experiments.inversion`), from its saved table.

``figures/inversion-scores``: m_g, m_i and m_r against layer, one line style per model state
(trained / untrained), each point the mean over images and restarts of ``inversion.parquet``.
``figures/inversion-trajectory``: m_g and m_i over the descent's steps (0, 1, 2, 4, ...), one
line per layer, one row of panels per model state (the ``trajectory_*`` rows of the table).
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
TRAJECTORY_FIGURE = f"{FIGURES_DIR}/inversion-trajectory"


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


def trajectory(scores: pd.DataFrame, metric: str, state: str) -> pd.DataFrame:
    """``trajectory_<metric>`` averaged over images and restarts: layer × step."""
    rows = scores[(scores.metric == f"trajectory_{metric}") & (scores.state == state)]
    return rows.groupby(["layer", "step"]).value.mean().unstack("step")


@experiment_figure("inversion", TRAJECTORY_FIGURE)
def inversion_trajectory(tables: Tables, config: dict[str, Any]) -> Figure | None:
    """m_g and m_i against the descent's step (log-log), one line per layer and one row of panels
    per model state; None without trajectory rows (inversions saved before they were recorded)."""
    scores = tables.get("scores")
    if scores is None or "step" not in scores or not scores.metric.str.startswith("trajectory_").any():
        return None
    states = list(dict.fromkeys(scores.state))
    fig = Figure(figsize=(10, 3.4 * len(states)), layout="constrained")
    axes = fig.subplots(len(states), 2, squeeze=False)
    for row, state in zip(axes, states):
        for ax, metric in zip(row, ("m_g", "m_i")):
            table = trajectory(scores, metric, state)
            for layer, values in table.iterrows():
                ax.plot(values.index + 1, values.to_numpy(), marker="o", ms=2, label=f"layer {layer}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{state}: {SCORE_TITLES[metric]}", fontsize=9)
            ax.set_xlabel("step + 1")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, ncol=2)
    return fig


__all__ = ["SCORES_FIGURE", "TRAJECTORY_FIGURE", "inversion_scores", "inversion_trajectory", "mean_scores",
           "trajectory"]
