"""``mlp-{depth}x{width}``: Linear→BN→ReLU hidden blocks and a linear classifier."""

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
