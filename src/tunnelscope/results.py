"""``Results``: one analysis as a tidy table, a summary and a config, saved to and loaded
from a run directory.

The run directory holds ``results.parquet`` (one row per dataset × split × point ×
metric, plus ``other_point`` for pairwise metrics), ``summary.json``, ``config.json``,
``figures/`` (PNG and SVG) and ``report.html``. ``summary.json`` is written last and
removed first when a run is replaced, so a directory without it holds a partial run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import TunnelscopeError
from .io import atomic_write, write_json

RESULTS_FILE, SUMMARY_FILE, CONFIG_FILE = "results.parquet", "summary.json", "config.json"
FIGURES_DIR, REPORT_FILE = "figures", "report.html"
COLUMNS = ["model", "dataset", "split", "point", "layer", "depth", "metric", "value", "other_point", "other_layer",
           "valid"]


class ResultsError(TunnelscopeError):
    """A run directory that is missing, partial, unreadable, or already taken."""


def check_free(directory: str | Path, overwrite: bool) -> bool:
    """Whether ``directory`` already holds analysis results; refuses it unless ``overwrite``."""
    out = Path(directory)
    taken = (out / SUMMARY_FILE).exists() or (out / RESULTS_FILE).exists()
    if taken and not overwrite:
        raise ResultsError(f"{out} already holds analysis results; pass --overwrite (overwrite=True) "
                           "to replace them or choose another --out")
    return taken


@dataclass
class Results:
    """An analysis: ``table`` (tidy pandas), ``summary`` (the tunnel in numbers and words),
    ``config`` (everything that changes a number)."""

    table: pd.DataFrame
    summary: dict
    config: dict = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:  # one spelling of "no other point" (None), in memory and after loading
        other = self.table["other_point"].astype(object)
        self.table = self.table.assign(other_point=other.where(other.notna(), None),
                                       other_layer=self.table["other_layer"].astype(float))

    # ------------------------------------------------------------------ access
    @property
    def points(self) -> list[str]:
        """Probe point names in layer order."""
        return list(self.config.get("points") or
                    self.table.drop_duplicates("point").sort_values("layer")["point"].tolist())

    @property
    def datasets(self) -> list[str]:
        """``"id"`` first, then the OOD specs, in the order they were analysed."""
        seen = list(dict.fromkeys(self.table["dataset"]))
        return sorted(seen, key=lambda d: (d != "id", seen.index(d)))

    def has(self, metric: str) -> bool:
        """Whether the table holds ``metric``."""
        return bool((self.table.metric == metric).any())

    def curve(self, metric: str, dataset: str = "id", split: str = "test") -> pd.Series:
        """A per-point metric as a Series indexed by point, in layer order."""
        t = self.table
        rows = t[(t.metric == metric) & (t.dataset == dataset) & (t.split == split) & t.other_point.isna()]
        if rows.empty:
            raise KeyError(f"no {metric!r} for dataset {dataset!r} split {split!r}; "
                           f"metrics here: {sorted(t.metric.unique())}")
        return rows.sort_values("layer").set_index("point")["value"]

    def matrix(self, metric: str = "cka", split: str = "test") -> pd.DataFrame:
        """A pairwise metric as a points × points frame."""
        t = self.table
        rows = t[(t.metric == metric) & (t.split == split) & t.other_point.notna()]
        if rows.empty:
            raise KeyError(f"no pairwise metric {metric!r} on split {split!r}")
        order = [p for p in self.points if p in set(rows.point)]
        return rows.pivot(index="point", columns="other_point", values="value").loc[order, order]

    def layer_table(self, split: str = "test") -> pd.DataFrame:
        """One row per point, one column per per-point metric (OOD probe columns named by dataset)."""
        t = self.table[(self.table.split == split) & self.table.other_point.isna()]
        label = t.metric.where(t.dataset == "id", t.metric + " · " + t.dataset)
        wide = t.assign(column=label).set_index(["layer", "point", "column"])["value"].unstack("column")
        wide.columns.name = None
        return wide.sort_index().reset_index()

    # ------------------------------------------------------------------ figures and report
    def figures(self) -> dict:
        """Every figure this run's metrics allow, by name (matplotlib Figures)."""
        from .figures import run_figures

        return run_figures(self)

    def save_figures(self, folder: str | Path) -> list[Path]:
        """Write every figure as PNG and SVG into ``folder``; returns the PNG paths."""
        from .figures import FIGURES, save_figures

        return save_figures(self.figures(), folder, replace=list(FIGURES))

    def to_html(self, path: str | Path, figures: dict[str, Path] | None = None) -> Path:
        """Write the self-contained HTML report (figures embedded, no network)."""
        from .report import write_report

        return write_report(self, path, figures)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
        """Write the run directory: table, config, figures, report, and the summary last."""
        out = Path(directory)
        if check_free(out, overwrite):
            (out / SUMMARY_FILE).unlink(missing_ok=True)  # from here until the end, the run reads as partial
        out.mkdir(parents=True, exist_ok=True)
        table = self.table[COLUMNS + [c for c in self.table.columns if c not in COLUMNS]]
        atomic_write(out / RESULTS_FILE, lambda h: table.to_parquet(h, index=False))
        write_json(out / CONFIG_FILE, self.config)
        pngs = self.save_figures(out / FIGURES_DIR) if figures else []
        self.path = out  # the report also shows what else the directory holds (an inversion)
        self.to_html(out / REPORT_FILE, {p.stem: p for p in pngs})
        write_json(out / SUMMARY_FILE, self.summary)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Results":
        """Read a run directory written by :meth:`save`."""
        d = Path(directory)
        if not d.is_dir():
            raise ResultsError(f"{d} is not a directory; give a run directory written by 'tunnelscope analyze'")
        missing = [f for f in (RESULTS_FILE, CONFIG_FILE, SUMMARY_FILE) if not (d / f).is_file()]
        if missing:
            raise ResultsError(f"{d} holds no complete analysis (missing {', '.join(missing)}); "
                               "re-run 'tunnelscope analyze --out' on it with --overwrite")
        try:
            table = pd.read_parquet(d / RESULTS_FILE)
            summary = json.loads((d / SUMMARY_FILE).read_text())
            config = json.loads((d / CONFIG_FILE).read_text())
        except Exception as exc:  # pyarrow and json raise many types for a damaged file
            raise ResultsError(f"cannot read the results in {d}: {type(exc).__name__}: {exc}") from None
        if missing_cols := [c for c in COLUMNS if c not in table.columns]:
            raise ResultsError(f"{d / RESULTS_FILE} lacks columns {missing_cols}; it was not written by tunnelscope")
        return cls(table, summary, config, d)


__all__ = ["COLUMNS", "Results", "ResultsError", "check_free"]
