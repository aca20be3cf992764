"""Terminal output that survives piping: tables keep their natural width off a terminal."""

from __future__ import annotations

import pandas as pd

from tunnelscope.cli_support import print_frame


def test_a_piped_table_never_cuts_or_splits_a_value(capsys):
    long_value, other = "x" * 150, "y" * 60
    print_frame(pd.DataFrame({"a": [long_value], "b": [1.5], "c": [other]}), "wide")
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if long_value in line)  # whole, on one line
    assert other in row and "1.5" in row and "…" not in "".join(lines)
