"""A feature cache for one split: every probe point's features, kept for a second look
without running the model again (NCC on the training split; the linear probes).

It holds ``N x D_l`` per point, in memory up to a byte budget and in memory-mapped files
in a temporary folder beyond it (the only O(N·D) state in tunnelscope, by design).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CacheSpaceError
from ..interrupts import pid_alive

DEFAULT_BUDGET = 1 << 30  # 1 GiB


SPILL_PREFIX = "tunnelscope-cache-"


def remove_stale_spills(root: str | Path | None = None) -> list[Path]:
    """Delete spill folders (``tunnelscope-cache-PID-*``) whose process is gone (killed before
    it could clean up); returns what was removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SPILL_PREFIX}*"):
        pid = folder.name[len(SPILL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)) or not folder.is_dir() or folder.is_symlink():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class FeatureCache:
    """Rows of features per point, filled batch by batch, then read back in chunks."""

    def __init__(self, capacity: int, budget_bytes: int = DEFAULT_BUDGET, dtype: str = "float32",
                 spill_dir: str | Path | None = None) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError("cache dtype must be float16 or float32")
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self.dtype = np.dtype(dtype)
        self.spill_root = spill_dir
        self.arrays: dict[str, np.ndarray] = {}
        self.labels = np.zeros(capacity, dtype=np.int64)
        self.size = 0
        self.spilled_to: Path | None = None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def _allocate(self, features: dict[str, Tensor]) -> None:
        need = self.capacity * sum(x.shape[1] for x in features.values()) * self.dtype.itemsize
        if need > self.budget_bytes:
            remove_stale_spills(self.spill_root)
            self.spilled_to = Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=self.spill_root))
        for i, (name, x) in enumerate(features.items()):
            shape = (self.capacity, x.shape[1])
            if self.spilled_to is None:
                self.arrays[name] = np.empty(shape, dtype=self.dtype)
            else:
                self.arrays[name] = self._spill_array(self.spilled_to / f"{i}.npy", shape, need)

    def _spill_array(self, path: Path, shape: tuple[int, int], need: int) -> np.ndarray:
        """A memory-mapped array whose blocks are reserved on disk first: a full disk is an error
        here, not a SIGBUS when a page is first written."""
        array = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
        try:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.path.getsize(path))
        except OSError as exc:
            del array
            self.close()
            where = self.spill_root or tempfile.gettempdir()
            raise CacheSpaceError(f"the feature cache needs {need / 2**20:,.0f} MiB on disk in {where} but "
                                  f"{exc.strerror.lower() if exc.strerror else exc}; free space there, point "
                                  "TMPDIR at a larger disk, or lower --max-samples") from None
        return array

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:
        """Append one batch."""
        if not self.arrays:
            self._allocate(features)
        lo, hi = self.size, self.size + len(labels)
        if hi > self.capacity:
            raise ValueError(f"feature cache holds {self.capacity} rows; got {hi}")
        for name, x in features.items():
            self.arrays[name][lo:hi] = x.detach().to("cpu", torch.float32).numpy()
        self.labels[lo:hi] = labels.cpu().numpy()
        self.size = hi

    def batches(self, batch_size: int = 4096, device: str | torch.device = "cpu",
                points: list[str] | None = None) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Read the rows back in order, as float32 tensors on ``device`` (of ``points`` only, when given)."""
        arrays = self.arrays if points is None else {k: self.arrays[k] for k in points}
        for lo in range(0, self.size, batch_size):
            hi = min(lo + batch_size, self.size)
            feats = {k: torch.from_numpy(np.asarray(a[lo:hi], dtype=np.float32)).to(device)
                     for k, a in arrays.items()}
            yield feats, torch.from_numpy(self.labels[lo:hi]).to(device)

    def close(self) -> None:
        """Drop the arrays and delete spilled files."""
        self.arrays.clear()
        if self.spilled_to is not None:
            shutil.rmtree(self.spilled_to, ignore_errors=True)
            self.spilled_to = None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
