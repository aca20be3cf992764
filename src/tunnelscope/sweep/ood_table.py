"""The sweep's OOD-level table: one row per (cell, checkpoint, OOD set), ready for ``tunnelscope explain``.

Each row holds the transfer metrics of one OOD set at one analysed checkpoint (% retained, Pearson,
ID/OOD alignment with their bootstrap intervals, OOD and ID probe accuracy at the penultimate point),
the checkpoint's tunnel numbers, and the design variables Harun et al. (2024) explain them with:
architecture traits (:mod:`tunnelscope.models.traits`), parameter count, training-set size,
overparameterisation γ = parameters / training samples, input resolution, augmentation and the
number of ID classes. The grid's own variables stay as ``var_*`` columns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..results import id_name_of
from ..summary import MODEL_ACCURACY, OOD, TUNNEL_LENGTH, TUNNEL_START, VERDICT_VALID
from .spec import Cell, SweepSpec
from .store import VAR_PREFIX, Store

METRIC_COLUMNS = ("retained", "pearson", "alignment")
CATEGORICAL_COLUMNS = ("family", "kind", "augmentation")


def ood_table(spec: SweepSpec, store: Store | None = None, layers: pd.DataFrame | None = None,
              summaries: Mapping[tuple[str, int], dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per finished (cell, step, OOD set) of ``spec``'s store; columns in module docs.
    ``layers`` (:meth:`Store.collect`) and ``summaries`` (:meth:`Store.step_summaries`): what the
    caller already read, so that no step's table or summary is read twice."""
    store = store or Store(spec.store)
    by_step = dict(iter(layers.groupby(["cell", "step"]))) if layers is not None and not layers.empty else None
    cells = {cell.key: cell for cell in spec.cells}
    design: dict[str, dict[str, Any]] = {}  # per training run: built once
    rows = []
    for (key, step), summary in (summaries if summaries is not None else store.step_summaries(spec)).items():
        if not summary.get(OOD):
            continue
        cell = cells[key]
        table = by_step[(key, step)] if by_step is not None else store.read_step(key, step)
        if cell.train_key not in design:
            design[cell.train_key] = design_variables(cell, store)
        rows += _step_rows(cell, step, summary, table, design[cell.train_key])
    return pd.DataFrame(rows)


def _step_rows(cell: Cell, step: int, summary: dict, table: pd.DataFrame, design: dict) -> list[dict]:
    penultimate = _penultimate_accuracy(table)
    id_acc = penultimate.get(id_name_of(table), math.nan)
    base = {"cell": cell.key, "step": step, **{VAR_PREFIX + k: v for k, v in cell.variables.items()},
            "model": summary.get("model"), "data": summary.get("data"),
            "id_acc": id_acc, "model_accuracy": summary.get(MODEL_ACCURACY),
            "tunnel_start": summary.get(TUNNEL_START), "tunnel_length": summary.get(TUNNEL_LENGTH),
            "verdict_valid": summary.get(VERDICT_VALID), **design}
    rows = []
    for entry in summary[OOD]:
        row = {**base, "ood": entry["name"], "ood_acc": penultimate.get(entry["name"], math.nan),
               "best_point": entry.get("best_point")}
        for metric in METRIC_COLUMNS:
            row[metric] = entry.get(metric, math.nan)
            low, high = entry.get(f"{metric}_ci") or (math.nan, math.nan)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
        rows.append(row)
    return rows


def _penultimate_accuracy(table: pd.DataFrame) -> dict[str, float]:
    """Test-split probe accuracy at the last probe point, per dataset."""
    rows = table[(table.metric == "probe_acc") & (table.split == "test")]
    if rows.empty:
        return {}
    last = rows.loc[rows.groupby("dataset")["layer"].idxmax()]
    return dict(zip(last["dataset"], last["value"].astype(float)))


