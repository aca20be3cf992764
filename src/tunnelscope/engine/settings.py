"""One settings object for an analysis: built and validated in one place, passed whole.

:class:`AnalysisSettings` holds everything that says *how* an analysis reads its data
(capture, sampling, probes, metric options), as opposed to *what* it analyses (the model,
the data and OOD sets, the metrics). The public entry points (``analyze``,
``analyze_features``, ``analyze_layers``, ``probe_layers``, ``analyze_run``, the sweep
cells) keep readable keyword arguments and map them onto the object in one place,
:func:`settings_from`; inside the engine the object travels whole.

Every constraint is declared as data in :data:`CONSTRAINTS` and checked by one validator
(:func:`validate`), so a bad value gets the same one-line error whichever door it came in by.
Metric options are written in the spec grammar on the metric and declared by it
(``Metric.options``): ``"ncc[eps=0.05],cka[passes=10]"``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..capture import DEFAULT_MAX_DIM
from ..errors import ConfigError, SpecError
from ..metrics import REGISTRY
from ..probes import ProbeConfig
from ..specs import parse_spec
from ..uncertainty import DEFAULT_RESAMPLES


@dataclass(frozen=True)
class AnalysisSettings:
    """How an analysis captures, samples and probes its data; every field is recorded.

    Capture: ``points`` (a set name or module-name globs), ``reduce``, ``max_dim``,
    ``include_input`` (and ``input_cache``: its statistics kept between analyses of the same
    data, :mod:`tunnelscope.engine.input_cache`), ``batch_size``, ``device``. Sampling: ``max_samples`` per split (a
    seeded subset; None: all), ``max_train`` / ``max_test`` for the probes (None: as
    ``max_samples``), ``seed``. Probes: ``probe`` (a :class:`ProbeConfig`; None: the default
    protocol seeded by ``seed``), ``resamples`` (bootstrap; 0: no intervals). Metric options:
    ``ncc_eps`` (NCC train error of the effective depth), ``cka_passes`` (shuffled passes
    feeding minibatch CKA), ``cka_random`` (re-initialised networks CKA is compared with; 0: none),
    ``ridge`` (the ridge proxy's strength), ``precision`` (of the
    per-batch products). Where data lives (``data_root``) and ``progress`` bars.
    """

    points: str | Sequence[str] = "blocks"
    reduce: str = "pool2"
    max_dim: int | None = DEFAULT_MAX_DIM
    include_input: bool = True
    input_cache: bool = True
    batch_size: int = 256
    device: str | torch.device = "auto"
    max_samples: int | None = 10_000
    max_train: int | None = None
    max_test: int | None = None
    seed: int = 0
    probe: ProbeConfig | None = None
    resamples: int = DEFAULT_RESAMPLES
    ncc_eps: float = 0.01
    cka_passes: int = 1
    cka_random: int = 0
    ridge: float = 1e-3
    precision: str = "float32"
    data_root: str | Path | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.points, str) and isinstance(self.points, Sequence):
            object.__setattr__(self, "points", tuple(self.points))
        validate(self)

    @property
    def train_samples(self) -> int | None:
        """The probes' training samples per split (``max_train``, else ``max_samples``)."""
        return self.max_samples if self.max_train is None else self.max_train

    @property
    def test_samples(self) -> int | None:
        """The probes' test samples per split (``max_test``, else ``max_samples``)."""
        return self.max_samples if self.max_test is None else self.max_test

    @property
    def points_request(self) -> str | list[str]:
        """``points`` as the capture and the config take it: a set name or a list of globs."""
        return self.points if isinstance(self.points, str) else list(self.points)

    def replace(self, **changes: Any) -> AnalysisSettings:
        """A copy with ``changes`` (validated); an unknown name is a :class:`ConfigError`."""
        unknown = sorted(set(changes) - FIELDS)
        if unknown:
            raise ConfigError(f"unknown analysis setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(FIELDS))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AnalysisSettings:
        """Settings from a mapping of field names (a sweep file's ``analysis`` section, say)."""
        return cls().replace(**dict(values))


FIELDS = frozenset(f.name for f in dataclasses.fields(AnalysisSettings))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(AnalysisSettings)}


# ---------------------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` in ``[low, high]`` (``open_low``: ``(low, ...``); None allowed if ``none``."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    none: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks the constraint (None when it keeps it)."""
        if value is None:
            return None if self.none else "must be given"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (self.kind is int and not isinstance(value, int)) or not math.isfinite(value):
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return f"must be {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None

    def describe(self) -> str:
        return "" if not self.none else " (or None)"


@dataclass(frozen=True)
class OneOf:
    """One of ``values``."""

    values: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        return None if value in self.values else f"must be one of {', '.join(map(str, self.values))}"

    def describe(self) -> str:
        return ""


@dataclass(frozen=True)
class InstanceOf:
    """An instance of ``types`` (None allowed if ``none``)."""

    types: tuple[type, ...]
    none: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None and self.none:
            return None
        return None if isinstance(value, self.types) else f"must be a {' or '.join(t.__name__ for t in self.types)}"

    def describe(self) -> str:
        return " (or None)" if self.none else ""


