"""Honest verdicts: what is refused, what is flagged, and the one-line verdict.

Refused (an :class:`~tunnelscope.errors.InsufficientDataError`): a probe over one class, over
fewer samples than classes, or over fewer than :data:`MIN_PER_CLASS` training samples in some
class. Flagged in ``summary["flags"]`` (each ``{"code", "message", "blocking"}``; a blocking
flag makes ``summary["verdict_valid"]`` false and is named in the verdict):

- ``untrained`` (blocking): the model is at step 0 or randomly initialised;
- ``near_chance`` (blocking): the model's own test accuracy is within a tenth of the way
  from chance to perfect;
- ``unconverged`` (blocking): a probe on a curve the verdict reads did not converge;
- ``diverged`` (blocking): a probe's loss became NaN or infinite;
- ``few_samples``: fewer than :data:`FEW_PER_CLASS` samples in some class of a split;
- ``first_layer``: ID accuracy is within τ of its final value from the first layer (or the
  input), so the task is linearly solvable early; that is not evidence of a long tunnel;
- ``non_monotone``: the ID curve falls by more than :data:`DROP_PP` points somewhere;
- ``short_curve``: fewer than three points between the input and the output, so Pearson ρ
  (±1 through any two points) is not reported;
- ``probe_c_sensitive``: the tunnel start or the strength label differs between the Cs of
  the probes' grid (the headline uses the C chosen per point on validation data);
- ``reference_retains_more``: the untrained reference keeps a larger share of its OOD peak
  than the model (each curve is compared with its own peak).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .errors import InsufficientDataError
from .summary import (
    BEST_TRANSFER_LAYER,
    EFFECTIVE_DEPTH,
    ID_GAIN,
    ID_GAIN_SHARE,
    MEAN_RETAINED,
    OOD_SKIPPED,
    POINTS,
    RANK_COLLAPSE,
    RANK_DECLINE,
    STRENGTH,
    TUNNEL_CLAIMED,
    TUNNEL_START,
    ci_key,
)
from .tunnel import PEARSON_MIN_POINTS

MIN_PER_CLASS = 5
FEW_PER_CLASS = 20
MIN_TEST = 10
NEAR_CHANCE_SHARE = 0.1
DROP_PP = 2.0


@dataclass
class Flag:
    """One reason to distrust (``blocking``) or to read carefully a result."""

    code: str
    message: str
    blocking: bool

    def as_dict(self) -> dict:
        return asdict(self)


def class_counts(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Samples per class (classes ``0 … num_classes-1``)."""
    return torch.bincount(labels.long().cpu(), minlength=num_classes).numpy()


def check_probe_samples(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int,
                        what: str, class_names: Sequence[str] | None = None) -> list[Flag]:
    """Refuse probes that cannot mean anything; flag thin ones. ``what`` names the dataset."""
    if num_classes < 2:
        raise InsufficientDataError(f"{what} has a single class; a linear probe and the tunnel verdict need "
                                    "at least 2 classes")
    counts = class_counts(train_labels, num_classes)
    names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    if len(train_labels) < num_classes:
        raise InsufficientDataError(f"{what}: {len(train_labels)} training samples for {num_classes} classes; "
                                    f"a probe needs at least {MIN_PER_CLASS} per class (raise --max-samples / "
                                    "--max-train, or drop per_class=)")
    if counts.min() < MIN_PER_CLASS:
        c = int(counts.argmin())
        raise InsufficientDataError(f"{what}: class {names[c]!r} has {int(counts[c])} training samples; a probe "
                                    f"needs at least {MIN_PER_CLASS} per class (raise --max-samples / --max-train, "
                                    "or drop per_class=)")
    if len(test_labels) < MIN_TEST:
        raise InsufficientDataError(f"{what}: {len(test_labels)} test samples; probe accuracy needs at least "
                                    f"{MIN_TEST} (raise --max-samples or drop test_per_class=)")
    test_counts = class_counts(test_labels, num_classes)
    few = min(int(counts.min()), int(test_counts.min()))
    if few < FEW_PER_CLASS:
        return [Flag("few_samples", f"{what}: as few as {few} samples in a class of a split; its probe "
                                    "accuracies are noisy (see their intervals)", False)]
    return []


def check_statistics_samples(n: int, split: str, what: str) -> None:
    """Layer statistics need at least two samples per split."""
    if n < 2:
        raise InsufficientDataError(f"{what}: the {split} sample has {n} sample(s); covariances, rank and "
                                    "neural collapse need at least 2 (raise --max-samples)")


