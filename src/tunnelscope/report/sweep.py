"""Sweep figures and the sweep's HTML report.

- Aggregates (each cell's last analysed checkpoint): tunnel length, mean % OOD retained and
  the NCC effective depth (Galanti et al.)
  against each swept variable (and the number of classes when it varies), one line per
  combination of the other variables, mean ± 95% CI (Student t) over seeds.
- Dynamics (cells with several analysed checkpoints): layer × checkpoint heatmaps of probe
  accuracy and numerical rank, and the tunnel start against training step.
- CKA per cell (:func:`cka_grid_figure`): one heatmap per cell, laid out as the grid.
- What explains transfer (:mod:`tunnelscope.report.sweep_explain`): group means, SHAP slopes and
  their figures for % retained, Pearson and alignment over the OOD-level table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..io import write_text
from ..results import column_name, id_name_of
from ..rundir import FIGURES_DIR
from ..summary import BEST_TRANSFER_LAYER, EFFECTIVE_DEPTH, MEAN_RETAINED, POINTS, TUNNEL_LENGTH, TUNNEL_START
from ..sweep.ood_table import ood_table
from ..sweep.spec import SweepSpec
from ..sweep.store import VAR_PREFIX, Store
from ..uncertainty import mean_ci
from .figures import save_figures, subplots
from .html import figure_html, page
from .sweep_explain import explain_section

SEED_NAMES = ("seed", "seeds")
Y_METRICS = {TUNNEL_LENGTH: "tunnel length (points, τ = 0.95)", MEAN_RETAINED: "mean % OOD retained",
             EFFECTIVE_DEPTH: "NCC effective depth (layer)"}


def final_summaries(summaries: pd.DataFrame) -> pd.DataFrame:
    """Each cell's row at its last analysed step."""
    if summaries.empty:
        return summaries
    return summaries.sort_values("step").drop_duplicates("cell", keep="last")


def aggregate_figures(spec: SweepSpec, summaries: pd.DataFrame) -> dict:
    """One figure per swept variable (and classes): y metrics against it, mean ± 95% CI over seeds."""
    final = final_summaries(summaries)
    if final.empty:
        return {}
    variables = [v for v in spec.grid if v not in SEED_NAMES and final[VAR_PREFIX + v].nunique() > 1]
    xs = [VAR_PREFIX + v for v in variables]
    if "classes" in final and final["classes"].nunique() > 1 and not variables:
        xs.append("classes")
    ys = [y for y in Y_METRICS if y in final and final[y].notna().any()]
    if not ys:  # statistics-only sweeps have no tunnel numbers to aggregate
        return {}
    figures = {}
    for x in xs:
        others = [VAR_PREFIX + v for v in variables if VAR_PREFIX + v != x]
        fig, axes = subplots(1, len(ys), figsize=(5.5 * len(ys), 4), squeeze=False)
        ticks = sorted(final[x].unique(), key=lambda v: (isinstance(v, str), v))  # one order for every line
        position = {v: i for i, v in enumerate(ticks)}
        for ax, y in zip(axes[0], ys):
            groups = final.groupby(others, dropna=False) if others else [((), final)]
            for key, group in groups:
                points = sorted(((position[xv], *mean_ci(g[y].to_numpy())) for xv, g in group.groupby(x)))
                label = ", ".join(f"{o.removeprefix(VAR_PREFIX)}={k}" for o, k in
                                  zip(others, key if isinstance(key, tuple) else (key,))) or None
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(ticks)), [str(v) for v in ticks])
            ax.set_xlabel(x.removeprefix(VAR_PREFIX))
            ax.set_ylabel(Y_METRICS[y])
            ax.grid(alpha=0.3)
            if others:
                ax.legend(fontsize=8)
        fig.suptitle("mean ± 95% CI over seeds; last analysed checkpoint of each cell", fontsize=9)
        figures[f"by-{x.removeprefix(VAR_PREFIX)}"] = fig
    return figures


