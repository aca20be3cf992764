"""A local sweep worker: reads ``{"store", "device", "threads", "cells"}`` as JSON on standard
input and runs those cells one after another (see :mod:`tunnelscope.sweep.local`)."""

from __future__ import annotations

import json
import sys

from .cell import run_cells
from .spec import Cell


def main() -> int:
    job = json.loads(sys.stdin.read())
    cells = [Cell(c["variables"], c["train"], c["analysis"]) for c in job["cells"]]
    run_cells(cells, job["store"], job["device"], job["threads"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
