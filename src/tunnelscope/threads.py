"""Torch's intra-op thread count, set for one call and restored when it ends; and how many CPUs
this process may use.

``torch.set_num_threads`` is process-wide: a library call that sets it and returns leaves the
caller's session (a notebook, a test suite, another model) on another thread count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import ConfigError


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or ``taskset``'s limit),
    not the host's count, which is what torch's DataLoader checks its worker count against."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads (None: leave the count alone), then put
    back the count that was set before, however the block ends."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["torch_threads"]
