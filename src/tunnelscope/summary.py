"""The summary of an analysis (``summary.json``): every key, typed, in one place.

A summary is a plain dict (it is saved as JSON and read back by older and newer
versions), typed by :class:`Summary`. Code reads and writes it through the constants and
key functions here, never through string literals: ``summary[TUNNEL_START]``,
``summary[ci_key(MEAN_RETAINED)]``, ``summary[start_key(0.98)]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Required, TypedDict, cast

from .jsontypes import DEFINED, Interval, misfit_message

TAUS: Final = (0.95, 0.98)  # thresholds of the tunnel's start and length (fraction of the final ID accuracy)
DEFAULT_TAU: Final = 0.95


def start_key(tau: float = DEFAULT_TAU) -> str:
    """The key of the tunnel's start at threshold ``tau``: the first layer within ``tau`` of the final accuracy."""
    return f"tunnel_start@{tau}"


def length_key(tau: float = DEFAULT_TAU) -> str:
    """The key of the tunnel's length (layers from its start to the last) at threshold ``tau``."""
    return f"tunnel_length@{tau}"


def ci_key(key: str) -> str:
    """The key of ``key``'s ``[lo, hi]`` bootstrap interval."""
    return f"{key}_ci"


TUNNEL_START: Final = "tunnel_start@0.95"
TUNNEL_LENGTH: Final = "tunnel_length@0.95"
TUNNEL_START_CI: Final = "tunnel_start@0.95_ci"
MEAN_RETAINED: Final = "mean_retained"
MEAN_RETAINED_CI: Final = "mean_retained_ci"
STRENGTH: Final = "strength"
BEST_TRANSFER_LAYER: Final = "best_transfer_layer"
ID_GAIN: Final = "id_gain_after_start"  # final ID accuracy minus the tunnel start's (a fraction)
ID_GAIN_SHARE: Final = "id_gain_share"  # that gain over the error left at the start
RANK_COLLAPSE: Final = "rank_collapse_layer"  # first layer from which the rank stays at or below half its maximum
RANK_DECLINE: Final = "rank_decline_layer"  # the last layer before that still at 90% of the maximum: the fall starts
TUNNEL_CLAIMED: Final = "tunnel_claimed"  # whether the signatures agree on a tunnel
MODEL_ACCURACY: Final = "model_accuracy"
EFFECTIVE_DEPTH: Final = "effective_depth"
POINTS: Final = "points"
OOD: Final = "ood"
OOD_SKIPPED: Final = "ood_skipped"
FLAGS: Final = "flags"
VERDICT: Final = "verdict"
VERDICT_VALID: Final = "verdict_valid"
REFERENCE: Final = "reference"
C_SENSITIVITY: Final = "probe_c_sensitivity"  # the headline under each C of the probes' grid


class OODRow(TypedDict, total=False):
    """One OOD dataset's tunnel metrics (``summary["ood"]`` holds one per dataset); a value that is
    not defined (Pearson ρ of a constant or too short curve) is None, as the saved JSON has it."""

    name: str
    retained: float
    best_point: int
    pearson: float | None
    alignment: float
    retained_ci: Interval
    pearson_ci: Interval
    alignment_ci: Interval
    retained_in_sample: float | None


class FlagRow(TypedDict):
    """One flag (``summary["flags"]``): a short code, the sentence the report shows, and whether
    it blocks the verdict."""

    code: str
    message: str
    blocking: bool


CSensitivityRow = TypedDict("CSensitivityRow", {
    "C": Required[Annotated[float, DEFINED]], "points_choosing": int, "id_final": "float | None",
    "tunnel_start@0.95": "int | None",
    "mean_retained": "float | None", "strength": "str | None", "best_transfer_layer": "int | None",
}, total=False)
CSensitivityRow.__doc__ = """The headline under one ``C`` of the probes' grid (``summary["probe_c_sensitivity"]``)."""


Summary = TypedDict("Summary", {
    "model": str, "data": str, "classes": int, "ood_datasets": list[str], "points": int,
    "tunnel_start@0.95": "int | None", "tunnel_length@0.95": "int | None",
    "tunnel_start@0.98": "int | None", "tunnel_length@0.98": "int | None",
    "tunnel_start@0.95_ci": Interval, "tunnel_length@0.95_ci": Interval,
    "tunnel_start@0.98_ci": Interval, "tunnel_length@0.98_ci": Interval,
    "mean_retained": float, "mean_retained_ci": Interval, "strength": str,
    "best_transfer_layer": int, "best_transfer_layer_ci": Interval, "id_gain_after_start": float,
    "id_gain_after_start_ci": Interval, "id_gain_share": float, "rank_collapse_layer": "int | None",
    "rank_decline_layer": "int | None",
    "tunnel_claimed": bool, "ood": list[OODRow], "ood_skipped": list[str],
    "effective_depth": "int | None", "effective_depth_point": "str | None", "ncc_eps": float,
    "model_accuracy": "float | None", "flags": list[FlagRow], "verdict_valid": bool, "verdict": str,
    "reference": dict[str, dict[str, Any]], "probe_c_sensitivity": list[CSensitivityRow],
}, total=False)
Summary.__doc__ = """The keys a summary may hold (``total=False``: which ones depends on the metrics run)."""



def as_summary(values: Mapping[str, Any]) -> Summary:
    """``values`` as a :class:`Summary`, refusing (``KeyError``) any key it does not declare:
    the one check every summary the engine builds goes through."""
    unknown = set(values) - set(Summary.__annotations__)
    if unknown:
        raise KeyError(f"summary keys not declared in tunnelscope.summary.Summary: {sorted(unknown)}")
    return cast(Summary, dict(values))


def tunnel_claimed(summary: Mapping[str, Any]) -> bool:
    """Whether a summary's verdict claims a tunnel: valid, with its signatures agreeing. The
    report, the terminal and the figures name a tunnel (and shade it) only then."""
    return bool(summary.get(TUNNEL_CLAIMED)) and bool(summary.get(VERDICT_VALID, False))


REFERENCE_KEYS: Final = (MODEL_ACCURACY, TUNNEL_START, TUNNEL_START_CI, MEAN_RETAINED, MEAN_RETAINED_CI,
                         EFFECTIVE_DEPTH)

def check_summary(summary: Any, where: str) -> None:
    """Refuse (``ValueError``, one line) a summary read back that is not a JSON object or whose
    declared keys hold values of the wrong type (nested rows included)."""
    if not isinstance(summary, dict):
        raise ValueError(f"{where} holds a {type(summary).__name__}, not a JSON object")
    if wrong := misfit_message(summary, Summary, where):
        raise ValueError(f"{wrong}; the file was changed by hand or damaged")


__all__ = ["check_summary", "BEST_TRANSFER_LAYER", "C_SENSITIVITY", "DEFAULT_TAU", "ID_GAIN", "ID_GAIN_SHARE",
           "RANK_COLLAPSE", "RANK_DECLINE", "TUNNEL_CLAIMED",
           "EFFECTIVE_DEPTH", "FLAGS", "MEAN_RETAINED", "MEAN_RETAINED_CI",
           "MODEL_ACCURACY", "OOD", "OOD_SKIPPED", "POINTS", "REFERENCE", "REFERENCE_KEYS", "STRENGTH", "TAUS",
           "TUNNEL_LENGTH", "TUNNEL_START", "TUNNEL_START_CI", "VERDICT", "VERDICT_VALID", "OODRow", "Summary",
           "CSensitivityRow", "FlagRow", "as_summary", "ci_key", "length_key", "start_key", "tunnel_claimed"]
