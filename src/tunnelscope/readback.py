"""Checks on an analysis read back from a run directory: a file that was damaged or edited by
hand is refused in one line (:class:`~tunnelscope.errors.RunDirectoryError`) naming the file and
what is wrong, before any code uses a value of the wrong type or a curve with a point missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NotRequired, TypedDict

import pandas as pd

from .errors import RunDirectoryError
from .jsontypes import misfit_message
from .rundir import CONFIG_FILE, RESULTS_FILE, SUMMARY_FILE
from .summary import check_summary

REQUIRED_COLUMNS = ["model", "dataset", "split", "point", "layer", "depth", "metric", "value", "other_point",
                    "other_layer", "valid"]
ROW_KEY = ["split", "point", "metric", "other_point", "dataset", "reference"]  # one row per these
_NAMES = ["model", "dataset", "split", "point", "metric"]  # text, never missing
_OPTIONAL_NAMES = ["other_point", "reference"]  # text or missing
_NUMBERS = ["depth", "value", "ci_lo", "ci_hi", "other_layer"]  # numbers, NaN where undefined
DAMAGED = "the file was changed by hand or damaged"


class ProbesRecord(TypedDict, total=False):
    """What ``config.json`` records of the probes and the code reading a run uses."""

    probe: dict[str, Any]
    datasets: dict[str, dict[str, Any]]


class ConfigRecord(TypedDict, total=False):
    """The keys of an analysis' ``config.json`` that reading it back uses, with their types."""

    model: dict[str, Any]
    probes: ProbesRecord
    points: list[str]
    input_point: str | None
    id_dataset: str | None
    statistics: dict[str, Any]


class InversionLayer(TypedDict):
    """One point's mean inversion scores in ``inversion.json``'s summary."""

    layer: int
    point: str
    m_g: float
    m_i: float
    m_r: float
    nonunique: float
    undecided: NotRequired[float]  # absent from inversions saved before it was judged


class InversionRecord(TypedDict, total=False):
    """What reading ``inversion.json`` back uses: the per-state layer rows and the settings."""

    kind: str
    summary: dict[str, list[InversionLayer]]
    config: dict[str, Any]


def read_inversion_record(path: Path) -> dict[str, Any]:
    """``inversion.json`` read back and checked against :class:`InversionRecord`; a damaged or
    edited file is a one-line :class:`RunDirectoryError` naming the place."""
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(record, dict):
        raise RunDirectoryError(f"{path} holds a {type(record).__name__}, not a JSON object; {DAMAGED}")
    if wrong := misfit_message(record, InversionRecord, str(path)):
        raise RunDirectoryError(f"{wrong}; {DAMAGED}")
    return record


def check_run_files(d: Path, table: pd.DataFrame, summary: object, config: object) -> None:
    """Refuse, in one line, a run directory whose files were damaged or edited: a summary or config
    that is not a JSON object or holds a value of the wrong type, a results table that lacks a
    column, holds one of the wrong type, a duplicated row, or a curve with points missing."""
    try:
        check_summary(summary, str(d / SUMMARY_FILE))
    except ValueError as exc:
        raise RunDirectoryError(str(exc)) from None
    if not isinstance(config, dict):
        raise RunDirectoryError(f"{d / CONFIG_FILE} holds a {type(config).__name__}, not a JSON object; {DAMAGED}")
    if wrong := misfit_message(config, ConfigRecord, str(d / CONFIG_FILE)):
        raise RunDirectoryError(f"{wrong}; {DAMAGED}")
    check_table(d / RESULTS_FILE, table)


def check_table(where: Path, table: pd.DataFrame) -> None:
    """Refuse a results table with a missing or mistyped column, a duplicated row, or a per-point
    metric that lacks some of the points the others have."""
    if missing := [c for c in REQUIRED_COLUMNS if c not in table.columns]:
        raise RunDirectoryError(f"{where} lacks columns {missing}; it was not written by tunnelscope")
    if wrong := _mistyped_columns(table):
        raise RunDirectoryError(f"{where}: column {wrong[0]!r} holds {wrong[1]}; {DAMAGED}")
    key = [c for c in ROW_KEY if c in table.columns]
    if duplicated := int(table.duplicated(key).sum()):
        raise RunDirectoryError(f"{where} holds {duplicated} duplicated row(s) (the same split, point, metric and "
                                f"dataset twice); {DAMAGED}")
    if gap := _incomplete_curve(table):
        raise RunDirectoryError(f"{where}: {gap}; rows were removed, {DAMAGED}")


def _mistyped_columns(table: pd.DataFrame) -> tuple[str, str] | None:
    """The first column whose values are not of the kind tunnelscope writes, and what it holds instead."""
    for column in _NAMES + [c for c in _OPTIONAL_NAMES if c in table]:
        kind = pd.api.types.infer_dtype(table[column], skipna=True)
        if kind not in ("string", "empty"):
            return column, f"{kind} values, not text"
        if column in _NAMES and table[column].isna().any():
            return column, "missing values"
    for column in ["layer", *[c for c in _NUMBERS if c in table]]:
        values = table[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            return column, f"{pd.api.types.infer_dtype(values, skipna=True)} values, not numbers"
    if table["layer"].isna().any() or not (table["layer"] == table["layer"].round()).all():
        return "layer", "missing or fractional layer numbers"
    if not pd.api.types.is_bool_dtype(table["valid"]):
        return "valid", f"{pd.api.types.infer_dtype(table['valid'], skipna=True)} values, not true/false"
    return None


def _incomplete_curve(table: pd.DataFrame) -> str | None:
    """Which per-point metric lacks points that other per-point metrics of the table have, or None."""
    per_point = table[table["other_point"].isna()]
    if per_point.empty:
        return None
    everywhere = set(per_point["point"])
    reference = per_point["reference"] if "reference" in per_point else pd.Series(None, index=per_point.index)
    groups = per_point.assign(reference=reference.fillna("")).groupby(["split", "metric", "dataset", "reference"])
    for (split, metric, dataset, _), rows in groups:
        if lacking := everywhere - set(rows["point"]):
            return (f"{metric!r} on {dataset!r} ({split}) lacks {len(lacking)} of the {len(everywhere)} points "
                    f"(e.g. {sorted(lacking)[0]!r})")
    return None


__all__ = ["ConfigRecord", "InversionLayer", "InversionRecord", "ProbesRecord", "REQUIRED_COLUMNS", "ROW_KEY",
           "check_run_files", "check_table", "read_inversion_record"]
