"""The figure of a continual-learning experiment (:mod:`tunnelscope.experiments.continual`),
drawn from its saved tables (``swaps``, ``forgetting``) and config.

Left: test accuracy on task 1 and task 2 of every extractor/tunnel combination. Right:
task-1 linear-probe accuracy per layer of the model after task 1 (M1) and after task 2
(M2), with the split point between extractor and tunnel marked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .experiments import Tables, experiment_figure

TASK_COLUMNS = (("task1_acc", "task 1"), ("task2_acc", "task 2"))


def _swap_bars(ax: Axes, swaps: pd.DataFrame) -> None:
    """Grouped bars: one group per combination (column ``combination``), one bar per task; a
    missing value reads n/a."""
    names = [str(n) for n in swaps["combination"]]
    x = np.arange(len(names))
    width = 0.38
    for i, (column, label) in enumerate(TASK_COLUMNS):
        values = swaps[column].to_numpy(dtype=float)
        offsets = x + (i - 0.5) * width
        ax.bar(offsets, np.nan_to_num(values), width, label=label, color=f"C{i}")
        for xi, value in zip(offsets, values):
            text, y = (f"{value:.2f}", value) if math.isfinite(value) else ("n/a", 0.0)
            ax.text(xi, y + 0.01, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("test accuracy")
    ax.set_title("extractor (E) and tunnel (T) of M1 and M2, swapped")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=2, fontsize=8)


def _forgetting_curves(ax: Axes, forgetting: pd.DataFrame, split_layer: int, split_label: str) -> None:
    """Task-1 probe accuracy per layer of M1 and M2, the split point as a dashed line."""
    ax.plot(forgetting["layer"], forgetting["acc_M1"], marker="o", ms=4, label="M1 (after task 1)", color="C0")
    ax.plot(forgetting["layer"], forgetting["acc_M2"], marker="o", ms=4, label="M2 (after task 2)", color="C3")
    ax.axvline(split_layer, color="k", ls="--", lw=1, label=f"split: {split_label}")
    ax.axvspan(split_layer + 0.5, int(forgetting["layer"].max()) + 0.5, color="#f4d58d", alpha=0.4, lw=0,
               label="tunnel side (T)")
    layers = forgetting["layer"].to_numpy()
    ax.set_xticks(layers if len(layers) <= 24 else np.linspace(layers[0], layers[-1], 12).round().astype(int))
    ax.set_xlabel("layer (probe point)")
    ax.set_ylabel("task-1 linear-probe accuracy")
    ax.set_title("what each layer still knows of task 1")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)


@experiment_figure("continual", "continual")
def continual_figure(tables: Tables, config: dict[str, Any]) -> Figure:
    """The two-panel figure of a continual-learning result (see the module docstring).

    ``tables["swaps"]`` has columns ``combination``, ``task1_acc`` and ``task2_acc``;
    ``tables["forgetting"]`` has ``layer``, ``acc_M1`` and ``acc_M2``; ``config["split"]`` names
    the split point (``layer``, ``point``, ``source``)."""
    split = config["split"]
    how = "M1's tunnel start" if split["source"] == "tunnel_start" else "given"
    label = f"layer {split['layer']} ({split['point']}), {how}"
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
    _swap_bars(left, tables["swaps"])
    _forgetting_curves(right, tables["forgetting"], int(split["layer"]), label)
    return fig


__all__ = ["continual_figure"]