def model_flags(model_info: dict, model_accuracy: float | None, num_classes: int) -> list[Flag]:
    """``untrained`` from where the model came from; ``near_chance`` from its own test accuracy;
    ``accuracy_unknown`` when a model's output could not be read as class scores (not for
    precomputed features, which have no model to check)."""
    flags = []
    step = model_info.get("step")
    if model_info.get("untrained") or step == 0:
        why = "a checkpoint at training step 0" if step == 0 else "randomly initialised (no weights given)"
        flags.append(Flag("untrained", f"the model is untrained ({why}): its layers hold random features, "
                                       "not learned ones, so there is no tunnel to find", True))
    if model_accuracy is not None and not np.isfinite(model_accuracy) and not model_info.get("precomputed_features"):
        flags.append(Flag("accuracy_unknown", "the model's output could not be read as class scores of shape (batch, "
                                              "classes), so whether it learned the task (its own test accuracy "
                                              "against chance) was not checked", False))
    if model_accuracy is not None and np.isfinite(model_accuracy):
        chance = 1 / num_classes
        if model_accuracy < chance + NEAR_CHANCE_SHARE * (1 - chance):
            flags.append(Flag("near_chance", f"the model's own test accuracy is {model_accuracy:.3f}, near chance "
                                             f"({chance:.3f}): it has not learned the task", True))
    return flags


def curve_flags(id_curve: Sequence[float], input_accuracy: float | None, tau: float = 0.95,
                upper: Sequence[float] | None = None) -> list[Flag]:
    """``first_layer``, ``non_monotone``, ``dip_after_start`` and ``short_curve`` from the ID probe
    curve (points 1 … penultimate); ``upper`` are the upper bounds of its points' intervals."""
    curve = np.asarray(id_curve, dtype=float)
    flags = _dip_flags(curve, upper, tau)
    if 0 < len(curve) < PEARSON_MIN_POINTS:
        flags.append(Flag("short_curve", f"the tunnel's curves have {len(curve)} point(s): Pearson ρ needs at least "
                                         f"{PEARSON_MIN_POINTS} (through two points it is ±1 whatever the curves) and "
                                         "is not reported; probe more points", False))
    if len(curve) and np.isfinite(curve).all():
        target = tau * curve[-1]
        if input_accuracy is not None and np.isfinite(input_accuracy) and input_accuracy >= target:
            flags.append(Flag("first_layer", f"a probe on the raw input already reaches {input_accuracy:.3f}, "
                                             f"within {1 - tau:.0%} of the last layer's {curve[-1]:.3f}: the task is "
                                             "linearly solvable from the input, so the layers add little and this is "
                                             "not evidence of a long tunnel", False))
        elif len(curve) > 1 and curve[0] >= target:
            flags.append(Flag("first_layer", f"ID probe accuracy is within {1 - tau:.0%} of its final value from "
                                              "layer 1: the task is linearly solvable from the first layer, which is "
                                              "not evidence of a long tunnel", False))
        running = np.maximum.accumulate(curve)
        drop = float(np.max(running - curve)) * 100
        if drop > DROP_PP:
            at = int(np.argmax(running - curve)) + 1
            flags.append(Flag("non_monotone", f"ID probe accuracy is not monotone: it falls {drop:.1f} points below "
                                               f"an earlier layer's at layer {at}", False))
    return flags


def _dip_flags(curve: np.ndarray, upper: Sequence[float] | None, tau: float) -> list[Flag]:
    """``dip_after_start`` (blocking): a layer after the tunnel start whose accuracy interval lies
    wholly below τ times the final accuracy, so that "within τ of the final value from layer l*"
    does not hold after l*."""
    if upper is None or not len(curve) or not np.isfinite(curve).all():
        return []
    target = tau * curve[-1]
    start = int(np.argmax(curve >= target))
    dips = [i + 1 for i in range(start + 1, len(curve)) if np.isfinite(upper[i]) and upper[i] < target]
    if not dips:
        return []
    return [Flag("dip_after_start", f"ID probe accuracy falls below {tau:g} x its final value at layer(s) "
                                    f"{', '.join(map(str, dips))} after reaching it at layer {start + 1} (beyond "
                                    "their intervals): the curve does not plateau, so no tunnel start is read from it",
                 True)]


