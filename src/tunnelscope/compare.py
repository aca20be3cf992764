"""Former home of run comparison; kept for one release as a re-export of :mod:`tunnelscope.report.compare`."""

from .report.compare import compare_runs, seed_group, seed_table

__all__ = ["compare_runs", "seed_group", "seed_table"]
