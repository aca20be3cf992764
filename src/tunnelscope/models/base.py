"""The base class of zoo models: a module that knows its spec and its probe points."""

from __future__ import annotations

from torch import nn


class ZooModel(nn.Module):
    """An ``nn.Module`` built from a spec string, carrying what is needed to rebuild it.

    Subclasses set ``probe_sets``: for each named set (``"blocks"``, ``"conv"``) the module
    names whose forward outputs are probe points, in forward order (METRICS.md §1).
    """

    spec: str
    num_classes: int
    input_shape: tuple[int, ...]
    probe_sets: dict[str, list[str]]
    flat_input: bool = False  # True when the model flattens its input before the first layer

    def describe(self) -> dict:
        """What is recorded about the model in results and checkpoints."""
        return {
            "spec": self.spec,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "parameters": count_parameters(self),
            "probe_points": {k: list(v) for k, v in self.probe_sets.items()},
        }


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


def scaled(channels: int, multiplier: float) -> int:
    """A layer width times a width multiplier, at least 1."""
    return max(1, int(round(channels * multiplier)))
