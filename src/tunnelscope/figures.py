"""Former home of the figures; kept for one release as a re-export of :mod:`tunnelscope.report.figures`."""

from .report.figures import FIGURES, compare_figure, inversion_curves, inversion_grid, run_figures, save_figures

__all__ = ["FIGURES", "compare_figure", "inversion_curves", "inversion_grid", "run_figures", "save_figures"]
