"""``cifar-resnet-{D}[x{K}]``: He et al.'s CIFAR ResNets, the family Nguyen et al. (2021) vary.

Depth ``D = 6n + 2``: a 3x3 stem conv, three stages of ``n`` basic blocks (two 3x3 convs each)
with ``16·K``, ``32·K``, ``64·K`` channels, stride 2 at the start of stages 2 and 3, BatchNorm
after every conv, global average pool and one linear classifier (6n convs + stem + FC = D
layers). The width multiplier ``K`` scales every conv, the stem included. Shortcuts are He et
al.'s option A: identity, with stride-2 subsampling and zero-padded extra channels where the
shape changes, so they have no parameters (cifar-resnet-20 → 0.27 M, cifar-resnet-110 → 1.7 M
parameters for 10 classes, as in He et al.).

Probe sets: ``blocks`` = the stem's output and each residual block's output (3n + 1 points);
``conv`` = the stem conv and both convs of every block, before BatchNorm (6n + 1 points).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ZooModel

BASE_WIDTHS = (16, 32, 64)


def blocks_per_stage(depth: int) -> int | None:
    """``n`` for a depth ``6n + 2`` with ``n >= 1``, else None."""
    return (depth - 2) // 6 if depth >= 8 and (depth - 2) % 6 == 0 else None


class PaddedIdentity(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class CifarResNet(ZooModel):
    """A CIFAR ResNet of depth ``6n + 2`` and width multiplier ``k`` (see the module docstring)."""

    stage1: nn.Sequential  # the three stages, set by name in __init__
    stage2: nn.Sequential
    stage3: nn.Sequential

    def __init__(self, spec: str, depth: int, num_classes: int, input_shape: tuple[int, ...],
                 width: int = 1) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock  # here: importing torchvision.models costs seconds
        per_stage = blocks_per_stage(depth)
        if per_stage is None:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        widths = [c * width for c in BASE_WIDTHS]
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, conv = ["stem"], ["stem.0"]
        channels = widths[0]
        for stage, planes in enumerate(widths, start=1):
            units = []
            for b in range(per_stage):
                stride = 2 if (b == 0 and stage > 1) else 1
                shortcut = PaddedIdentity(channels, planes, stride) if (stride, channels) != (1, planes) else None
                units.append(BasicBlock(channels, planes, stride=stride, downsample=shortcut))
                channels = planes
                blocks.append(f"stage{stage}.{b}")
                conv += [f"stage{stage}.{b}.conv1", f"stage{stage}.{b}.conv2"]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.probe_sets = {"blocks": blocks, "conv": conv}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in (self.stage1, self.stage2, self.stage3):
            x = stage(x)
        return self.fc(self.pool(x).flatten(1))
