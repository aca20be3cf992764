"""A random-network reference for CKA (``cka[random=K]``): how the model's CKA between two points
compares with that of ``K`` copies of its architecture, each re-initialised with its own seed,
on the same test samples, points and reduction.

Per pair of points the p-value is the rank of the model's CKA among the random networks':
``(1 + #{k : CKA_k >= CKA}) / (K + 1)``, exact for a model whose CKA is exchangeable with theirs
(a random network of the same architecture), so that with ``K = 19`` a cell is above the
reference at the 5% level (``p <= 0.05``) only when the model's CKA exceeds every random network's. Rows
``cka_random`` hold the p-values, like ``cka_null``'s; the record gives the seeds, the share of
pairs above the reference and the share below it (the same test the other way: training can make
layers *less* alike than a random network's, whose layers are strongly alike).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..models.init import untrained_copy
from ..progress import progress_bar
from .settings import AnalysisSettings

LEVEL = 0.05  # a pair is above the reference when its p-value is at most this
SEED_OFFSET = 1  # the random networks use seeds seed + 1 … seed + K (seed itself is the untrained reference's)


def cka_random_rows(net: nn.Module, table: pd.DataFrame, settings: AnalysisSettings,
                    cka_of: Callable[[nn.Module], pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """The ``cka_random`` rows of the model whose ``cka`` rows are in ``table``, and their record;
    ``cka_of(model)`` is the CKA matrix (points x points) of a model on the same test samples."""
    cka = table[(table.metric == "cka") & (table.split == "test") & table.other_point.notna()]
    observed = cka.pivot(index="point", columns="other_point", values="value")
    exceeded, undercut = np.zeros(observed.shape), np.zeros(observed.shape)
    seeds = [settings.seed + SEED_OFFSET + k for k in range(settings.cka_random)]
    with progress_bar(settings.progress) as bars:
        task = bars.add_task("random networks", total=len(seeds), info="CKA")
        for done, seed in enumerate(seeds, 1):
            with torch.no_grad():
                copy = untrained_copy(net, seed).eval()
            reference = cka_of(copy).reindex(index=observed.index, columns=observed.columns)
            exceeded += (reference.to_numpy() >= observed.to_numpy())
            undercut += (reference.to_numpy() <= observed.to_numpy())
            bars.update(task, completed=done)
    p = pd.DataFrame((1 + exceeded) / (len(seeds) + 1), index=observed.index, columns=observed.columns)
    rows = cka.assign(metric="cka_random", value=[float(p.loc[a, b]) for a, b in zip(cka.point, cka.other_point)])
    rows = rows.assign(valid=rows.valid & (rows.point != rows.other_point) & np.isfinite(cka.value.to_numpy()))
    rows.loc[rows.point == rows.other_point, "value"] = float("nan")
    pairs = (rows.point != rows.other_point).to_numpy()
    above, below = rows.value.to_numpy()[pairs], np.array(
        [(1 + undercut[observed.index.get_loc(a), observed.columns.get_loc(b)]) / (len(seeds) + 1)
         for a, b in zip(rows.point[pairs], rows.other_point[pairs])])
    share = lambda p: float((p <= LEVEL).mean()) if len(p) else float("nan")  # noqa: E731
    record = {"networks": len(seeds), "seeds": seeds, "level": LEVEL, "share_above": share(above),
              "share_below": share(below),
              "method": "the model's CKA ranked among re-initialised copies of its architecture (each module's "
                        "reset_parameters, one seed each) on the same test samples: p = (1 + #{CKA_k >= CKA}) / "
                        "(K + 1)"}
    return rows, record


__all__ = ["LEVEL", "cka_random_rows"]
