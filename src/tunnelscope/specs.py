"""The spec grammar shared by datasets and models: ``name[key=value,key=value]``.

A spec is a base name followed by optional modifiers in square brackets, e.g.
``fashion-mnist[classes=0-4,size=32]`` or ``imagefolder:/data/pets[size=64]``. Values are
kept as strings here; each registry validates and converts its own modifiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SpecError

_SPEC = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<mods>[^\[\]]*)\])?\s*$")


@dataclass(frozen=True)
class Spec:
    """A parsed spec: its base name and its modifiers in the order given."""

    name: str
    modifiers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.modifiers:
            return self.name
        mods = ",".join(f"{k}={v}" for k, v in self.modifiers.items())
        return f"{self.name}[{mods}]"


def parse_spec(text: str, kind: str = "spec") -> Spec:
    """Split ``name[k=v,...]`` into a :class:`Spec`; raise :class:`SpecError` on bad syntax."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"empty {kind}: give a name such as 'fashion-mnist' or 'mlp-12x256'")
    match = _SPEC.match(text.strip())
    if match is None:
        raise SpecError(
            f"cannot parse {kind} {text!r}: expected NAME or NAME[key=value,...], "
            "e.g. 'fashion-mnist[classes=0-4,size=32]'"
        )
    modifiers: dict[str, str] = {}
    raw = match.group("mods")
    if raw is not None and raw.strip():
        for part in raw.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise SpecError(
                    f"bad modifier {part.strip()!r} in {kind} {text!r}: write key=value, "
                    "separated by commas"
                )
            if key in modifiers:
                raise SpecError(f"modifier {key!r} given twice in {kind} {text!r}")
            modifiers[key] = value
    return Spec(match.group("name").strip(), modifiers)


def safe_name(spec: str) -> str:
    """``spec`` with every run of characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by one ``_`` (trimmed): a folder name or a logged metric's key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")


def parse_int(value: str, key: str, spec: str, minimum: int | None = None) -> int:
    """Convert a modifier value to int, with an error naming the modifier and the spec."""
    try:
        number = int(value)
    except ValueError:
        raise SpecError(f"modifier {key}={value!r} in {spec!r} must be an integer") from None
    if minimum is not None and number < minimum:
        raise SpecError(f"modifier {key}={number} in {spec!r} must be >= {minimum}")
    return number


def parse_index_set(value: str, key: str, spec: str) -> list[int]:
    """Parse a class selection such as ``0-4``, ``3`` or ``0-2+5+7`` into unique ints, in the order given."""
    indices: list[int] = []
    for part in value.split("+"):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                start, stop = int(lo), int(hi)
                if stop < start:
                    raise ValueError
                indices.extend(range(start, stop + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise SpecError(
                f"modifier {key}={value!r} in {spec!r}: write class indices as a range "
                "'0-4', a single index '3', or a union joined by '+', e.g. '0-2+5+7'"
            ) from None
    if any(i < 0 for i in indices):
        raise SpecError(f"modifier {key}={value!r} in {spec!r}: class indices must be >= 0")
    if len(set(indices)) != len(indices):
        raise SpecError(f"modifier {key}={value!r} in {spec!r} repeats a class index")
    return indices
