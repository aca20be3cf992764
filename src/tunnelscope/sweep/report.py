"""Former home of the sweep page; kept for one release as a re-export of :mod:`tunnelscope.report.sweep`."""

from ..report.sweep import aggregate_figures, dynamics_figure, write_sweep_report

__all__ = ["aggregate_figures", "dynamics_figure", "write_sweep_report"]
