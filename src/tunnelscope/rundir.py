"""What a run directory holds: every file name in one place, and whether a directory is free.

An **analysis** directory (``tunnelscope analyze --out``) holds ``results.parquet``,
``config.json``, ``figures/``, ``report.html`` and, written last, ``summary.json``: a
directory without it holds a partial run. An inversion adds ``inversion.parquet`` and
``inversion.json``. A **training** directory (``tunnelscope train --out``) holds
``run.json``, ``history.csv``, ``resume.pt`` and ``checkpoints/step-NNNNNNN.pt``.
A **comparison** writes ``compare.csv``, ``runs.csv`` and ``seeds.csv``.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RunDirectoryError

# analysis
RESULTS_FILE, SUMMARY_FILE, CONFIG_FILE = "results.parquet", "summary.json", "config.json"
FIGURES_DIR, REPORT_FILE = "figures", "report.html"
INVERSION_FILE, INVERSION_CONFIG = "inversion.parquet", "inversion.json"
# training
RUN_FILE, HISTORY_FILE, RESUME_FILE, CKPT_DIR = "run.json", "history.csv", "resume.pt", "checkpoints"
# comparison and sweeps
COMPARE_FILE, RUNS_FILE, SEEDS_FILE, COLLECTED_FILE = "compare.csv", "runs.csv", "seeds.csv", "collected.parquet"


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken at ``step``, inside :data:`CKPT_DIR`."""
    return f"step-{step:07d}.pt"


def check_free(directory: str | Path, overwrite: bool) -> bool:
    """Whether ``directory`` already holds analysis results; refuses it unless ``overwrite``."""
    out = Path(directory)
    complete = (out / SUMMARY_FILE).exists()
    taken = complete or (out / RESULTS_FILE).exists()
    if taken and not overwrite and not complete:
        raise RunDirectoryError(f"{out} holds a partial analysis (no {SUMMARY_FILE}: an earlier run stopped before "
                                "finishing); pass --overwrite (overwrite=True) to replace it or choose another --out")
    if taken and not overwrite:
        raise RunDirectoryError(f"{out} already holds analysis results; pass --overwrite (overwrite=True) "
                                "to replace them or choose another --out")
    return taken


__all__ = ["CKPT_DIR", "COLLECTED_FILE", "COMPARE_FILE", "CONFIG_FILE", "FIGURES_DIR", "HISTORY_FILE",
           "INVERSION_CONFIG", "INVERSION_FILE", "REPORT_FILE", "RESULTS_FILE", "RESUME_FILE", "RUNS_FILE",
           "RUN_FILE", "SEEDS_FILE", "SUMMARY_FILE", "check_free", "checkpoint_name"]
