"""Datasets by spec string: ``tunnelscope.data.load("fashion-mnist[classes=0-4]")``; or from
Python objects: ``tunnelscope.data.as_dataset((X, y), name="mine")`` (:mod:`.objects`)."""

from __future__ import annotations

from typing import Any

from .common import Dataset
from .registry import check_spec, list_datasets, load, valid_names
from .split import FolderSplit, Split, TensorSplit, sample_split

# read from .objects on first use, which plain loading does not need (precomputed features, which stand in
# for a model and its capture, are tunnelscope.capture.precomputed: data imports neither models nor capture)
_OBJECTS = ("as_dataset", "resolve_data", "split_indices")


def __getattr__(name: str) -> Any:
    if name in _OBJECTS:
        from . import objects

        return getattr(objects, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Dataset", "FolderSplit", "check_spec", "Split", "TensorSplit", "as_dataset", "list_datasets", "load",
           "resolve_data", "sample_split", "split_indices", "valid_names"]
