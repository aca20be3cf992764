"""The figure of an agreement experiment (:mod:`tunnelscope.experiments.agreement`), from its saved tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .experiments import Tables, experiment_figure


@experiment_figure("agreement", "agreement")
def agreement_figure(tables: Tables, config: dict[str, Any]) -> Figure:
    """Agreement heatmap (left) and, for two groups (``config["figure_groups"]``, default the
    first two), the per-class accuracy difference with the seed-to-seed band, and the mean
    absolute class-accuracy difference between models of one group and of different groups (right)."""
    groups = list(dict.fromkeys(config["groups"]))
    pair = config.get("figure_groups") or (groups[:2] if len(groups) >= 2 else None)
    fig = Figure(figsize=(12, 5), layout="constrained")
    heat_ax, diff_ax = fig.subplots(1, 2, width_ratios=[1, 1.3])
    _draw_heatmap(heat_ax, agreement_matrix(tables["pairs"], config["labels"]))
    if pair is None:
        diff_ax.axis("off")
        diff_ax.text(0.5, 0.5, "one group only: no between-group difference", ha="center", va="center")
    else:
        _draw_class_difference(diff_ax, tables["group_classes"], pair[0], pair[1], config.get("level", 0.95))
    return fig


def agreement_matrix(pairs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """``M x M`` prediction agreement from the pairs table (1 on the diagonal)."""
    position = {label: k for k, label in enumerate(labels)}
    values = np.eye(len(labels))
    for a, b, agreement in zip(pairs["model_a"], pairs["model_b"], pairs["agreement"]):
        values[position[a], position[b]] = values[position[b], position[a]] = float(agreement)
    return pd.DataFrame(values, index=labels, columns=labels)


def _draw_class_difference(ax: Axes, group_classes: pd.DataFrame, group_a: str, group_b: str, level: float) -> None:
    forward = group_classes[(group_classes.group_a == group_a) & (group_classes.group_b == group_b)]
    rows = forward if len(forward) else group_classes[(group_classes.group_a == group_b)
                                                      & (group_classes.group_b == group_a)]
    sign = 1.0 if len(forward) else -1.0  # the table holds each pair once, in the order the groups first appear
    rows = rows.sort_values("class")
    x = np.arange(len(rows))
    band = np.nan_to_num(rows["seed_band"].to_numpy(dtype=float))
    ax.bar(x, 2 * band, bottom=-band, width=0.8, color="0.88", label=f"seed band ({level:.0%} t interval)")
    ax.bar(x, sign * rows["diff"].to_numpy(dtype=float), color="tab:blue", width=0.45,
           label=f"{group_a} − {group_b} (seed means)")
    ax.scatter(x, rows["within_abs"], marker="_", s=250, linewidths=2, color="0.2", zorder=3,
               label="mean |seed − seed|, same group")
    ax.scatter(x, rows["between_abs"], marker="x", s=40, color="tab:red", zorder=3,
               label="mean |model − model|, across groups")
    ax.axhline(0, color="black", lw=0.8)
    names = [str(n) for n in rows["class_name"]]
    ax.set_xticks(x, names, rotation=45 if len(x) > 6 else 0, ha="right" if len(x) > 6 else "center")
    ax.set_ylabel("class accuracy difference")
    ax.set_title(f"per-class accuracy: {group_a} vs {group_b}")
    ax.legend(fontsize=8)


def _draw_heatmap(ax: Axes, matrix: pd.DataFrame) -> None:
    values = matrix.to_numpy()
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    low = float(off_diagonal.min()) if off_diagonal.size else 0.0
    low = min(low, 1.0 - 1e-3)
    image = ax.imshow(values, cmap="viridis", vmin=low, vmax=1.0)
    ticks = list(range(len(matrix)))
    ax.set_xticks(ticks, [str(c) for c in matrix.columns], rotation=45, ha="right")
    ax.set_yticks(ticks, [str(i) for i in matrix.index])
    if len(matrix) <= 12:
        for i in ticks:
            for j in ticks:
                bright = (values[i, j] - low) / (1.0 - low) > 0.6
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if bright else "white")
    ax.set_title("prediction agreement (fraction of examples with the same predicted class)", fontsize=10)
    fig = ax.get_figure()
    if fig is not None:
        fig.colorbar(image, ax=ax, shrink=0.8)


__all__ = ["agreement_figure", "agreement_matrix"]
