"""The figure of an explain experiment (:mod:`tunnelscope.experiments.explain`), from its saved tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .experiments import Tables, experiment_figure


@experiment_figure("explain", "explain")
def explain_figure(tables: Tables, config: dict[str, Any]) -> Figure:
    """Group means with 95% intervals per variable (one panel each), and the SHAP slopes as bars."""
    means, target = tables["group_means"], str(config["target"])
    variables = list(dict.fromkeys(means["variable"]))
    panels = len(variables) + 1
    ncols = min(panels, 4)
    nrows = -(-panels // ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, variable in zip(axes, variables):
        _draw_means(ax, means[means["variable"] == variable], variable, target)
    _draw_slopes(axes[len(variables)], tables["slopes"], bool(config.get("shap", {}).get("l1_normalise")))
    for ax in axes[panels:]:
        ax.set_axis_off()
    return fig


def _draw_means(ax: Axes, means: pd.DataFrame, variable: str, target: str) -> None:
    positions = np.arange(len(means))
    centre = means["mean"].to_numpy(dtype=float)
    low, high = means["ci_low"].to_numpy(dtype=float), means["ci_high"].to_numpy(dtype=float)
    errors = np.vstack([centre - low, high - centre])
    ax.errorbar(positions, centre, yerr=np.nan_to_num(errors), fmt="o", capsize=4)
    ax.set_xticks(positions, [level_label(level) for level in means["level"]], rotation=30, fontsize=8)
    ax.set_title(variable, fontsize=10)
    ax.set_ylabel(f"{target} (mean, 95% CI)", fontsize=8)


def level_label(level: Any) -> str:
    """A tick label: numbers to 4 significant digits (4.0 → 4, 2.547366… → 2.547), others as
    they are. A level read back from a CSV as text ("2.547366") is shown as the number it was."""
    if isinstance(level, str) and any(c in level for c in ".eE"):
        try:
            return f"{float(level):.4g}"
        except ValueError:
            return level
    if isinstance(level, (float, np.floating)):
        return f"{float(level):.4g}"
    return str(level)


def _draw_slopes(ax: Axes, slopes: pd.DataFrame, l1_normalise: bool) -> None:
    values = slopes["slope"].to_numpy(dtype=float)
    ax.barh(np.arange(len(values)), values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    ax.set_yticks(np.arange(len(values)), list(slopes["variable"]), fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_title("SHAP slope" + (" (L1-normalised)" if l1_normalise else ""), fontsize=10)


__all__ = ["explain_figure", "level_label"]
