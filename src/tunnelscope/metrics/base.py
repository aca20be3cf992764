"""The accumulator base: streaming statistics with declared sum states.

An accumulator declares its running sums with :meth:`Accumulator.add_state` (a tensor, a
number, a dict of tensors, or ``None`` for a tensor whose shape is known only at the first
batch). ``merge`` (shards in one process), ``all_reduce`` (processes of a
``torch.distributed`` group) and ``reset`` then work for every subclass without code of
its own: every declared state is a sum. Accumulators whose sums are taken around a shift
vector (:class:`~tunnelscope.metrics.moments.Moments`) override ``merge`` and
``all_reduce`` to re-express a shard around common shifts first (an exact identity).

All sums are float64, so merging shards gives the state of one pass over their
concatenation up to float64 rounding.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..errors import TunnelscopeError

State = Tensor | int | float | dict[str, Tensor] | None


def _add(mine: State, theirs: State) -> State:
    if theirs is None:
        return mine
    if mine is None:
        return copy.deepcopy(theirs)
    if isinstance(mine, dict):
        return {k: mine[k] + theirs[k] for k in mine}  # type: ignore[index]
    return mine + theirs  # type: ignore[operator]


class Accumulator:
    """Base of every streaming statistic: ``update`` per batch, ``compute`` at the end.

    Subclasses call :meth:`add_state` in ``__init__`` for each running sum and implement
    ``update(features, labels)`` and ``compute()``.
    """

    def __init__(self) -> None:
        self._defaults: dict[str, State] = {}

    def add_state(self, name: str, default: State) -> None:
        """Declare a running sum ``name`` starting at ``default`` (summed by merge and all_reduce)."""
        self._defaults[name] = copy.deepcopy(default)
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        """Every declared state back to its default."""
        for name, default in self._defaults.items():
            setattr(self, name, copy.deepcopy(default))

    def update(self, features: dict[str, Tensor], labels: Tensor) -> None:  # pragma: no cover - abstract
        """Add one batch: ``features[point]`` is ``(B, D)``, ``labels`` is ``(B,)``."""
        raise NotImplementedError

    def compute(self) -> Any:  # pragma: no cover - abstract
        """The statistic from the sums seen so far."""
        raise NotImplementedError

    def _check_mergeable(self, other: Accumulator) -> None:
        """Raise if ``other`` was set up differently (subclasses compare their settings)."""
        if type(other) is not type(self):
            raise ValueError(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def merge(self, other: Accumulator) -> Accumulator:
        """Add another shard's declared sums into this one and return self."""
        self._check_mergeable(other)
        for name in self._defaults:
            setattr(self, name, _add(getattr(self, name), getattr(other, name)))
        return self

    def all_reduce(self, group=None) -> None:
        """Sum every declared state over the processes of a ``torch.distributed`` group, in place."""
        import torch.distributed as dist

        tensors = [t for t in self._tensors() if isinstance(t, Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        for name in sorted(self._defaults):
            value = getattr(self, name)
            if value is None:
                raise TunnelscopeError(f"{type(self).__name__}.all_reduce before any update: "
                                       "every process needs at least one batch")
            if isinstance(value, dict):
                for key in sorted(value):
                    dist.all_reduce(value[key], group=group)
            elif isinstance(value, Tensor):
                dist.all_reduce(value, group=group)
            else:
                total = torch.tensor(float(value), dtype=torch.float64, device=device)
                dist.all_reduce(total, group=group)
                setattr(self, name, type(value)(total.item()))

    def _tensors(self) -> list:
        out: list = []
        for name in self._defaults:
            value = getattr(self, name)
            out.extend(value.values() if isinstance(value, dict) else [value])
        return out


class PointAccuracy(Accumulator):
    """Correct-prediction counts per point over a stream: the shared half of the read-outs.

    Subclasses implement ``update`` and add to ``self.correct[point]`` and ``self.seen``.
    """

    def __init__(self, points: list[str], device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.correct: dict[str, Tensor] = {}
        self.seen = 0
        self.add_state("correct", {k: torch.zeros((), dtype=torch.float64, device=device) for k in points})
        self.add_state("seen", 0)

    def compute(self) -> dict[str, float]:
        """Accuracy per point."""
        return {k: float(v) / self.seen for k, v in self.correct.items()}


class ModelAccuracy(Accumulator):
    """The model's own test accuracy, read from ``features.output`` (a capture that ran the whole
    forward pass). Batches without a ``(B, C)`` output are not counted; ``compute`` is NaN then."""

    def __init__(self) -> None:
        super().__init__()
        self.correct = 0
        self.seen = 0
        self.add_state("correct", 0)
        self.add_state("seen", 0)

    def update(self, features, labels: Tensor) -> None:
        out = getattr(features, "output", None)
        if isinstance(out, Tensor) and out.dim() == 2 and len(out) == len(labels):
            self.correct += int((out.argmax(1) == labels).sum())
            self.seen += len(labels)

    def compute(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")
