"""The figures of interventions (:mod:`tunnelscope.experiments.interventions`), from saved tables.

A result holds one intervention; its figure ``interventions`` (``.png``/``.svg``, registered for
the ``interventions`` kind) is one panel: weight movement (each layer's relative distance from
initialisation against training step), resets (accuracy against k) or deletions (accuracy per
deleted block or range), drawn from the table and the config (``model_spec``,
``num_classes``). :func:`interventions_figure` puts several tables side by side, taking each
one's settings from its ``attrs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import ConfigError
from .experiments import Tables, experiment_figure

# the point names of weights outside every probe point: the classifier head, and the rest
HEAD, OTHER = "head", "other"

Panel = Callable[[Axes, pd.DataFrame, dict[str, Any]], None]
PANEL_WIDTH, PANEL_HEIGHT = 5.6, 4.4


def movement_panel(ax: Axes, table: pd.DataFrame, config: dict[str, Any]) -> None:
    """Each layer's ``relative`` movement against training step (the head dashed, ``other`` left out)."""
    rows = table[table.point != OTHER]
    layers = rows[["layer", "point"]].drop_duplicates().sort_values("layer")
    colours = colormaps["viridis"].resampled(max(2, len(layers)))
    for i, (layer, point) in enumerate(layers.itertuples(index=False)):
        line = rows[rows.point == point].sort_values("step")
        ax.plot(line.step, line.relative, marker=".", color=colours(i), linestyle="--" if point == HEAD else "-",
                label=f"{layer} {point}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (checkpoints; symlog)")
    ax.set_ylabel("‖W_t − W_0‖ / ‖W_0‖")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 10 else 1, title="layer", title_fontsize=7)
    ax.set_title(f"weight movement: {config.get('model_spec', '')}")


def reset_panel(ax: Axes, table: pd.DataFrame, config: dict[str, Any]) -> None:
    """Accuracy against k, one line per reset direction, with the trained, initial and chance levels."""
    for direction, part in table.groupby("reset", sort=False):
        ax.plot(part.k, part.accuracy, marker="o", label=f"reset {direction}")
    ax.axhline(table.untouched_accuracy.iloc[0], color="black", linestyle="--", label="trained")
    ax.axhline(table.init_accuracy.iloc[0], color="grey", linestyle=":", label="initialisation")
    classes = config.get("num_classes")
    if classes:
        ax.axhline(1 / classes, color="grey", linewidth=0.8, label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (layers k..L or 1..k reset; L + 1 = the head alone)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("resetting layers to initialisation")


def deletion_panel(ax: Axes, table: pd.DataFrame, config: dict[str, Any]) -> None:
    """One bar of accuracy per deletion (blue: a block, orange: a range), the untouched and chance levels."""
    colours = ["#4c72b0" if kind == "block" else "#dd8452" for kind in table.kind]
    ax.bar(range(len(table)), table.accuracy, color=colours)
    labels = [f"{first}-{last} {deleted}" if first != last else f"{first} {deleted}"
              for first, last, deleted in zip(table.first_layer, table.last_layer, table.deleted)]
    ax.set_xticks(range(len(table)), labels, rotation=60, ha="right", fontsize=7)
    if len(table):
        ax.axhline(table.untouched_accuracy.iloc[0], color="black", linestyle="--", label="no deletion")
    classes = config.get("num_classes")
    if classes:
        ax.axhline(1 / classes, color="grey", linewidth=0.8, label="chance")
    if len(table) or classes:
        ax.legend(fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("residual blocks deleted (orange: ranges)")


def _panels(panels: Sequence[tuple[Panel, pd.DataFrame, dict[str, Any]]]) -> Figure:
    fig = Figure(figsize=(PANEL_WIDTH * len(panels), PANEL_HEIGHT), layout="constrained")
    for ax, (draw, table, config) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        draw(ax, table, config)
    return fig


PANELS: dict[str, Panel] = {"movement": movement_panel, "resets": reset_panel, "deletions": deletion_panel}


@experiment_figure("interventions", "interventions")
def intervention_figure(tables: Tables, config: dict[str, Any]) -> Figure | None:
    """The panel of the intervention a result holds (``config["intervention"]``: its table's name)."""
    name = config.get("intervention")
    if name not in PANELS or name not in tables:
        return None
    return _panels([(PANELS[name], tables[name], config)])


def interventions_figure(movement: pd.DataFrame | None = None, resets: pd.DataFrame | None = None,
                         deletions: pd.DataFrame | None = None) -> Figure:
    """One panel per table given (as :func:`~tunnelscope.experiments.interventions.weight_movement`,
    ``reset_layers`` and ``delete_blocks`` return them; settings from each table's ``attrs``)."""
    given = {"movement": movement, "resets": resets, "deletions": deletions}
    panels = [(PANELS[name], t, {str(k): v for k, v in t.attrs.items()}) for name, t in given.items() if t is not None]
    if not panels:
        raise ConfigError("interventions_figure needs at least one table (movement, resets or deletions)")
    return _panels(panels)


__all__ = ["PANELS", "deletion_panel", "intervention_figure", "interventions_figure", "movement_panel",
           "reset_panel"]
