"""Whether JSON read back from a file fits a declared Python type (TypedDicts, lists, unions).

A number that was not defined is saved as ``null``, so ``None`` fits ``float``. The check is
deliberately small: it answers "can the code that reads this value use it as declared",
which is what a damaged or hand-edited file breaks.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

PAIR = "two items"  # metadata of Annotated[list[...], PAIR]: a list of exactly two items (an interval)
DEFINED = "not null"  # metadata of Annotated[float, DEFINED]: a number that is never null
Interval = Annotated[list[float], PAIR]  # [lo, hi]; None where undefined
MISSING = "missing"  # what first_misfit reports for a required key that is absent
_NAMES = {float: "a number", int: "an integer", str: "text", bool: "true or false", type(None): "null"}


def fits(value: Any, annotation: Any) -> bool:
    """Whether the JSON value ``value`` fits ``annotation`` (recursing into lists, dicts and TypedDicts)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Required, typing.NotRequired):
        return fits(value, typing.get_args(annotation)[0])
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        return (fits(value, base) and (PAIR not in meta or len(value) == 2)
                and (DEFINED not in meta or value is not None))
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(annotation))
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(fits(v, inner) for v in value)
    if typing.is_typeddict(annotation):
        return isinstance(value, dict) and not misfits(value, annotation)
    if origin is dict or annotation is dict:
        _, inner = typing.get_args(annotation) or (str, Any)
        return isinstance(value, dict) and all(fits(v, inner) for v in value.values())
    return _fits_scalar(value, annotation)


def _fits_scalar(value: Any, annotation: Any) -> bool:
    if annotation is type(None):
        return value is None
    if annotation is float:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    return True  # Any, and types JSON cannot hold


def misfits(value: dict, annotation: Any) -> list[str]:
    """The keys of ``value`` that the TypedDict ``annotation`` requires and it lacks, then those it
    holds with a value of the wrong type; [] when it fits."""
    declared = typing.get_type_hints(annotation, include_extras=True)
    missing = sorted(annotation.__required_keys__ - value.keys())
    return missing + [k for k, t in declared.items() if k in value and not fits(value[k], t)]


def first_misfit(value: dict, annotation: Any) -> tuple[str, Any, Any] | None:
    """The deepest place where ``value`` does not fit the TypedDict ``annotation``: its path
    (``ood[0].best_point``), the value there (:data:`MISSING` for a missing key) and the declared
    type, or None."""
    declared = typing.get_type_hints(annotation, include_extras=True)
    for key in misfits(value, annotation):
        if key not in value:
            return key, MISSING, declared[key]
        inner, expected = value[key], _unwrap(declared[key])
        deeper = _descend(inner, expected)
        return (f"{key}{deeper[0]}", deeper[1], deeper[2]) if deeper else (key, inner, declared[key])
    return None


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) in (typing.Required, typing.NotRequired):
        annotation = typing.get_args(annotation)[0]
    return annotation


def _descend(value: Any, annotation: Any) -> tuple[str, Any, Any] | None:
    """Where inside a list or TypedDict ``value`` the misfit lies (a path suffix), or None."""
    if typing.is_typeddict(annotation) and isinstance(value, dict):
        found = first_misfit(value, annotation)
        return (f".{found[0]}", found[1], found[2]) if found else None
    base = typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    if typing.get_origin(base) is dict and isinstance(value, dict) and typing.get_args(base):
        inner = typing.get_args(base)[1]
        for key, item in value.items():
            if not fits(item, inner):
                deeper = _descend(item, inner)
                return (f".{key}{deeper[0]}", deeper[1], deeper[2]) if deeper else (f".{key}", item, inner)
    if typing.get_origin(base) is list and isinstance(value, list) and typing.get_args(base):
        inner = typing.get_args(base)[0]
        for index, item in enumerate(value):
            if not fits(item, inner):
                deeper = _descend(item, inner)
                return (f"[{index}]{deeper[0]}", deeper[1], deeper[2]) if deeper else (f"[{index}]", item, inner)
    return None


def type_name(annotation: Any) -> str:
    """How a message names a declared JSON type: ``a list of text``, ``an object``, ``an integer or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated and PAIR in args[1:]:
        return "a pair [lo, hi] of numbers"
    if origin in (typing.Required, typing.NotRequired, Annotated):
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0]) if args else 'values'}"
    if origin is dict or annotation is dict or typing.is_typeddict(annotation):
        return "an object"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def misfit_message(value: dict, annotation: Any, where: str) -> str | None:
    """``"WHERE: PATH is VALUE, not TYPE"`` for the first place ``value`` does not fit the TypedDict
    ``annotation`` (:func:`first_misfit`), or None when it fits."""
    found = first_misfit(value, annotation)
    if found is None:
        return None
    path, wrong, declared = found
    return f"{where}: {path} is {MISSING if wrong is MISSING else short_repr(wrong)}, not {type_name(declared)}"


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["DEFINED", "MISSING", "PAIR", "Interval", "first_misfit", "fits", "misfit_message", "misfits", "short_repr",
           "type_name"]
