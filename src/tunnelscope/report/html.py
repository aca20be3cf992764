"""The HTML report of one run: a single self-contained file (figures embedded as data
URIs, styles inline, no scripts, nothing fetched from the network)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..io import write_text
from ..metrics import PRESENTATIONS
from ..readback import read_inversion_record
from ..results import Results, column_dataset, column_metric, lower, upper
from ..rundir import FIGURES_DIR, INVERSION_CONFIG
from ..summary import (
    BEST_TRANSFER_LAYER,
    C_SENSITIVITY,
    EFFECTIVE_DEPTH,
    MEAN_RETAINED,
    MODEL_ACCURACY,
    TUNNEL_LENGTH,
    TUNNEL_START,
    VERDICT_VALID,
    start_key,
    tunnel_claimed,
)

_EXPLAIN_CAPTION = ("Mean of {} per level of each design variable that varies across the sweep (95% Student t "
                    "intervals), and the SHAP slope of each variable: the slope of its SHAP values against its value "
                    "scaled to a maximum of 1 (Harun et al. 2024).")
CAPTIONS = {
    "explain-retained": _EXPLAIN_CAPTION.format("% OOD retained"),
    "explain-pearson": _EXPLAIN_CAPTION.format("the Pearson correlation of the ID and OOD probe curves"),
    "explain-alignment": _EXPLAIN_CAPTION.format("the ID/OOD alignment"),
    "probes": "Linear probe accuracy on each dataset's test split against layer, with 95% bootstrap intervals "
              "(bands); layer 0 is the input, reduced like the layers. Shaded, when the verdict claims a tunnel: the "
              "tunnel (from the first layer reaching 95% of the penultimate point's ID accuracy); without a claim a "
              "dotted line marks that layer instead. Vertical dashed line: the best layer to "
              "transfer from (highest mean OOD accuracy). Dashed curves, when present: the same architecture "
              "re-initialised (untrained reference).",
    "probes_normalised": "Each dataset's probe accuracy divided by its own maximum over the layers (as Harun et al. "
                         "plot it): where each curve peaks, and the share of its peak kept at the last layer.",
    "rank": "Numerical rank (eigenvalues of the centred covariance above 1e-3 of the largest) and effective rank.",
    "collapse": "Neural collapse: NC1 and CDNV (lower is more collapsed), and nearest-class-centre accuracy.",
    "pc1": "Share of the representation's variance on its first principal component; beside it, the "
           "similarity of the layers' first principal components over the examples (Nguyen et al.).",
    "cka": "Minibatch CKA between every pair of probe points: blocks of similar layers.",
}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;\
padding:0 1em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.verdict{font-size:1.1em;background:#fff6d9;border-left:4px solid #e0b400;padding:.6em 1em}
.verdict.tunnel{background:#e8f4ea;border-left-color:#2e7d32}
.verdict.invalid{background:#fde8e8;border-left-color:#c62828}
.wide{overflow-x:auto;max-width:100%} .ci{white-space:nowrap;font-size:.85em;color:#555}
figure{margin:1.5em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em;max-height:40em}
"""


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if np.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _with_ci(summary: Mapping[str, Any], key: str, fmt: str = "{:.4g}") -> str | None:
    if key not in summary or summary[key] is None:
        return None
    value = summary[key]
    text = fmt.format(value) if isinstance(value, (int, float)) else str(value)
    ci = summary.get(f"{key}_ci")
    if ci and all(v is not None for v in ci):
        text += f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
    return text


