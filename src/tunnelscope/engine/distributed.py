"""Data-parallel analysis over the processes of a ``torch.distributed`` group (``torchrun``).

Every split is sharded **by whole batches**: with batches of ``B`` samples numbered in the
split's order (or in one seeded shuffle shared by all processes), process ``r`` of ``W``
reads batches ``r, r + W, r + 2W, …``. The minibatches are therefore exactly those of a
one-process run, so batch-dependent estimators (minibatch CKA's HSIC terms) sum the same
terms, and every running sum (moments, counts, HSIC) equals the one-process sum up to the
order of floating-point additions. After a pass, accumulators are summed over processes
(:meth:`World.reduce`) and feature caches are gathered back into the split's order
(:meth:`World.gather`), so what follows a pass (eigenvalues, probes, bootstrap) sees the
same numbers on every process and the same numbers as one process would.

Without an initialised process group (or with one process) :func:`current_world` is the
single-process world and nothing here communicates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..capture.cache import FeatureCache
from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place in the analysis: ``rank`` of ``size`` processes of ``group``."""

    rank: int = 0
    size: int = 1
    group: Any = None  # a ProcessGroup; None: the default group

    @property
    def parallel(self) -> bool:
        """True with more than one process."""
        return self.size > 1

    @property
    def leader(self) -> bool:
        """True on the process that writes results (rank 0)."""
        return self.rank == 0

    def batch_positions(self, n: int, batch_size: int, rank: int | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
        """Positions in the split (or in its shuffle by ``generator``) of the samples that
        process ``rank`` (default: this one) reads, batch after batch."""
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        mine = [order[b * batch_size:(b + 1) * batch_size]
                for b in range(self.rank if rank is None else rank, -(-n // batch_size), self.size)]
        return torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)

    def local(self, split, batch_size: int, generator: torch.Generator | None = None):
        """This process's shard of ``split`` (whole batches, in order), or ``split`` itself alone."""
        if not self.parallel:
            return split
        return split.subset(self.batch_positions(len(split), batch_size, generator=generator))

    def check_batches(self, n: int, batch_size: int, what: str) -> None:
        """Refuse a split with fewer batches than processes (a process would see no sample)."""
        if self.parallel and -(-n // batch_size) < self.size:
            raise ConfigError(f"{what} has {n} samples, {-(-n // batch_size)} batches of {batch_size}, for "
                              f"{self.size} processes; each process needs a batch: lower --batch-size or run "
                              "fewer processes")

    def reduce(self, accumulators: Sequence) -> None:
        """Sum every accumulator's state over the processes, in place (in a fixed order)."""
        if not self.parallel:
            return
        with torch.inference_mode():  # states made lazily inside the passes are inference tensors
            for acc in accumulators:
                acc.all_reduce(self.group)

    def gather(self, cache: FeatureCache, batch_size: int) -> None:
        """Fill ``cache`` (which holds this process's shard, in batch order) with every
        process's rows, in the split's order."""
        if not self.parallel:
            return
        n = cache.capacity
        positions = [self.batch_positions(n, batch_size, rank=r).numpy() for r in range(self.size)]
        local_labels = torch.from_numpy(cache.labels[:cache.size].copy())
        for array in cache.arrays.values():  # every process read a batch, so every cache is allocated
            local = torch.from_numpy(np.asarray(array[:cache.size], dtype=np.float32))
            self._gather_rows(local, positions, array)
        self._gather_rows(local_labels, positions, cache.labels)
        cache.size = n

    def _gather_rows(self, local: Tensor, positions: list[np.ndarray], into: np.ndarray) -> None:
        """Every process's ``local`` rows written into ``into`` at that process's ``positions``."""
        import torch.distributed as dist

        device = _collective_device()
        padded = local.new_zeros((max(len(p) for p in positions), *local.shape[1:]), device=device)
        padded[:len(local)] = local.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        for pos, part in zip(positions, parts):
            into[pos] = np.asarray(part[:len(pos)].cpu().numpy(), dtype=into.dtype)  # no copy when the dtypes agree

    def assign(self, costs: Sequence[float]) -> list[int]:
        """Indices of the jobs (with these ``costs``) this process runs: costliest first, each to
        the least loaded process (ties: the lowest rank); the same split on every process."""
        load = [0.0] * self.size
        mine = []
        for job in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            owner = min(range(self.size), key=lambda r: (load[r], r))
            load[owner] += costs[job]
            if owner == self.rank:
                mine.append(job)
        return sorted(mine)

    def share(self, costs: dict[str, float]) -> list[str]:
        """The named jobs (with these ``costs``) this process runs, in the given order: all of them
        alone; with several processes, a balanced share (:meth:`assign`)."""
        names = list(costs)
        return [names[i] for i in self.assign([float(costs[n]) for n in names])]

    def union(self, mapping: dict) -> dict:
        """Every process's ``mapping`` merged into one (their keys are disjoint), on every process."""
        return {k: v for part in self.collect(mapping) for k, v in part.items()}

    def collect(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if not self.parallel:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value, group=self.group)
        return out


def _collective_device() -> torch.device:
    """Where collectives' tensors live: the current GPU under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_alone: list[bool] = []  # set inside alone(): analyses run in this process by itself


def current_world() -> World:
    """The process group this analysis runs in: the initialised default group, else (or inside
    :func:`alone`) one process."""
    import torch.distributed as dist

    if not _alone and dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextmanager
def alone() -> Iterator[None]:
    """Analyses started inside run in this process by itself, whatever group it is in: no
    sharding and no collective (each process computes the whole analysis)."""
    _alone.append(True)
    try:
        yield
    finally:
        _alone.pop()


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (``WORLD_SIZE``; 1 outside it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def join_launched_group(device: str) -> World:
    """Under ``torchrun`` with several processes, join the default group (NCCL for CUDA, gloo
    otherwise) unless already joined; the world this process is in."""
    import torch.distributed as dist

    if launched_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        cuda = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return current_world()


@contextmanager
def launched_group(device: str) -> Iterator[World]:
    """:func:`join_launched_group` for the length of a command: a group joined here is left
    (destroyed) at the end, so that no process exits holding a live group, whose background
    threads can abort the exiting process (``terminate called without an active exception``)."""
    import torch.distributed as dist

    joined_here = launched_world_size() > 1 and dist.is_available() and not dist.is_initialized()
    world = join_launched_group(device)
    try:
        yield world
    finally:
        if joined_here and dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["World", "alone", "current_world", "join_launched_group", "launched_group", "launched_world_size"]
