"""Datasets by spec string: ``tunnelscope.data.load("fashion-mnist[classes=0-4]")``."""

from .registry import Dataset, check_spec, list_datasets, load, valid_names
from .split import FolderSplit, Split, TensorSplit, sample_split

__all__ = ["Dataset", "FolderSplit", "check_spec", "Split", "TensorSplit", "list_datasets", "load", "sample_split",
           "valid_names"]