def summary_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary's headline numbers (with 95% intervals in brackets) as (label, value) pairs,
    for the report and the terminal."""
    rows = [("model", summary.get("model")), ("data", summary.get("data")), ("probe points", summary.get("points"))]
    if summary.get(MODEL_ACCURACY) is not None:
        rows.append(("the model's own test accuracy", _fmt(summary[MODEL_ACCURACY])))
    formats = {MEAN_RETAINED: "{:.1f}", TUNNEL_START: "{:.0f}", start_key(0.98): "{:.0f}"}
    claimed = tunnel_claimed(summary)
    for key, label in ((TUNNEL_START, "tunnel start (τ = 0.95)" if claimed else
                        "first layer within 5% of the final ID accuracy (no tunnel claimed)"),
                       (TUNNEL_LENGTH, "tunnel length (τ = 0.95)" if claimed else "layers from there to the last"),
                       (start_key(0.98), "tunnel start (τ = 0.98)" if claimed else
                        "first layer within 2% of the final ID accuracy"),
                       (BEST_TRANSFER_LAYER, "best layer to transfer from"),
                       (EFFECTIVE_DEPTH, "NCC effective depth (train error ≤ ε)"),
                       (MEAN_RETAINED, "mean OOD accuracy retained at the last layer (%)"),
                       ("strength", "tunnel strength" if claimed else
                        "strength of the OOD loss (no tunnel claimed)")):
        if key in summary:
            rows.append((label,
                         _with_ci(summary, key, formats.get(key, "{:.4g}")) if summary[key] is not None else None))
    for o in summary.get("ood", []):
        parts = [_with_ci(o, "retained", "{:.1f}"), _with_ci(o, "pearson", "{:.3f}"),
                 _with_ci(o, "alignment", "{:.3f}")]
        rows.append((f"OOD {o['name']}: % retained / Pearson ρ / alignment", " / ".join(p or "—" for p in parts)))
    if sensitivity := summary.get(C_SENSITIVITY):
        rows.append(("headline under each probe C (C: tunnel start / mean % retained)", "; ".join(
            f"{r['C']:g}: {_fmt(r.get(TUNNEL_START))} / " + (f"{r[MEAN_RETAINED]:.1f}" if r.get(MEAN_RETAINED)
                                                             is not None else "—") for r in sensitivity)))
    for reference, numbers in (summary.get("reference") or {}).items():
        rows.append((f"{reference} reference: the model's own accuracy / tunnel start / mean % retained",
                     " / ".join(_fmt(numbers.get(k))
                                for k in (MODEL_ACCURACY, TUNNEL_START, MEAN_RETAINED))))
    for flag in summary.get("flags", []):
        rows.append((("NOT VALID: " if flag["blocking"] else "note: ") + flag["code"], flag["message"]))
    return [(label, _fmt(v) if not isinstance(v, str) else v) for label, v in rows]


def verdict_class(summary: Mapping[str, Any]) -> str:
    """The banner's style: ``invalid`` (red) for a verdict with a blocking flag, ``tunnel``
    (green) for a claimed tunnel, plain (yellow) otherwise."""
    if not summary.get(VERDICT_VALID, True):
        return "verdict invalid"
    return "verdict tunnel" if tunnel_claimed(summary) else "verdict"


def config_html(config: Mapping[str, Any]) -> str:
    """A configuration as indented JSON in a ``<pre>`` block."""
    return f"<pre>{html.escape(json.dumps(dict(config), indent=2, default=str))}</pre>"


def figure_html(name: str, path: Path | bytes) -> str:
    """One figure embedded as a data URI (a PNG file, or its bytes) with its caption."""
    data = base64.b64encode(path if isinstance(path, bytes) else path.read_bytes()).decode()
    caption = CAPTIONS.get(name, "")
    return (f'<figure id="fig-{name}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def inversion_section(directory: Path) -> str:
    """The inversion part of a report, from ``inversion.json`` and its figures; '' when absent."""
    config_path = Path(directory) / INVERSION_CONFIG
    if not config_path.is_file():
        return ""
    info = read_inversion_record(config_path)
    rows = []
    for state, points in info.get("summary", {}).items():
        for p in points:
            rows.append(f"<tr><td>{html.escape(state)}</td><td>{p['layer']}</td><td>{html.escape(p['point'])}</td>"
                        + "".join(f"<td>{_fmt(p.get(m))}</td>" for m in ("m_g", "m_i", "m_r", "nonunique", "undecided"))
                        + "</tr>")
    figures = sorted((Path(directory) / FIGURES_DIR).glob("inversion-*.png"))
    return "\n".join([
        "<h2>Input reconstruction from each layer</h2>",
        "<p>Gradient descent on the input to match a layer's full activations (Badger 2022): m_g embedding "
        "distance, m_i input distance, m_r the embedding distance of a barely visible perturbation; "
        "non-unique where m_g &lt; m_r while m_i is large (share of images); undecided where the refinement "
        "stopped on its budget while m_g was still falling (raise --refine-steps).</p>",
        *(figure_html(p.stem, p) for p in figures),
        "<table><tr><th>model</th><th>layer</th><th>point</th><th>m_g</th><th>m_i</th><th>m_r</th>"
        "<th>non-unique</th><th>undecided</th></tr>", *rows, "</table>",
        config_html(info.get("config", {})),
    ])


def page(title: str, *parts: str) -> str:
    """A self-contained HTML page: the shared style, ``title`` as heading, then ``parts``."""
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
                      f"<h1>{html.escape(title)}</h1>", *parts, "</body></html>"])


def experiment_page(kind: str, figures: Mapping[str, Path], config: Mapping[str, Any]) -> str:
    """An experiment's report (``dynamics``, ``cross-cka``, ``agreement``, ...): its figures and its
    configuration, one self-contained page."""
    body = [figure_html(name, path) for name, path in figures.items()] or ["<p>No figure for this run.</p>"]
    return page(f"tunnelscope {kind}", "<h2>Figures</h2>", *body,
                "<h2>Configuration</h2><p>Everything that changes a number; the tables are the CSV and parquet "
                "files beside this report.</p>",
                config_html(config))


def render_inversion_only(directory: Path, title: str) -> str:
    """A report page holding only the inversion section."""
    return page(title, inversion_section(directory))


def render(results: Results, figures: dict[str, Path]) -> str:
    """The report as one HTML string; ``figures`` maps names to PNG files to embed."""
    s = results.summary
    title = f"tunnelscope: {s.get('model', 'model')} on {s.get('data', 'data')}"
    summary_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in summary_lines(s))
    layer_table = _layer_table_html(results)
    return page(
        title,
        f'<p class="{verdict_class(s)}" id="verdict">{html.escape(s.get("verdict", ""))}</p>',
        f"<h2>Summary</h2><table>{summary_rows}</table>", _sensitivity_html(s),
        "<h2>Figures</h2>", *(figure_html(name, path) for name, path in figures.items()), _blocks_html(results),
        inversion_section(results.path) if results.path else "",
        "<h2>Per layer (test split; layer 0 is the input; [95% interval])</h2>",
        f'<div class="wide">{layer_table}</div>',
        "<h2>Configuration</h2><p>Everything that changes a number: probe points, reduction, protocol, seeds, "
        "sample counts, versions.</p>",
        config_html(results.config),
    )


SENSITIVITY_COLUMNS = (("C", "C"), ("points_choosing", "ID points choosing it"), ("id_final", "final ID accuracy"),
                       (TUNNEL_START, "first layer within 5% of the final ID accuracy"),
                       (MEAN_RETAINED, "mean % retained"),
                       ("strength", "strength"), (BEST_TRANSFER_LAYER, "best transfer layer"))


def _sensitivity_html(summary: Mapping[str, Any]) -> str:
    """The headline under each C of the probes' grid, when the probes chose C on data; '' otherwise."""
    rows = summary.get(C_SENSITIVITY)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in SENSITIVITY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(key))}</td>" for key, _ in SENSITIVITY_COLUMNS) + "</tr>"
                   for r in rows)
    return ("<h2>Probe regularisation: the headline under each C</h2><p>Each point's probe chose its C by accuracy "
            "on a held-out part of its training split (see probe and datasets in the configuration); each row "
            "recomputes the headline with every probe fitted at one C instead (point estimates; the per-point "
            f"accuracies are the results table's rows with reference 'C=…').</p><table><tr>{head}</tr>{body}</table>")


