"""Sweeps: a YAML grid of cells, each trained and analysed on Ray, into a resumable store."""

from .spec import Cell, SweepSpec
from .store import Store

__all__ = ["Cell", "Store", "SweepSpec"]