def dynamics_figure(table: pd.DataFrame, summaries: pd.DataFrame, label: str):
    """Layer × checkpoint heatmaps of ID probe accuracy and rank, and the tunnel start against step."""
    steps = sorted(table.step.unique())
    panels = [m for m in ("probe_acc", "rank") if (table.metric == m).any()]
    fig, axes = subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, panels):
        rows = table[(table.metric == metric) & (table.dataset == id_name_of(table)) & (table.split == "test")
                     & table.other_point.isna()]
        grid = rows.pivot_table(index="layer", columns="step", values="value").reindex(columns=steps)
        im = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis",
                       extent=(-0.5, len(steps) - 0.5, 0.5, len(grid) + 0.5))
        fig.colorbar(im, ax=ax)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
        ax.set_xlabel("checkpoint (training step)")
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"probe_acc": "ID probe accuracy", "rank": "numerical rank"}[metric], fontsize=10)
    ax = axes[-1]
    s = summaries.sort_values("step")
    if TUNNEL_START in s:
        ax.plot(range(len(s)), s[TUNNEL_START], marker="o")
        ax.set_xticks(range(len(s)), [str(v) for v in s.step], rotation=90, fontsize=7)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("tunnel start (layer, τ = 0.95)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.suptitle(label, fontsize=10)
    return fig


def cka_grid_figure(spec: SweepSpec, table: pd.DataFrame):
    """One CKA heatmap (test split, model rows, last analysed checkpoint) per cell, laid out as
    the grid: the first two swept variables as rows and columns (Nguyen et al.'s depth x width
    figures); None when the table holds no CKA or a single cell."""
    if table.empty or "cka" not in set(table.metric):
        return None
    rows = table[(table.metric == "cka") & (table.split == "test") & table.other_point.notna()
                 & table.reference.isna()]
    last = rows.groupby("cell").step.transform("max")
    rows = rows[rows.step == last]
    cells = [c for c in spec.cells if c.key in set(rows.cell)]
    if len(cells) < 2:
        return None
    swept = [v for v in spec.grid if len({c.variables[v] for c in cells}) > 1][:2] or [next(iter(spec.grid))]
    levels = [sorted({c.variables[v] for c in cells}, key=lambda x: (isinstance(x, str), x)) for v in swept]
    n_rows, n_cols = (len(levels[0]), len(levels[1])) if len(swept) == 2 else (1, len(levels[0]))
    fig, axes = subplots(n_rows, n_cols, figsize=(2.6 * n_cols + 1, 2.4 * n_rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    image = None
    for cell in cells:
        i = levels[0].index(cell.variables[swept[0]]) if len(swept) == 2 else 0
        j = levels[-1].index(cell.variables[swept[-1]])
        mine = rows[rows.cell == cell.key]
        order = list(mine.sort_values("layer").point.unique())
        matrix = mine.pivot_table(index="point", columns="other_point", values="value").loc[order, order]
        ax = axes[i, j]
        ax.set_visible(True)
        image = ax.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_title(cell.label(), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="minibatch CKA (test)")
    fig.suptitle(f"CKA between every pair of layers, per cell ({' x '.join(swept)})", fontsize=10)
    return fig


def write_sweep_report(spec: SweepSpec, store: Store | None = None) -> Path:
    """Figures into ``STORE/figures`` and ``STORE/report.html``; returns the report's path."""
    store = store or Store(spec.store)
    status = store.status(spec)
    read = store.step_summaries(spec)
    summaries = store.summaries(spec, read)
    table = store.collect(spec)
    figures = aggregate_figures(spec, summaries)
    for cell in spec.cells:
        rows = table[table.cell == cell.key] if not table.empty else table
        if not rows.empty and rows.step.nunique() > 1:
            figures[f"dynamics-{cell.key}"] = dynamics_figure(rows, summaries[summaries.cell == cell.key],
                                                              cell.label())
    if (grid := cka_grid_figure(spec, table)) is not None:
        figures["cka-grid"] = grid
    pngs = save_figures(figures, spec.store / FIGURES_DIR)
    final = final_summaries(summaries)
    keep = [c for c in final.columns if c.startswith(VAR_PREFIX) or c in (
        "cell", "step", POINTS, TUNNEL_START, TUNNEL_LENGTH, BEST_TRANSFER_LAYER, MEAN_RETAINED,
        EFFECTIVE_DEPTH) or c.startswith(column_name("retained", ""))]
    failures = status[status.status == "failed"]
    ood = ood_table(spec, store, table, read)
    body = page(
        f"sweep {spec.name}",
        f'<p class="verdict">{(status.status == "finished").sum()} of {len(status)} cells finished, '
        f"{len(failures)} failed.</p>",
        "<h2>Cells</h2>", status.to_html(index=False, na_rep="", border=0),
        "<h2>Aggregates and dynamics</h2>", *(figure_html(p.stem, p) for p in pngs),
        "<h2>Last checkpoint of each cell</h2>",
        final[keep].to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
        if not final.empty else "<p>no finished cells yet</p>",
        explain_section(ood, spec.store / FIGURES_DIR),
    )
    return write_text(spec.store / "report.html", body)


__all__ = ["aggregate_figures", "cka_grid_figure", "dynamics_figure", "write_sweep_report"]
