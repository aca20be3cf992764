"""What every CLI module shares: the consoles, common options and the table printer.

Light on purpose (click and rich only), so that ``tunnelscope --help`` answers at once.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

POINTS_HELP = "blocks, conv, or comma-separated module globs ('*' within one dotted level, '**' across levels)."
PIPED_MAX_WIDTH = 10_000  # columns a piped table may take
out_console = Console(soft_wrap=True)  # lines are never broken: paths and values survive piping
err_console = Console(stderr=True, soft_wrap=True)

data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                help="Folder searched first for dataset files (default: $TUNNELSCOPE_DATA).")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace an earlier run of this command in --out (another kind's run is never "
                                     "replaced).")
POINT_SETS = ("blocks", "conv")


def _points_value(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> str | list[str]:
    """``--points`` given once or more, each a set name or a comma list of module-name globs: the
    set name, or every glob in the order given."""
    items = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not items:
        raise click.BadParameter("give blocks, conv or module-name globs", param_hint="--points")
    if len(items) == 1 and items[0] in POINT_SETS:
        return items[0]
    if any(item in POINT_SETS for item in items):
        raise click.BadParameter(f"{', '.join(POINT_SETS)} are whole sets: give one alone, or module-name globs",
                                 param_hint="--points")
    return items


points_option = click.option("--points", multiple=True, default=("blocks",), show_default=True,
                             callback=_points_value, help=POINTS_HELP + " Repeat --points to give more globs.")
download_option = click.option("--download", is_flag=True,
                               help="Let torchvision download missing datasets (needs network access).")


def _cell(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def print_frame(frame, title: str) -> None:
    """A pandas frame as a rich table on standard output (floats to 4 significant digits). On a
    terminal too narrow for it, a frame with fewer rows than columns is shown transposed (one
    row per column, one column per row: the runs of ``compare``) rather than squeezed."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    if out_console.is_terminal and _natural_width(table) > out_console.width and len(frame) < len(frame.columns):
        table = Table(title=f"{title} (one column per row)")
        table.add_column("")
        for i in range(len(frame)):
            table.add_column(_cell(frame.iloc[i, 0]))
        for col in frame.columns[1:]:
            table.add_row(str(col), *(_cell(v) for v in frame[col].tolist()))
    print_table(table)


def _natural_width(table: Table) -> int:
    """Columns ``table`` takes when nothing is cut or wrapped."""
    return out_console.measure(table, options=out_console.options.update(max_width=PIPED_MAX_WIDTH)).maximum


def print_table(table: Table) -> None:
    """A rich table on standard output: fitted to a terminal; at its natural width when piped."""
    if out_console.is_terminal:  # the table fits the window
        out_console.print(table)
        return
    # piped or redirected: the table keeps its natural width, so no value is cut or split over lines
    width = out_console.width
    out_console.width = max(width, _natural_width(table))
    try:
        out_console.print(table)
    finally:
        out_console.width = width


__all__ = ["POINTS_HELP", "data_root_option", "device_option", "download_option", "err_console", "out_console",
           "overwrite_option", "points_option", "print_frame", "print_table"]