def probe_flags(unconverged: dict[str, list[str]], diverged: dict[str, list[str]]) -> list[Flag]:
    """``unconverged`` and ``diverged`` per dataset (``{dataset: [points]}``)."""
    flags = []
    for dataset, points in unconverged.items():
        if points:
            flags.append(Flag("unconverged", f"{dataset}: probes at {len(points)} point(s) did not converge "
                                             f"({', '.join(points[:4])}{', ...' if len(points) > 4 else ''}); use "
                                             "the default lbfgs protocol or a larger budget", True))
    for dataset, points in diverged.items():
        if points:
            flags.append(Flag("diverged", f"{dataset}: probes diverged at {', '.join(points)}", True))
    return flags


def c_sensitivity_flags(rows: Sequence[dict]) -> list[Flag]:
    """``probe_c_sensitive`` (not blocking): the tunnel start or the strength label differs between
    the probes' Cs (the rows of :func:`tunnelscope.engine.probing.c_sensitivity`)."""
    starts = sorted({r[TUNNEL_START] for r in rows if r.get(TUNNEL_START) is not None})
    labels = list(dict.fromkeys(r[STRENGTH] for r in rows if r.get(STRENGTH)))
    if len(starts) < 2 and len(labels) < 2:
        return []
    retained = [r[MEAN_RETAINED] for r in rows if r.get(MEAN_RETAINED) is not None]
    parts = []
    if len(starts) > 1:
        parts.append(f"the tunnel start moves between layers {starts[0]} and {starts[-1]}")
    if len(labels) > 1:
        parts.append(f"mean % retained spans {min(retained):.1f}-{max(retained):.1f} ({' / '.join(labels)})")
    grid = ", ".join(f"{r['C']:g}" for r in rows)
    return [Flag("probe_c_sensitive", f"over the probes' C in {{{grid}}}, {' and '.join(parts)}: the headline uses "
                                      "the C chosen per point on validation data; see the sensitivity table", False)]


def reference_flags(summary: Mapping[str, Any], reference: Mapping[str, Any]) -> list[Flag]:
    """``reference_retains_more`` (not blocking): the untrained reference keeps a larger share of
    its OOD peak than the model, which % retained allows (each curve is compared with its own
    peak) but a reader may take for the random network transferring better."""
    ours, theirs = summary.get(MEAN_RETAINED), reference.get(MEAN_RETAINED)
    if ours is None or theirs is None or not theirs > ours:
        return []
    return [Flag("reference_retains_more", f"the untrained reference retains {theirs:.1f}% of its OOD peak against "
                                           f"the model's {ours:.1f}%: % retained compares each curve with its own "
                                           "peak, and a random network's flat, low curve keeps most of a low peak; "
                                           "compare the OOD accuracies themselves, which the figure draws", False)]


def _ci(summary: dict, key: str, digits: int = 1) -> str:
    ci = summary.get(ci_key(key))
    if not ci or any(v is None or not np.isfinite(v) for v in ci):
        return ""
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if digits else f" [{int(ci[0])}, {int(ci[1])}]"


MAX_GAIN_SHARE = 0.25  # the ID gain after the start may close at most this share of the error left there
RANK_AGREEMENT = 1  # layers between the start and the rank's collapse that still count as agreeing


def tunnel_claim(summary: dict) -> tuple[bool, str]:
    """Whether the tunnel's signatures agree, and if not, why: ID accuracy within τ of its
    final value from layer l* with little still to gain after it (at most
    :data:`MAX_GAIN_SHARE` of the error left at l*), the numerical rank starting to collapse
    (its decline, :func:`tunnelscope.tunnel.rank_decline_layer`, on the way to staying at or
    below half its maximum) within :data:`RANK_AGREEMENT` layer of l*, and OOD accuracy peaking
    no later than the collapse. Runs saved before the decline was recorded use the collapse."""
    start, L = summary.get(TUNNEL_START), summary.get(POINTS)
    if start is None or L is None or start >= L:
        return False, "no layer after the start"
    reasons = []
    share = summary.get(ID_GAIN_SHARE)
    if share is not None and share > MAX_GAIN_SHARE:
        reasons.append(f"ID accuracy still closes {share:.0%} of the error left at layer {start} after it")
    if RANK_COLLAPSE not in summary:
        reasons.append("rank was not measured (add rank to the metrics)")
    elif summary[RANK_COLLAPSE] is None:
        reasons.append("the rank does not collapse")
    else:
        collapse = summary[RANK_COLLAPSE]
        decline = summary.get(RANK_DECLINE) or collapse
        if abs(decline - start) > RANK_AGREEMENT:
            reasons.append(f"the rank starts to fall at layer {decline}, not near layer {start}")
        peak = summary.get(BEST_TRANSFER_LAYER)
        if peak is not None and peak > max(collapse, start):
            reasons.append(f"OOD accuracy peaks at layer {peak}, after the collapse")
    return not reasons, "; ".join(reasons)


