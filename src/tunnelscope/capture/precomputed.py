"""Features given precomputed, analysed as if they had been captured.

:func:`feature_dataset` turns ``{point: (N, ...) features}`` and labels into a
:class:`~tunnelscope.data.Dataset` whose inputs are every point's features side by side, and a
:class:`FeatureModel` whose capture (:class:`FeatureCapture`) cuts them back into points, so
that the engine computes the same statistics and probes on them as on features it captured
itself (``tunnelscope.analyze_features``). It lives with the capture, which it stands in for;
the data package reads datasets and knows nothing of models or capture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..data.common import Dataset
from ..data.objects import (  # the object readers' checks and split, shared with as_dataset
    DEFAULT_TEST_FRACTION,
    SPLITS,
    _as_inputs,
    _as_labels,
    _check_name,
    _check_pair,
    _in_memory,
    _is_split_dict,
    _make,
    _split_record,
    split_indices,
)
from ..errors import ConfigError, ShapeError
from ..features import Features
from .hooks import DEFAULT_MAX_DIM, INPUT_POINT, Capture


class FeatureCapture(Capture):
    """A :class:`Capture` that reads the points of a :class:`FeatureModel` from its input, the
    features of every point side by side, instead of from hooks: each point's columns are
    reshaped to the shape they were given in and reduced exactly as captured outputs are
    (2-D features as they are, maps by ``reduce``, then ``max_dim``). ``points`` is ignored:
    the points are the features given; ``include_input`` reads the ``input`` entry, if given,
    as layer 0."""

    def __init__(self, model: nn.Module, points: str | Sequence[str] = "blocks", reduce: str = "pool2",
                 max_dim: int | None = DEFAULT_MAX_DIM, seed: int = 0, example: Tensor | None = None,
                 include_input: bool = False, model_output: bool = False) -> None:
        if not isinstance(model, FeatureModel):
            raise ConfigError(f"FeatureCapture reads a FeatureModel, not {type(model).__name__}")
        self.features_model = model
        super().__init__(model, "blocks", reduce=reduce, max_dim=max_dim, seed=seed, example=None,
                         include_input=include_input and INPUT_POINT in model.shapes, model_output=model_output)

    def __call__(self, x: Tensor) -> Features:
        """Every point's features in the batch ``x`` (one row per sample, all points' columns)."""
        out = Features()
        model = self.features_model
        for name in self.names:
            lo, hi = model.columns[name]
            out[name] = self._reduce(name, x[:, lo:hi].reshape(len(x), *model.shapes[name]))
        out.output = None  # no model output: the model's own accuracy is not measured
        return out


class FeatureModel(nn.Module):
    """Stands in for the model whose features were given precomputed.

    Its input is one row per sample holding every point's features flattened side by side
    (``shapes``: each point's per-sample shape, in layer order; an ``input`` entry is layer 0);
    the engine reads it through :class:`FeatureCapture` (``capture_class``). It computes
    nothing itself and has no output.
    """

    capture_class = FeatureCapture

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], name: str = "precomputed") -> None:
        super().__init__()
        self.spec = name
        self.shapes = {p: tuple(s) for p, s in shapes.items()}
        self.columns: dict[str, tuple[int, int]] = {}
        lo = 0
        for point, shape in self.shapes.items():
            self.columns[point] = (lo, lo + math.prod(shape))
            lo += math.prod(shape)
        self.input_shape = (lo,)
        self.probe_sets = {"blocks": [p for p in self.shapes if p != INPUT_POINT]}

    def forward(self, x: Tensor) -> Tensor:
        raise ConfigError("a FeatureModel holds precomputed features and cannot be run; analyse it with "
                          "tunnelscope.analyze_features")

    def record(self) -> dict:
        """What ``config["model"]`` records about the features."""
        return {"precomputed_features": True, "feature_shapes": {p: list(s) for p, s in self.shapes.items()}}


def _feature_split(features: object, labels: object, what: str) -> tuple[dict[str, Tensor], Tensor]:
    """``({point: (N, ...) tensor}, labels)`` of one split, checked."""
    if not isinstance(features, Mapping) or not features:
        raise ConfigError(f"{what} features must be a non-empty dict {{point name: (N, D) array or tensor}}, "
                          f"got {type(features).__name__}")
    y = _as_labels(labels, what)
    out: dict[str, Tensor] = {}
    for point, value in features.items():
        if not isinstance(point, str) or not point:
            raise ConfigError(f"{what}: point names must be non-empty strings, got {point!r}")
        x = _as_inputs(value, f"{what} features at {point!r}")
        _check_pair(x, y, f"{what} at {point!r}")
        out[point] = x
    return out, y


def feature_dataset(features: object, labels: object, *, name: str = "features", model_name: str = "precomputed",  # noqa: PLR0913 (a public facade: readable keywords)
                    test_fraction: float = DEFAULT_TEST_FRACTION, split_seed: int = 0,
                    num_classes: int | None = None, class_names: Sequence[str] | None = None,
                    like: FeatureModel | None = None) -> tuple[FeatureModel, Dataset]:
    """A :class:`FeatureModel` and the :class:`Dataset` of precomputed features.

    ``features`` is ``{point: (N, ...) array or tensor}`` with ``labels`` ``(N,)`` (split as
    :func:`as_dataset` splits one object), or ``{"train": {point: ...}, "test": {point: ...}}``
    with ``labels`` ``{"train": y, "test": y}``. Points are layers in the order given; an
    ``input`` entry is layer 0. ``like`` (an OOD set's ID model) requires the same points and
    shapes and is returned in place of a new model.
    """
    name = _check_name(name)
    if isinstance(features, Mapping) and _is_split_dict(features) and all(isinstance(v, Mapping)
                                                                          for v in features.values()):
        if not _is_split_dict(labels):
            raise ConfigError(f"{name}: features are given per split, so labels must be {{'train': y, 'test': y}}")
        assert isinstance(labels, Mapping)
        parts = {s: _feature_split(features[s], labels[s], f"{name} {s} split") for s in SPLITS}
        record: dict = {"split": {"method": "train and test given separately"}}
    else:
        feats, y = _feature_split(features, labels, name)
        train, test = split_indices(y, test_fraction, split_seed)
        parts = {"train": ({p: f[train] for p, f in feats.items()}, y[train]),
                 "test": ({p: f[test] for p, f in feats.items()}, y[test])}
        record = {"split": _split_record(len(test), len(y), test_fraction, split_seed)}
    shapes = {s: {p: tuple(f.shape[1:]) for p, f in parts[s][0].items()} for s in SPLITS}
    if shapes["train"] != shapes["test"]:
        raise ShapeError(f"{name}: the train and test features differ in points or shapes: "
                         f"{_layout(shapes['train'])} vs {_layout(shapes['test'])}")
    if like is not None and shapes["train"] != like.shapes:
        raise ShapeError(f"{name}: features at {_layout(shapes['train'])} but the ID features are at "
                         f"{_layout(like.shapes)}; give every dataset the same points and shapes")
    if not [p for p in shapes["train"] if p != INPUT_POINT]:
        raise ConfigError(f"{name}: give features at one point at least besides {INPUT_POINT!r}")
    model = like if like is not None else FeatureModel(shapes["train"], model_name)
    dtype = torch.float16 if all(f.dtype == torch.float16 for f in parts["train"][0].values()) else torch.float32
    splits = {s: _in_memory(torch.cat([f.reshape(len(f), -1).to(dtype) for f in parts[s][0].values()], dim=1),
                            parts[s][1]) for s in SPLITS}
    points = len(shapes["train"])
    record.update(kind="features", object=f"precomputed features at {points} point(s)",
                  source=f"precomputed features ({points} point(s): {', '.join(shapes['train'])})")
    return model, _make(splits, name, "none", num_classes, class_names, None, record)


def _layout(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "{" + ", ".join(f"{p}: {tuple(s)}" for p, s in shapes.items()) + "}"


__all__ = ["FeatureCapture", "FeatureModel", "feature_dataset"]
