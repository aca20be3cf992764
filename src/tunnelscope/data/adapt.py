"""Adapting an OOD dataset's inputs to a backbone: resize and channel conversion by spec."""

from __future__ import annotations

from ..errors import ShapeError
from ..specs import parse_spec
from .common import Dataset
from .registry import load


def adapted_spec(spec: str, input_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> tuple[str, list[str]]:
    """The spec with ``size``/``channels`` modifiers that make ``data_shape`` equal
    ``input_shape``, and a list saying what was changed. Raises :class:`ShapeError` when
    no modifier can do it (1-D signals against an image model, non-square targets)."""
    if tuple(data_shape) == tuple(input_shape):
        return spec, []
    if len(data_shape) != 3 or len(input_shape) != 3:
        raise ShapeError(f"{spec!r} has inputs of shape {tuple(data_shape)} and the model takes {tuple(input_shape)}; "
                         "only images can be adapted (resize, channels)")
    channels, height, width = input_shape
    if height != width:
        raise ShapeError(f"the model takes non-square {height}x{width} inputs; give the OOD spec a matching size")
    parsed = parse_spec(spec, "dataset spec")
    mods = dict(parsed.modifiers)
    changes = []
    if data_shape[1:] != (height, width):
        mods["size"] = str(height)
        changes.append(f"resized {data_shape[1]}x{data_shape[2]} -> {height}x{width}")
    if data_shape[0] != channels:
        mods["channels"] = str(channels)
        changes.append(f"channels {data_shape[0]} -> {channels}")
    text = parsed.name + ("[" + ",".join(f"{k}={v}" for k, v in mods.items()) + "]" if mods else "")
    return text, changes


def load_adapted(spec: str, input_shape: tuple[int, ...], root=None) -> tuple[Dataset, list[str]]:
    """Load ``spec`` and, if its inputs do not fit ``input_shape``, reload it adapted."""
    ds = load(spec, root=root)
    text, changes = adapted_spec(spec, input_shape, ds.input_shape)
    return (load(text, root=root) if changes else ds), changes
