"""``convnet-{L}x{H}``: Galanti et al.'s CONV-L-H.

Two stem convs (3x3, stride 2, width H) followed by L 3x3 convs of width H (stride 1),
each Conv→BN→ReLU, then flatten and one linear classifier. The stem's stride-2 convs
bring 28/32 px inputs to 7/8 px, so the flattened features stay small.

Probe sets: ``blocks`` = each unit's output (2 + L points); ``conv`` = each conv's output
before BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ZooModel


class ConvNet(ZooModel):
    """CONV-L-H: 2 stride-2 stem units, L width-H units, a linear classifier."""

    def __init__(self, spec: str, depth: int, width: int, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        units = []
        channels = input_shape[0]
        for i in range(depth + 2):
            stride = 2 if i < 2 else 1
            units.append(nn.Sequential(nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            channels = width
        self.features = nn.Sequential(*units)
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, *input_shape)).numel()
        self.features.train()
        self.classifier = nn.Linear(flat, num_classes)
        self.probe_sets = {
            "blocks": [f"features.{i}" for i in range(depth + 2)],
            "conv": [f"features.{i}.0" for i in range(depth + 2)],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
