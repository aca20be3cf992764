"""MLPs: ``mlp-{depth}x{width}`` (Linear→BN→ReLU hidden blocks and a linear classifier) and
``linear-mlp-{depth}x{width}`` (Linear layers only, Badger 2022's linear networks)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import ZooModel


class MLP(ZooModel):
    """An MLP with ``depth`` Linear layers in all (``depth - 1`` hidden blocks + classifier).

    Probe sets: ``blocks`` = each hidden block's output after ReLU; ``conv`` = each hidden
    Linear's output before BatchNorm. ``flat_input``: the first block reads the flattened input,
    so layer 0 (the input point) is the flattened input too.
    """

    flat_input = True

    def __init__(self, spec: str, depth: int, width: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        fan_in = math.prod(input_shape)
        blocks = []
        for i in range(depth - 1):
            blocks.append(nn.Sequential(nn.Linear(fan_in if i == 0 else width, width),
                                        nn.BatchNorm1d(width), nn.ReLU()))
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(width, num_classes)
        self.probe_sets = {
            "blocks": [f"blocks.{i}" for i in range(depth - 1)],
            "conv": [f"blocks.{i}.0" for i in range(depth - 1)],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(x.flatten(1)))


class LinearMLP(ZooModel):
    """An MLP without nonlinearities or normalisation: ``depth`` Linear layers (with biases),
    ``depth - 1`` of width ``width`` and the classifier, so the whole network is one affine map.

    Weights are initialised N(0, 1/fan_in) and biases 0, which keeps the signal's scale through
    any depth (PyTorch's default would shrink its variance threefold per layer).

    Probe sets: ``blocks`` = every Linear layer's output, the classifier's (the logits)
    included (depth points); ``conv`` = the hidden Linear layers' outputs (depth - 1 points).
    ``flat_input`` as for :class:`MLP`.
    """

    flat_input = True

    def __init__(self, spec: str, depth: int, width: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        sizes = [math.prod(input_shape)] + [width] * (depth - 1) + [num_classes]
        layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        for layer in layers:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
            nn.init.zeros_(layer.bias)
        self.layers = nn.Sequential(*layers)
        self.probe_sets = {
            "blocks": [f"layers.{i}" for i in range(depth)],
            "conv": [f"layers.{i}" for i in range(depth - 1)],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
