"""A complete analysis run directory: the data of :class:`~tunnelscope.results.Results`,
its figures and its HTML report, with the summary written last."""

from __future__ import annotations

from pathlib import Path

from ..errors import RunDirectoryError
from ..io import write_text
from ..results import Results
from ..rundir import (
    FIGURES_DIR,
    INVERSION_CONFIG,
    REPORT_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    refuse_links,
    whole_or_nothing,
)
from .figures import FIGURES, run_figures, save_figures
from .html import render_inversion_only, write_report


def save_run_figures(results: Results, folder: str | Path) -> list[Path]:
    """Draw every figure the run's metrics allow into ``folder`` (PNG and SVG); returns the PNGs.
    Figures of an earlier run in the folder are deleted first, so none outlives it."""
    return save_figures(run_figures(results), folder, replace=list(FIGURES))


def save_run(results: Results, directory: str | Path, overwrite: bool = False, figures: bool = True) -> Path:
    """Write the whole run directory: table, config, figures, report, and the summary last
    (a directory without ``summary.json`` reads as partial). ``overwrite`` replaces an
    earlier analysis; without it a taken directory is refused."""
    out = Path(directory)
    with whole_or_nothing(out):  # a full disk or an error leaves no partial run
        results.begin(out, overwrite)
        pngs = save_run_figures(results, out / FIGURES_DIR) if figures else []
        write_report(results, out / REPORT_FILE, {p.stem: p for p in pngs})
        results.finish(out)
    return out


def refresh_report(directory: str | Path, redraw: bool = False, title: str | None = None) -> tuple[Path, int]:
    """Rewrite ``directory/report.html`` from what the directory holds: its analysis (figures
    redrawn from the saved table when ``redraw``, else the saved ones) with any inversion
    section, or an inversion alone. Returns the report's path and the analysis figures shown."""
    directory = Path(directory)
    refuse_links(directory)  # figures and the page are rewritten in place
    if not (directory / SUMMARY_FILE).exists() and (directory / INVERSION_CONFIG).is_file():
        page = render_inversion_only(directory, title or f"tunnelscope: {directory}")
        return write_text(directory / REPORT_FILE, page), 0
    results = Results.load(directory)
    if results.table.empty:
        raise RunDirectoryError(f"{directory / RESULTS_FILE} holds no rows: the analysis did not finish writing; run "
                                "it again with --overwrite")
    if redraw:
        pngs = save_run_figures(results, directory / FIGURES_DIR)
    else:
        pngs = [p for p in (directory / FIGURES_DIR / f"{name}.png" for name in FIGURES) if p.is_file()]
    return write_report(results, directory / REPORT_FILE, {p.stem: p for p in pngs}), len(pngs)


__all__ = ["refresh_report", "save_run", "save_run_figures"]