def ordered_columns(columns: list[str], datasets: list[str]) -> list[str]:
    """The per-layer table's columns in reading order: layer and point, the probe accuracies (ID,
    then each OOD set as analysed), then the other metrics in the registry's order, each metric's
    OOD columns after its ID one."""
    metric_order = {name: i for i, name in enumerate(PRESENTATIONS)}
    dataset_order = {d: i for i, d in enumerate(datasets)}

    def key(column: str) -> tuple:
        if column in ("layer", "point"):
            return (0, column != "layer", 0)
        metric, dataset = column_metric(column), column_dataset(column)
        return (1 if metric == "probe_acc" else 2, metric_order.get(metric, len(metric_order)),
                dataset_order.get(dataset, -1) if dataset else -1)

    return sorted(columns, key=key)


def _blocks_html(results: Results) -> str:
    """Nguyen et al.'s block structure as a table, when the permutation null was measured: runs of
    consecutive points whose every pair is above the null with CKA of at least the block level."""
    record = results.config.get("statistics", results.config)
    if "cka_null" not in record:
        return ""
    null = record["cka_null"]
    blocks = record.get("cka_blocks") or []
    rows = "".join(f"<tr><td>{html.escape(str(b['first']))}</td><td>{html.escape(str(b['last']))}</td>"
                   f"<td>{b['points']}</td><td>{_fmt(b['min_cka'])}</td></tr>" for b in blocks)
    body = (f"<table><tr><th>first point</th><th>last point</th><th>points</th><th>lowest CKA in it</th></tr>{rows}"
            "</table>" if blocks else "<p>No block: no run of two or more consecutive points qualifies.</p>")
    return (f"<h2>CKA blocks</h2><p>Runs of consecutive points whose every pair is above the permutation null "
            f"(p &lt; {_fmt(null.get('level'))}, {null.get('permutations')} permutations) with CKA of at least "
            f"{_fmt(null.get('block_level'))} (Nguyen et al.'s block structure); "
            f"{_fmt(100 * null['share_above']) if null.get('share_above') is not None else '—'}% of all pairs "
            f"are above the null.</p>{body}")