def _signature_text(summary: dict) -> str:
    """The signatures, each with its interval where it has one."""
    start = summary[TUNNEL_START]
    parts = [f"ID accuracy within 5% of its final value from layer {start}{_ci(summary, TUNNEL_START, 0)}"]
    if ID_GAIN in summary:
        gain = 100 * summary[ID_GAIN]
        ci = summary.get(ci_key(ID_GAIN))
        bounds = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and all(np.isfinite(ci)) else ""
        parts.append(f"+{gain:.1f} pp{bounds} after it")
    if summary.get(RANK_COLLAPSE) is not None:
        collapse, decline = summary[RANK_COLLAPSE], summary.get(RANK_DECLINE)
        parts.append(f"rank falling from layer {decline} to half its maximum at layer {collapse}"
                     if decline is not None and decline < collapse else f"rank collapsing from layer {collapse}")
    elif RANK_COLLAPSE in summary:
        parts.append("no rank collapse")
    if summary.get(BEST_TRANSFER_LAYER):
        parts.append(f"OOD accuracy peaking at layer {summary[BEST_TRANSFER_LAYER]}"
                     f"{_ci(summary, BEST_TRANSFER_LAYER, 0)}")
    return ", ".join(parts)


def verdict(summary: dict, names: list[str]) -> str:
    """One line from a summary: where the tunnel starts (with its interval), which layer
    transfers best (highest mean OOD probe accuracy), how much OOD accuracy the last layer
    keeps, NCC separability, and the reasons the verdict is not valid or must be read carefully."""
    if TUNNEL_START not in summary:
        return "the ID probes diverged (NaN accuracy); no tunnel verdict"
    start, L = summary[TUNNEL_START], summary[POINTS]
    flags = summary.get("flags", [])
    codes = {f["code"] for f in flags}
    claimed, why_not = tunnel_claim(summary)
    summary[TUNNEL_CLAIMED] = claimed
    if "first_layer" in codes and not claimed:
        text = (f"no tunnel evidence: ID probe accuracy is reached from the first layer (of {L}), "
                "the task is linearly solvable early")
    elif start < L:
        seen = _signature_text(summary)
        text = (f"the tunnel starts at layer {start}{_ci(summary, TUNNEL_START, 0)} of {L} ({seen})" if claimed else
                f"no clear tunnel: {seen}; they do not agree ({why_not})")
    else:
        text = f"no tunnel: ID probe accuracy still rises at the last layer ({L})"
    if summary.get(BEST_TRANSFER_LAYER):
        j = summary[BEST_TRANSFER_LAYER]
        text += (f"; the best layer to transfer from is {j}{_ci(summary, BEST_TRANSFER_LAYER, 0)} ({names[j - 1]}); "
                 f"mean OOD accuracy retained at the last layer: {summary['mean_retained']:.1f}%"
                 f"{_ci(summary, 'mean_retained')} ({summary['strength']})")
    if summary.get(OOD_SKIPPED):
        text += f"; OOD probes diverged on {', '.join(summary['ood_skipped'])}"
    if summary.get(EFFECTIVE_DEPTH):
        text += (f"; nearest-class-centre separable (train error <= {summary.get('ncc_eps', 0.01):g}) "
                 f"from layer {summary['effective_depth']}")
    if "non_monotone" in codes:
        text += "; the ID curve is not monotone"
    if "first_layer" in codes and claimed:
        text += "; the task is linearly solvable early (a short extractor), see the first_layer note"
    blocking = [f["code"] for f in flags if f["blocking"]]
    if blocking:
        text = f"NOT A VALID VERDICT ({', '.join(dict.fromkeys(blocking))}): " + text
    return text


__all__ = ["DROP_PP", "FEW_PER_CLASS", "Flag", "MAX_GAIN_SHARE", "RANK_AGREEMENT", "tunnel_claim",
           "MIN_PER_CLASS", "check_probe_samples", "check_statistics_samples",
           "curve_flags", "model_flags", "probe_flags", "verdict"]
