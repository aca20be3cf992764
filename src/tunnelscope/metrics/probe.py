"""The trained linear probes' rows, presented like every registered metric.

The probes are trained by the engine (:mod:`tunnelscope.engine.probing`) on cached features,
not computed from streaming moments, so they have no statistics record; their rows are
presented here so that the CLI table, the figures, the report and the dynamics heatmaps read
them from the registry like any other metric's.
"""

from __future__ import annotations

from .registry import Presentation, present

PROBE_ACC = present(Presentation("probe_acc", "linear probe accuracy", bounds=(0, 1), direction="higher",
                                 figure="probes", terminal=True, short="ID"))
# recorded per probe for the flags and the report's table, drawn by no figure of their own
PROBE_LOSS = present(Presentation("probe_loss", "probe training loss", bounds=(0, None), direction="lower",
                                  figure="probes"))
PROBE_CONVERGED = present(Presentation("probe_converged", "probe converged (1) or not (0)", bounds=(0, 1),
                                       figure="probes"))
PROBE_C = present(Presentation("probe_c", "the probe's C (inverse L2 strength)", bounds=(0, None), log_scale=True,
                               figure="probes", digits=2))

__all__ = ["PROBE_ACC", "PROBE_C", "PROBE_CONVERGED", "PROBE_LOSS"]
