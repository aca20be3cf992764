"""One split of a dataset (train or test) and how it is cut into batches.

Small datasets live in memory as tensors (:class:`TensorSplit`) and are batched by index
without worker processes; image folders, and torch Datasets too large for memory, stream
through a :class:`torch.utils.data.DataLoader` (:class:`FolderSplit`). Both yield normalised
float batches ``(x, y)`` on the requested device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..errors import DataNotFoundError, TunnelscopeError

Batch = tuple[Tensor, Tensor]


class Split(Protocol):
    """What every split offers: its size, its labels, and batches of normalised inputs."""

    def __len__(self) -> int: ...

    @property
    def labels(self) -> Tensor: ...

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Batch]: ...

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int: ...

    def subset(self, indices: Tensor) -> Split: ...


def _count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def normalise(x: Tensor, scale: float, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(float(x) * scale - mean) / std`` with per-channel ``mean`` and ``std`` (channels: dim 1)."""
    x = x.float() * scale
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - torch.tensor(mean, device=x.device).view(shape)) / torch.tensor(std, device=x.device).view(shape)


class TensorSplit:
    """A split held in memory.

    ``x`` is stored compactly (uint8 images scaled by ``scale`` = 1/255, or float signals
    with ``scale`` = 1); each batch is converted to float, optionally augmented (training
    images only), normalised with the per-channel ``mean`` and ``std`` and moved to the
    device.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        scale: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x = x
        self.y = y.long()
        self.scale = scale
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> Tensor:
        return self.y

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _count_batches(len(self), batch_size, drop_last)

    def subset(self, indices: Tensor) -> TensorSplit:
        """The same split restricted to ``indices`` (labels unchanged)."""
        return TensorSplit(
            self.x[indices], self.y[indices], scale=self.scale, mean=self.mean,
            std=self.std, augment=self.augment,
        )

    def _prepare(self, x: Tensor, device: torch.device) -> Tensor:
        x = x.to(device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x)
        return normalise(x, self.scale, self.mean, self.std)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Batch]:
        """Yield normalised ``(x, y)`` batches; ``start_batch`` skips the first batches
        of the (same) order, which is how training resumes in the middle of an epoch."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        device = torch.device(device)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for b in range(start_batch, self.num_batches(batch_size, drop_last)):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            yield self._prepare(xb, device), yb.to(device, non_blocking=True)


class FolderSplit:
    """A split streamed by a DataLoader, never held in memory: image folders (worker processes)
    and large torch Datasets given as objects.

    ``dataset`` returns ``(x, label)`` items. Without ``prepare`` the items' ``x`` must already
    be normalised float tensors; with it, each collated batch ``x`` goes through ``prepare``
    (conversion and normalisation). A loader error becomes one line of class ``error``.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, labels: Tensor, num_workers: int, *,
                 prepare: Callable[[Tensor], Tensor] | None = None,
                 error: type[TunnelscopeError] = DataNotFoundError) -> None:
        self.dataset = dataset
        self._labels = labels.long()
        self.num_workers = num_workers
        self.prepare = prepare
        self.error = error

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> Tensor:
        return self._labels

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _count_batches(len(self), batch_size, drop_last)

    def subset(self, indices: Tensor) -> FolderSplit:
        """The same split restricted to ``indices``."""
        return FolderSplit(torch.utils.data.Subset(self.dataset, indices.tolist()), self._labels[indices],
                           self.num_workers, prepare=self.prepare, error=self.error)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> Iterator[Batch]:
        """Yield normalised ``(x, y)`` batches read by worker processes."""
        device = torch.device(device)
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        order = order[start_batch * batch_size :]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, order.tolist()),
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        batches = iter(loader)
        while True:
            try:
                xb, yb = next(batches)
            except StopIteration:
                return
            except Exception as exc:  # a worker's error arrives wrapped in its traceback text: keep its last line
                lines = [line for line in str(exc).splitlines() if line.strip()]
                raise self.error(lines[-1].split(": ", 1)[-1] if lines else type(exc).__name__) from None
            if self.prepare is not None:
                xb = self.prepare(xb)
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def sample_split(split: Split, limit: int | None, seed: int) -> tuple[Split, int]:
    """``split`` itself, or a seeded random subset of ``limit`` samples in their original order; and its size."""
    if limit is None or len(split) <= limit:
        return split, len(split)
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return split.subset(idx), limit