Constraint = Interval | OneOf | InstanceOf
CONSTRAINTS: dict[str, Constraint] = {
    "points": InstanceOf((str, tuple)),
    "reduce": InstanceOf((str,)),
    "max_dim": Interval(int, 1, none=True),
    "include_input": InstanceOf((bool,)),
    "input_cache": InstanceOf((bool,)),
    "batch_size": Interval(int, 1),
    "device": InstanceOf((str, torch.device)),
    "max_samples": Interval(int, 1, none=True),
    "max_train": Interval(int, 1, none=True),
    "max_test": Interval(int, 1, none=True),
    "seed": Interval(int, 0),
    "probe": InstanceOf((ProbeConfig,), none=True),
    "resamples": Interval(int, 0),
    "ncc_eps": Interval(float, 0, 1),
    "cka_passes": Interval(int, 1),
    "cka_random": Interval(int, 0, 999),
    "ridge": Interval(float, 0, open_low=True),
    "precision": OneOf(("float32", "float64")),
    "data_root": InstanceOf((str, Path), none=True),
    "progress": InstanceOf((bool,), none=True),
}


def validate(settings: AnalysisSettings) -> None:
    """Check every field against :data:`CONSTRAINTS`; the first broken one is a :class:`ConfigError`."""
    for name, constraint in CONSTRAINTS.items():
        value = getattr(settings, name)
        problem = constraint.problem(value)
        if problem is not None:
            raise ConfigError(f"{name} {problem}{constraint.describe()}, got {value!r}")


# ---------------------------------------------------------------------------------------- facades
def settings_from(settings: AnalysisSettings | None, keywords: Mapping[str, Any]) -> AnalysisSettings:
    """The one place a facade's keyword arguments become settings: ``settings`` (default: the
    defaults) with every keyword of ``keywords`` that names a field and differs from its
    default. Other entries (the facade's own arguments) are ignored."""
    changes = {k: v for k, v in keywords.items() if k in FIELDS and not _same(v, DEFAULTS[k])}
    return (settings or AnalysisSettings()).replace(**changes)


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value is default or (type(value) is type(default) and value == default)


# ---------------------------------------------------------------------------------------- metric options
_ITEM = re.compile(r"[^,\[\]]+(?:\[[^\[\]]*\])?")


def split_request(request: str) -> list[str]:
    """A comma list of metric items, commas inside ``[...]`` kept: ``"ncc[eps=0.1],cka"`` → two items."""
    items, rest = [], request.strip()
    while rest:
        match = _ITEM.match(rest)
        if match is None:
            raise SpecError(f"cannot parse metrics {request!r}: write name or name[option=value,...], separated "
                            "by commas")
        items.append(match.group(0).strip())
        rest = rest[match.end():].lstrip()
        if rest and not rest.startswith(","):
            raise SpecError(f"cannot parse metrics {request!r} at {rest!r}: separate metrics by commas")
        rest = rest[1:].lstrip()
    return [item for item in items if item]


def metric_options(metrics: str | Sequence[str]) -> tuple[str | list[str], dict[str, Any]]:
    """``metrics`` without options, and the settings its options ask for: ``"ncc[eps=0.05],cka[passes=10]"``
    → ``(["ncc", "cka"], {"ncc_eps": 0.05, "cka_passes": 10})``. An option is declared by its
    metric (``Metric.options``: option name → settings field); others are refused."""
    if isinstance(metrics, str) and metrics.strip() in ("default", "all"):
        return metrics.strip(), {}
    items = split_request(metrics) if isinstance(metrics, str) else [str(m) for m in metrics]
    names, changes = [], {}
    for item in items:
        spec = parse_spec(item, "metric")
        names.append(spec.name)
        declared = dict(REGISTRY[spec.name].options) if spec.name in REGISTRY else {}
        for key, text in spec.modifiers.items():
            if key not in declared:
                valid = ", ".join(declared) or "none"
                raise ConfigError(f"metric {spec.name!r} has no option {key!r}; its options: {valid}")
            field = declared[key]
            changes[field] = _typed(text, field, item)
    return names, changes


def _typed(text: str, field: str, item: str) -> Any:
    """An option's text as its field's type (int or float)."""
    constraint = CONSTRAINTS[field]
    kind = constraint.kind if isinstance(constraint, Interval) else str
    try:
        return int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"option {text!r} in {item!r} must be {what}") from None


def with_metric_options(settings: AnalysisSettings, options: Mapping[str, Any]) -> AnalysisSettings:
    """``settings`` with the metric options of a request; an option that contradicts a setting
    given another way (``--ncc-eps 0.1`` with ``ncc[eps=0.2]``) is refused."""
    clashes = [k for k, v in options.items() if getattr(settings, k) != DEFAULTS[k] and getattr(settings, k) != v]
    if clashes:
        raise ConfigError(f"{', '.join(clashes)} given twice with different values (as a setting and as a metric "
                          "option); give it once")
    return settings.replace(**options) if options else settings


__all__ = ["CONSTRAINTS", "DEFAULTS", "FIELDS", "AnalysisSettings", "InstanceOf", "Interval", "OneOf",
           "metric_options", "settings_from", "split_request", "validate", "with_metric_options"]
