"""A run's figures and report in a notebook, without writing a run directory.

``plot(results, "probes")`` draws one of the run's figures (a matplotlib ``Figure``, which
Jupyter shows inline); ``view(results)`` is the report's first part (the verdict, the summary,
the sensitivity to the probe's C and every figure) as an object Jupyter renders as HTML.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from matplotlib.figure import Figure

from ..errors import ConfigError
from ..results import Results
from .figures import FIGURES, run_figures
from .html import figure_html, summary_lines, verdict_class


def plot(results: Results, name: str = "probes") -> Figure:
    """The run's figure ``name`` (``probes``, ``probes_normalised``, ``rank``, ``collapse``, ``pc1``,
    ``cka``, ``metrics``, ``matrices``); refuses a name the run has no data for, naming those it has."""
    drawn = FIGURES[name](results) if name in FIGURES else None
    if drawn is None:
        available = [n for n, draw in FIGURES.items() if draw(results) is not None]
        raise ConfigError(f"no figure {name!r} for this run; it has: {', '.join(available) or 'none'}")
    return drawn


@dataclass
class ReportView:
    """A run's verdict, summary and figures, rendered by Jupyter as HTML (``_repr_html_``)."""

    results: Results

    def _repr_html_(self) -> str:
        s = self.results.summary
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(str(v))}</td></tr>" for k, v in summary_lines(s))
        figures = []
        for name, fig in run_figures(self.results).items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
            figures.append(figure_html(name, buffer.getvalue()))
        return (f'<div><p class="{verdict_class(s)}"><strong>{html.escape(s.get("verdict", ""))}</strong></p>'
                f"<table>{rows}</table>{''.join(figures)}</div>")


def view(results: Results) -> ReportView:
    """The report of ``results`` for a notebook: display it (the last expression of a cell)."""
    return ReportView(results)


__all__ = ["ReportView", "plot", "view"]
