"""Reduction policies: how a probe point's output becomes a ``(B, D)`` matrix (METRICS.md §1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError


@dataclass(frozen=True)
class Reduction:
    """A parsed reduction policy."""

    kind: str  # pool, gap, flatten, project
    size: int = 0  # pool size K, or projection dims D

    @staticmethod
    def parse(text: str) -> Reduction:
        """Parse ``pool2``, ``poolK``, ``gap``, ``flatten`` or ``project:D``."""
        text = text.strip().lower()
        if text == "gap":
            return Reduction("gap")
        if text == "flatten":
            return Reduction("flatten")
        if m := re.fullmatch(r"pool(\d+)", text):
            if int(m[1]) >= 1:
                return Reduction("pool", int(m[1]))
        if m := re.fullmatch(r"project:(\d+)", text):
            if int(m[1]) >= 1:
                return Reduction("project", int(m[1]))
        raise SpecError(f"unknown reduction {text!r}; valid: pool2 (default), poolK, gap, flatten, project:D")

    def __str__(self) -> str:
        return {"pool": f"pool{self.size}", "project": f"project:{self.size}"}.get(self.kind, self.kind)
