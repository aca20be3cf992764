"""Several saved runs side by side: one figure (layers by index and by relative depth) and
one table (a row of headline numbers per run; the long per-layer table in ``compare.csv``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import SpecError
from .figures import compare_figure, save_figures
from .io import atomic_write
from .results import Results

HEADLINE = ("points", "tunnel_start@0.95", "tunnel_length@0.95", "best_transfer_layer", "effective_depth",
            "mean_retained")


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path,
                 labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Load ``run_dirs``, write ``compare.png``/``.svg`` and ``compare.csv`` into ``out``.

    Returns the per-run summary table and the written paths.
    """
    if len(run_dirs) < 1:
        raise SpecError("compare needs at least one run directory")
    runs = [Results.load(d) for d in run_dirs]
    if labels is not None and len(labels) != len(runs):
        raise SpecError(f"got {len(labels)} labels for {len(runs)} runs; give one --label per run or none")
    labels = list(labels) if labels else [f"{r.summary.get('model', '?')} ({Path(d).name})"
                                          for r, d in zip(runs, run_dirs)]
    rows = []
    for label, run in zip(labels, runs):
        row = {"run": label, "model": run.summary.get("model"), "data": run.summary.get("data")}
        row.update({k: run.summary.get(k) for k in HEADLINE})
        if run.has("probe_acc"):
            row["final ID probe accuracy"] = float(run.curve("probe_acc").iloc[-1])
        rows.append(row)
    summary = pd.DataFrame(rows)
    long = pd.concat([r.table.assign(run=label) for r, label in zip(runs, labels)], ignore_index=True)
    out = Path(out)
    paths = save_figures({"compare": compare_figure(runs, labels)}, out)
    paths.append(out / "compare.svg")
    atomic_write(out / "compare.csv", lambda h: long.to_csv(h, index=False))
    atomic_write(out / "runs.csv", lambda h: summary.to_csv(h, index=False))
    return summary, paths + [out / "compare.csv", out / "runs.csv"]


__all__ = ["compare_runs"]
