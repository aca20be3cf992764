"""Everything a person reads: figures, the HTML report, run comparisons and sweep pages.

The report reads :class:`~tunnelscope.results.Results`; results never import the report.

- :mod:`.html`: the self-contained HTML page of one run;
- :mod:`.run`: a complete run directory (:func:`save_run`) and its report refreshed in place;
- :mod:`.compare`: several runs side by side (``tunnelscope compare``);
- :mod:`.sweep`: a sweep's aggregate page;
- :mod:`.notebook`: one figure (:func:`plot`) or the report (:func:`view`) in a notebook.
"""

from .html import figure_html, inversion_section, page, render, render_inversion_only, summary_lines, write_report
from .notebook import plot, view
from .run import refresh_report, save_run, save_run_figures

__all__ = ["figure_html", "inversion_section", "page", "plot", "refresh_report", "render", "render_inversion_only",
           "save_run", "save_run_figures", "summary_lines", "view", "write_report"]
