"""The figure of a forgetting-against-depth experiment
(:mod:`tunnelscope.experiments.continual_depth`), drawn from its saved tables.

Left: each model's forgetting of task 1 (M1's task-1 accuracy minus M2's, through the
network's own head for task 1) against its number of probe points, with the interval of the
``depth`` table and each seed's run as a dot. Right: the task-1 probe forgetting per layer of
every model (mean over seeds), against the relative depth of the layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .experiments import Tables, experiment_figure


@experiment_figure("continual-depth", "continual-depth")
def continual_depth_figure(tables: Tables, config: dict[str, Any]) -> Figure:
    """The two-panel figure (module docstring) from ``tables["depth"]`` (``model, probe_points,
    forgetting, forgetting_lo, forgetting_hi``), ``tables["runs"]`` (``model, probe_points,
    forgetting``) and ``tables["layers"]`` (``model, layer, forgetting``)."""
    depth, runs, layers = tables["depth"], tables["runs"], tables["layers"]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    columns = ("forgetting", "forgetting_lo", "forgetting_hi", "probe_points", "seeds")
    numbers = {column: depth[column].to_numpy(dtype=float) for column in columns}
    for i, model in enumerate(depth["model"].astype(str)):
        color = f"C{i % 10}"
        mean, lo, hi, points, seeds = (float(numbers[column][i]) for column in columns)
        left.errorbar([points], [mean], yerr=[[mean - lo], [hi - mean]], fmt="o", ms=7, capsize=4, color=color,
                      label=f"{model} ({seeds:.0f} seed{'s' if seeds > 1 else ''})")
        mine = runs[runs["model"] == model]
        left.scatter(mine["probe_points"], mine["forgetting"], s=12, color=color, alpha=0.5)
        curve = layers[layers["model"] == model].groupby("layer")["forgetting"].mean()
        right.plot(curve.index / curve.index.max(), curve.to_numpy(), marker="o", ms=3, color=color, label=model)
    ordered = depth.sort_values("probe_points")
    left.plot(ordered["probe_points"], ordered["forgetting"], color="0.6", lw=1, zorder=0)
    left.axhline(0, color="k", lw=0.8)
    left.set_xticks(np.unique(depth["probe_points"]))
    left.set_xlabel("depth (probe points)")
    left.set_ylabel("task-1 accuracy, M1 minus M2")
    heads = config.get("shared", {}).get("heads", "per-task")
    left.set_title(f"forgetting of task 1 by the network ({heads} heads)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    right.axhline(0, color="k", lw=0.8)
    right.set_xlabel("relative depth of the layer (layer / last layer)")
    right.set_ylabel("task-1 probe accuracy, M1 minus M2")
    right.set_title("what each layer forgot (linear probes)")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    return fig


__all__ = ["continual_depth_figure"]
