"""Sweeps: a YAML grid of cells, each trained and analysed on Ray, into a resumable store."""

from .ood_table import collect, ood_table
from .spec import Cell, SweepSpec
from .store import Store

__all__ = ["Cell", "Store", "SweepSpec", "collect", "ood_table"]
