"""Figures of one training run's dynamics (:func:`tunnelscope.experiments.dynamics.analyze_run`).

- ``heatmaps``: layer × training-step heatmaps of chosen metrics (ID probe accuracy, the
  probe accuracy on each OOD set, numerical rank, ...), one column per analysed checkpoint,
  with the tunnel start of each checkpoint drawn over them as a line;
- ``tunnel``: the tunnel start, the mean % of OOD accuracy retained and the model's own
  accuracy against the training step, with their 95% intervals.

The step axis is ``log(1 + step)``: the early checkpoints are dense (0, 1, 2, 4, ... and
every step up to ``dense_steps``) and the late ones sparse. The functions read plain tables
(the dynamics table and its per-step summary table), not the module that writes them; both
figures are registered for the ``dynamics`` kind (:mod:`tunnelscope.report.experiments`) as
``figures/heatmaps`` and ``figures/tunnel``, drawn from a saved experiment's tables and config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from ..metrics import presentation
from ..results import ID_ALIAS, id_name_of, lower, upper
from ..rundir import FIGURES_DIR
from ..summary import MEAN_RETAINED, MODEL_ACCURACY, POINTS, TUNNEL_START
from .experiments import Tables, experiment_figure

HEATMAP_METRICS: tuple[str, ...] = ("probe_acc", "rank")
START_COLOUR = "white"
MAX_STEP_TICKS = 12
LAYER_TABLE = "layers"  # the key of the dynamics table among the tables its figures are drawn from


def _to_axis(steps: np.ndarray) -> np.ndarray:
    return np.log1p(np.asarray(steps, dtype=float))


def _from_axis(values: np.ndarray) -> np.ndarray:
    return np.expm1(np.asarray(values, dtype=float))


def step_edges(steps: Sequence[int]) -> np.ndarray:
    """Cell edges of one heatmap column per step: midpoints in ``log(1 + step)``, the outer
    edges half a neighbouring gap beyond the first and last step."""
    centres = _to_axis(np.asarray(sorted(steps)))
    if len(centres) == 1:
        return _from_axis(np.array([centres[0] - 0.5, centres[0] + 0.5]))
    mids = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (centres[1] - centres[0]) / 2
    last = centres[-1] + (centres[-1] - centres[-2]) / 2
    return _from_axis(np.concatenate([[first], mids, [last]]))


def step_ticks(steps: Sequence[int], most: int = MAX_STEP_TICKS) -> list[int]:
    """At most ``most`` of ``steps``, spread evenly along the ``log(1 + step)`` axis (first and last kept)."""
    ordered = sorted(steps)
    if len(ordered) <= most:
        return ordered
    position = _to_axis(np.array(ordered))
    gap = (position[-1] - position[0]) / (most - 1)
    kept = [0]
    for i in range(1, len(ordered) - 1):
        if position[i] - position[kept[-1]] >= gap:
            kept.append(i)
    if len(kept) > 1 and position[-1] - position[kept[-1]] < gap / 2:
        kept.pop()  # too close to the last step, which is always shown
    return [ordered[i] for i in [*kept, len(ordered) - 1]]


def step_axis(ax: Axes, steps: Sequence[int], steps_per_epoch: int | None = None) -> None:
    """A ``log(1 + step)`` x axis with ticks at analysed steps and epoch ends dotted."""
    ax.set_xscale("function", functions=(_to_axis, _from_axis))
    edges = step_edges(steps)
    ax.set_xlim(edges[0], edges[-1])
    ticks = step_ticks(steps)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    labels = [str(t) for t in ticks]
    ax.set_xticklabels(labels, rotation=45 if max(map(len, labels)) > 3 else 0, fontsize=7)
    ax.xaxis.set_minor_locator(FixedLocator([]))
    if steps_per_epoch:
        for end in range(steps_per_epoch, int(max(steps)) + 1, steps_per_epoch):
            ax.axvline(end, color="grey", ls=":", lw=1)
    ax.set_xlabel("training step (log(1 + step) axis" + ("; dotted: epoch ends)" if steps_per_epoch else ")"))


def heatmap_grid(table: pd.DataFrame, metric: str, dataset: str = "id", split: str = "test") -> pd.DataFrame:
    """One metric of the model (no reference rows, no pairwise rows) as a layers × steps frame;
    ``dataset="id"`` means the ID data, whatever the table names it."""
    if dataset == ID_ALIAS:
        dataset = id_name_of(table)
    rows = table[(table.metric == metric) & (table.dataset == dataset) & (table.split == split)
                 & table.other_point.isna() & table.reference.isna()]
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="layer", columns="step", values="value", aggfunc="first").sort_index()


def heatmap_panels(table: pd.DataFrame, metrics: Sequence[str] = HEATMAP_METRICS) -> list[tuple[str, str, str]]:
    """``(metric, dataset, title)`` of every panel the table allows: probe accuracy on the ID set
    and on each OOD set, every other metric on the ID set."""
    id_name = id_name_of(table)
    datasets = list(dict.fromkeys(table.dataset))
    datasets = sorted(datasets, key=lambda d: (d != id_name, datasets.index(d)))
    panels = []
    for metric in metrics:
        for dataset in datasets if metric == "probe_acc" else [id_name]:
            if not heatmap_grid(table, metric, dataset).empty:
                where = "ID" if dataset == id_name else f"OOD {dataset}"
                panels.append((metric, dataset, f"{where}: {presentation(metric).title}"))
    return panels


def heatmap_figure(table: pd.DataFrame, steps: pd.DataFrame, metrics: Sequence[str] = HEATMAP_METRICS,
                   steps_per_epoch: int | None = None, title: str = "", stable: int | None = None) -> Figure | None:
    """One layer × step heatmap per panel (:func:`heatmap_panels`), stacked with a shared step
    axis, the tunnel start of each step drawn as a line and, given ``stable``, the step from
    which it stays within one layer marked; None when no metric is in the table."""
    panels = heatmap_panels(table, metrics)
    if not panels:
        return None
    all_steps = sorted(int(s) for s in table.step.unique())
    fig = Figure(figsize=(8, 2.7 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    for ax, (metric, dataset, panel_title) in zip(axes[:, 0], panels):
        grid = heatmap_grid(table, metric, dataset).reindex(columns=all_steps)
        layers = grid.index.to_numpy(dtype=float)
        layer_edges = np.concatenate([layers - 0.5, [layers[-1] + 0.5]])
        mesh = ax.pcolormesh(step_edges(all_steps), layer_edges, grid.to_numpy(dtype=float), cmap="viridis",
                             shading="flat")
        fig.colorbar(mesh, ax=ax, pad=0.01)
        _overlay_start(ax, steps)
        _mark_stable(ax, stable)
        ax.set_ylabel("layer (0 = input)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(panel_title, fontsize=9)
        step_axis(ax, all_steps, steps_per_epoch)
    for ax in axes[:-1, 0]:
        ax.set_xlabel("")
    if (TUNNEL_START in steps and steps[TUNNEL_START].notna().any()) or stable is not None:
        axes[0, 0].legend(loc="upper left", fontsize=7, framealpha=0.6)
    fig.suptitle(title or "layers over training", fontsize=10)
    return fig


def _mark_stable(ax: Axes, stable: int | None) -> None:
    """A dashed line at the step from which the tunnel start stays within one layer (a monitor's)."""
    if stable is not None:
        ax.axvline(stable, color="white", ls="--", lw=1.2, label=f"tunnel start stable from step {stable}")


def _overlay_start(ax: Axes, steps: pd.DataFrame) -> None:
    """The tunnel start (τ = 0.95) of each analysed step, as a line over a heatmap."""
    if TUNNEL_START not in steps or not steps[TUNNEL_START].notna().any():
        return
    rows = steps.sort_values("step")
    ax.plot(rows.step, rows[TUNNEL_START].astype(float), color=START_COLOUR, marker="o", ms=3, lw=1.5,
            label="tunnel start (τ = 0.95)")


def tunnel_figure(steps: pd.DataFrame, steps_per_epoch: int | None = None, title: str = "") -> Figure | None:
    """The tunnel start, the mean % OOD retained and the model's accuracy against the step, each
    with its 95% interval as a band where one was computed; None when the table has none of them."""
    panels = [(key, label) for key, label in ((TUNNEL_START, "tunnel start (layer, τ = 0.95)"),
                                              (MEAN_RETAINED, "mean % OOD accuracy retained"),
                                              (MODEL_ACCURACY, "model test accuracy"))
              if key in steps and steps[key].notna().any()]
    if not panels:
        return None
    rows = steps.sort_values("step")
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        values = rows[key].astype(float)
        ax.plot(rows.step, values, marker="o", ms=4)
        if lower(key) in rows and rows[lower(key)].notna().any():
            ax.fill_between(rows.step, rows[lower(key)].astype(float), rows[upper(key)].astype(float), alpha=0.25,
                            lw=0, label="95% interval")
            ax.legend(fontsize=7)
        if key == TUNNEL_START:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if POINTS in rows and rows[POINTS].notna().any():  # the whole depth: layer 0 (input) to the last
                ax.set_ylim(-0.5, float(rows[POINTS].max()) + 0.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        step_axis(ax, rows.step.astype(int).tolist(), steps_per_epoch)
    fig.suptitle(title or "the tunnel over training", fontsize=10)
    return fig


def dynamics_figures(table: pd.DataFrame, steps: pd.DataFrame, metrics: Sequence[str] = HEATMAP_METRICS,
                     steps_per_epoch: int | None = None, title: str = "") -> dict[str, Figure]:
    """The figures the tables allow, by name: ``heatmaps`` and ``tunnel``."""
    figures = {"heatmaps": heatmap_figure(table, steps, metrics, steps_per_epoch, title),
               "tunnel": tunnel_figure(steps, steps_per_epoch, title)}
    return {name: fig for name, fig in figures.items() if fig is not None}


DYNAMICS_FIGURES = ("heatmaps", "tunnel")


def _title(config: dict[str, Any]) -> str:
    run = config.get("run") or {}
    return f"{run['model']} on {run['data']}" if run.get("model") else ""


@experiment_figure("dynamics", f"{FIGURES_DIR}/heatmaps")
def heatmaps_from_tables(tables: Tables, config: dict[str, Any]) -> Figure | None:
    """:func:`heatmap_figure` of a saved dynamics experiment: its layer table (``tables["layers"]``,
    ``dynamics.parquet``) and ``steps``, the metrics ``config["heatmaps"]``; None without the layer table."""
    if LAYER_TABLE not in tables:
        return None
    metrics = config.get("heatmaps")
    metrics = HEATMAP_METRICS if metrics is None else metrics
    steps_per_epoch = (config.get("run") or {}).get("steps_per_epoch")
    return heatmap_figure(tables[LAYER_TABLE], tables["steps"], metrics, steps_per_epoch, _title(config),
                          config.get("tunnel_stable_step"))


@experiment_figure("dynamics", f"{FIGURES_DIR}/tunnel")
def tunnel_from_tables(tables: Tables, config: dict[str, Any]) -> Figure | None:
    """:func:`tunnel_figure` of a saved dynamics experiment, from its ``steps`` table."""
    return tunnel_figure(tables["steps"], (config.get("run") or {}).get("steps_per_epoch"), _title(config))


__all__ = ["DYNAMICS_FIGURES", "HEATMAP_METRICS", "LAYER_TABLE", "dynamics_figures", "heatmap_figure", "heatmap_grid",
           "heatmap_panels", "heatmaps_from_tables", "lower", "step_axis", "step_edges", "step_ticks", "tunnel_figure",
           "tunnel_from_tables", "upper"]