def _layer_table_html(results: Results) -> str:
    """The per-layer table: intervals in brackets after probe accuracies, unconverged probes starred."""
    wide = results.layer_table(intervals=True)
    unconverged: set[tuple[str, str]] = set()
    if results.has("probe_converged"):
        t = results.table
        bad = t[(t.metric == "probe_converged") & (t.value < 1) & t.reference.isna()]
        unconverged = {(p, d) for p, d in zip(bad.point, bad.dataset)}
    bounds = {b for c in wide.columns for b in (lower(c), upper(c)) if b in wide.columns}
    columns = ordered_columns([c for c in wide.columns if c not in bounds], results.datasets)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in wide.to_dict("records"):
        cells = []
        for c in columns:
            text = _fmt(row[c]) if c not in ("layer", "point") else html.escape(str(row[c]))
            if lower(c) in row and row[lower(c)] == row[lower(c)]:
                text += f' <span class="ci">[{row[lower(c)]:.3g}, {row[upper(c)]:.3g}]</span>'
            dataset = column_dataset(c) or results.id_dataset
            if c.startswith("probe_acc") and (row["point"], dataset) in unconverged:
                text += " *"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ("<p>* the probe did not converge (see the flags above).</p>" if unconverged else "")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{note}"


def write_report(results: Results, path: str | Path, figures: dict[str, Path]) -> Path:
    """Write :func:`render`'s HTML atomically to ``path``."""
    return write_text(path, render(results, figures))


__all__ = ["experiment_page", "figure_html", "inversion_section", "ordered_columns", "page", "render",
           "render_inversion_only", "summary_lines", "verdict_class", "write_report"]