def design_variables(cell: Cell, store: Store) -> dict[str, Any]:
    """The design variables of a cell's training run (its ``run.json`` and its built model)."""
    from ..models import build
    from ..models.traits import measured_traits, spec_traits
    from ..train.loop import read_run

    run = read_run(store.run_dir(cell.train_key)) if cell.trains else _described(store, cell)
    model_info, data_info = run.get("model", {}), run.get("data", {})
    spec = model_info.get("spec") or cell.train["model"]
    values: dict[str, Any] = dict(spec_traits(spec))
    shape = tuple(model_info.get("input_shape") or ())
    classes = model_info.get("num_classes")
    measured = measured_traits(build(spec, classes, shape), shape) if shape and classes else {}
    parameters = model_info.get("parameters", measured.get("parameters"))
    samples = data_info.get("train_samples")
    values.update(
        parameters=parameters, train_samples=samples,
        overparam=parameters / samples if parameters and samples else math.nan,
        resolution=shape[-1] if shape else math.nan,
        augmentation=augmentation_label(data_info.get("augmentation")),
        stem=measured.get("stem", math.nan), spatial_reduction=measured.get("spatial_reduction", math.nan),
        id_classes=classes)
    return values


def _described(store: Store, cell: Cell) -> dict[str, Any]:
    """What an analysed-as-is cell recorded of its model and data (``{}`` when not yet analysed)."""
    from .cell import MODEL_FILE

    try:
        described = json.loads((store.run_dir(cell.train_key) / MODEL_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return described if isinstance(described, dict) else {}


EXPLAIN_COLUMNS = ("family", "kind", "depth", "width", "overparam", "resolution", "augmentation", "stem",
                   "spatial_reduction", "id_classes")  # Harun et al.'s eight, plus family and width


def augmentation_label(text: str | None) -> str:
    """A short level for a data pipeline's augmentation: ``"none"``, or its transforms' names
    without ``Random`` and without arguments (``"ResizedCrop+HorizontalFlip"``), so that figure
    axes stay readable; the full text stays in each run's data record."""
    if not text:
        return "none"
    names = [part.strip().split("(")[0].removeprefix("Random") for part in text.split("+")]
    return "+".join(n for n in names if n) or "yes"


COLLINEAR = 0.99  # |Spearman ρ| at or above which a later numeric column repeats an earlier one


def suggested_variables(table: pd.DataFrame) -> list[str]:
    """The explanatory columns that vary in ``table`` and have no missing value (what ``explain``
    can separate). ``parameters`` and ``train_samples`` are left out: γ = their ratio stands for
    both, as in Harun et al., and would be collinear with them. A numeric column whose rank
    correlation with an earlier chosen one is at least :data:`COLLINEAR` (γ in a sweep over depth
    alone, say) is left out too: ``explain`` cannot tell the two apart."""
    chosen: list[str] = []
    for c in EXPLAIN_COLUMNS:
        if c not in table or not table[c].notna().all() or table[c].nunique(dropna=True) < 2:
            continue
        if pd.api.types.is_numeric_dtype(table[c]) and any(
                pd.api.types.is_numeric_dtype(table[k]) and abs(table[c].corr(table[k], method="spearman")) >= COLLINEAR
                for k in chosen):
            continue
        chosen.append(c)
    return chosen


def explain_arguments(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The variables ``explain`` is given for an OOD table (:func:`suggested_variables`) and
    those of them to one-hot encode (:data:`CATEGORICAL_COLUMNS`)."""
    variables = suggested_variables(table)
    return variables, [v for v in variables if v in CATEGORICAL_COLUMNS]


def collect(spec: SweepSpec, level: str = "layer", store: Store | None = None) -> pd.DataFrame:
    """The store's rows in one frame: ``level="layer"``, every analysis row (point × metric, plus the
    cell's columns, :meth:`Store.collect`); ``level="ood"``, :func:`ood_table`."""
    store = store or Store(spec.store)
    if level == "ood":
        return ood_table(spec, store)
    if level != "layer":
        raise ValueError(f"level must be 'layer' or 'ood', not {level!r}")
    return store.collect(spec)


__all__ = ["CATEGORICAL_COLUMNS", "COLLINEAR", "EXPLAIN_COLUMNS", "METRIC_COLUMNS", "augmentation_label", "collect",
           "design_variables", "explain_arguments", "ood_table", "suggested_variables"]
