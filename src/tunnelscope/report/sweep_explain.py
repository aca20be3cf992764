"""The sweep report's explain section: what explains % retained, Pearson and alignment across the cells.

Runs :func:`tunnelscope.experiments.explain.explain` on the sweep's OOD-level table
(:func:`tunnelscope.sweep.ood_table.ood_table`) for each transfer metric, over the design variables
that vary in the sweep, and renders each result's figure and tables. A metric that cannot be
explained (too few rows, no varying variable, shap not installed) gets a one-line reason instead.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..errors import TunnelscopeError
from ..experiments.explain import ExplainResult, explain
from ..sweep.ood_table import METRIC_COLUMNS, explain_arguments
from .figures import save_figures
from .html import figure_html

TARGET_NAMES = {"retained": "% OOD retained", "pearson": "Pearson ρ (ID vs OOD probe curves)",
                "alignment": "ID/OOD alignment"}


def explain_ood_table(table: pd.DataFrame) -> dict[str, ExplainResult | str]:
    """Per transfer metric, its :class:`ExplainResult` or the reason there is none."""
    if table.empty:
        return {target: "no analysed checkpoint with OOD sets yet" for target in METRIC_COLUMNS}
    variables, categorical = explain_arguments(table)
    if not variables:
        return {target: "no design variable varies across the cells" for target in METRIC_COLUMNS}
    outcome: dict[str, ExplainResult | str] = {}
    for target in METRIC_COLUMNS:
        try:
            outcome[target] = explain(table, target, variables=variables, categorical=categorical, cluster="cell")
        except TunnelscopeError as exc:
            outcome[target] = str(exc)
    return outcome


def explain_section(table: pd.DataFrame, figures_dir: Path) -> str:
    """HTML of the explain section (figures written into ``figures_dir`` as ``explain-TARGET``)."""
    outcome = explain_ood_table(table)
    figures = {f"explain-{t}": result.figure() for t, result in outcome.items() if isinstance(result, ExplainResult)}
    pngs = {p.stem: p for p in save_figures(figures, figures_dir)}
    parts = ["<h2>What explains transfer across the sweep (Harun et al. 2024)</h2>",
             f"<p>{len(table)} rows: one per cell, analysed checkpoint and OOD set "
             "(<code>tunnelscope sweep collect --level ood</code>). The OOD sets of one cell share its model, so "
             "a cell is the unit: group means and their 95% Student t intervals are over cell means, and the "
             "held-out R² holds out whole cells. SHAP slopes: gradient boosting (huber "
             "loss) on the design variables that vary, fitted on every row; R² in-sample as in the paper.</p>"]
    for target, result in outcome.items():
        parts.append(f"<h3>{html.escape(TARGET_NAMES[target])}</h3>")
        if isinstance(result, str):
            parts.append(f"<p>not explained: {html.escape(result)}</p>")
            continue
        shap_info = result.config["shap"]
        parts.append(f"<p>{shap_info['n_rows']} rows; SHAP model R² {shap_info['r2']:.3f} in-sample, "
                     f"{shap_info['r2_cv']:.3f} held-out ({html.escape(shap_info['r2_cv_kind'])}).</p>")
        parts.append(figure_html(f"explain-{target}", pngs[f"explain-{target}"]))
        parts.append(result.slopes.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
        parts.append(result.group_means.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—",
                                                border=0))
    return "\n".join(parts)


__all__ = ["TARGET_NAMES", "explain_ood_table", "explain_section"]
