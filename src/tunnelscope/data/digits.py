"""scikit-learn's bundled 8 x 8 digits, read without importing scikit-learn.

Importing scikit-learn costs about a second of start-up, which an analysis with the digits as
an OOD set would otherwise pay on every run (and every process under ``torchrun``). The table
is read from scikit-learn's own data file; the split is scikit-learn's stratified 80/20
``train_test_split`` (seed 0), computed once with scikit-learn and kept in the user cache,
keyed by the scikit-learn version and the data file's size and modification time. Without the
file where this version keeps it, ``load_digits`` reads the data.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

from .common import cached_arrays

DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the scikit-learn package: 64 pixels (0-16), label
TEST_SIZE = 0.2
SPLIT_SEED = 0
SPLIT_VERSION = 1  # bump when the cached split's layout changes


def digits_file() -> Path | None:
    """scikit-learn's digits data file, found without importing scikit-learn; None when absent."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0], *DIGITS_FILE) if locations else None
    return path if path is not None and path.is_file() else None


def digits_table() -> np.ndarray:
    """The digits as a ``(1797, 65)`` integer table: 64 pixel values (0-16), then the label."""
    path = digits_file()
    if path is not None:
        return np.loadtxt(path, delimiter=",", dtype=np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.concatenate([bunch.data.astype(np.int64), bunch.target[:, None]], axis=1)


def sklearn_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows of ``train_test_split(test_size=0.2, random_state=0, stratify=labels)``."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train, test = train_test_split(rows, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels)
    return np.asarray(train), np.asarray(test)


def digits_split(labels: np.ndarray, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sklearn_split` of the digits' ``labels``, from ``cache_dir`` when it was computed
    for this scikit-learn version and data file (and the same labels), else computed and kept."""
    path = digits_file()
    stamp = f"{path.stat().st_size}|{path.stat().st_mtime_ns}" if path is not None else "load_digits"
    labels_sum = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()
    key = (f"{SPLIT_VERSION}|{importlib.metadata.version('scikit-learn')}|{stamp}|{TEST_SIZE}|{SPLIT_SEED}|"
           f"{labels_sum}")
    split = cached_arrays(cache_dir / "digits-split", key, lambda: dict(zip(("train", "test"), sklearn_split(labels))))
    return split["train"], split["test"]


__all__ = ["digits_file", "digits_split", "digits_table", "sklearn_split"]
