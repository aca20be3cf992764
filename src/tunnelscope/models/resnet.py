"""ResNet-18/34 built from torchvision's BasicBlock, with a CIFAR or ImageNet stem and a
width multiplier.

- ``resnet{18,34}``: 3x3 stride-1 stem conv, no max-pool (for 28-32 px inputs).
- ``resnet{18,34}-imagenet``: 7x7 stride-2 stem conv and a 3x3 stride-2 max-pool.
- ``-wM``: stage widths 64·M, 128·M, 256·M, 512·M.

Probe sets: ``blocks`` = the stem's output and each residual block's output; ``conv`` =
the stem conv and both 3x3 convs of every block, 1x1 shortcut convs excluded
(resnet18 → 17, resnet34 → 33 points).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MaxPool2d, ZooModel, scaled

STAGES = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class ResNet(ZooModel):
    """A BasicBlock ResNet: stem, four stages, global average pool, linear classifier."""

    layer1: nn.Sequential  # the four stages, set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, spec: str, depth: int, num_classes: int, input_shape: tuple[int, ...],
                 width: float = 1.0, imagenet_stem: bool = False) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock  # here: importing torchvision.models costs seconds
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        if imagenet_stem:
            stem = [nn.Conv2d(input_shape[0], widths[0], 7, stride=2, padding=3, bias=False),
                    nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True), MaxPool2d(3, stride=2, padding=1)]
        else:
            stem = [nn.Conv2d(input_shape[0], widths[0], 3, stride=1, padding=1, bias=False),
                    nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        blocks, conv = ["stem"], ["stem.0"]
        inplanes = widths[0]
        for stage, (planes, count) in enumerate(zip(widths, STAGES[depth]), start=1):
            layer = []
            for b in range(count):
                stride = 2 if (b == 0 and stage > 1) else 1
                downsample = None
                if stride != 1 or inplanes != planes:
                    downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                               nn.BatchNorm2d(planes))
                layer.append(BasicBlock(inplanes, planes, stride=stride, downsample=downsample))
                inplanes = planes
                blocks.append(f"layer{stage}.{b}")
                conv += [f"layer{stage}.{b}.conv1", f"layer{stage}.{b}.conv2"]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.probe_sets = {"blocks": blocks, "conv": conv}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.fc(self.pool(x).flatten(1))
