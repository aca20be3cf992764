"""VGG networks with BatchNorm: ``vgg{11,13,16,19}`` and Harun et al.'s ``vggm{11,17}``.

- ``vgg{N}[-wM]``: the classic configurations, every stage ending in a 2x2 max-pool
  (``ceil_mode`` so that 28 px inputs reach 1x1 like 32 px ones), flatten, one linear
  classifier. Width multiplier ``M`` scales every conv.
- ``vggm{11,17}[-nopool][-wM]``: VGG-13 / VGG-19 convolutions (10 / 16 conv layers + one FC
  = 11 / 17 layers), adaptive average pool to 1x1 and one FC; ``-nopool`` drops the
  max-pools of the first two stages.

Probe sets: ``blocks`` = each Conv→BN→ReLU unit's output; ``conv`` = each conv's output
before BatchNorm (vggm11 → 10, vggm17 → 16 points).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MaxPool2d, ZooModel, scaled

CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}
VGGM_BASE = {11: 13, 17: 19}


class VGG(ZooModel):
    """A VGG body of Conv→BN→ReLU units and max-pools, then a pooled or flattened classifier."""

    def __init__(self, spec: str, config: list[int | str], num_classes: int, input_shape: tuple[int, ...],
                 width: float = 1.0, adaptive_pool: bool = False, skip_pools: int = 0) -> None:
        super().__init__()
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        layers: list[nn.Module] = []
        units: list[int] = []
        channels, pools_seen = input_shape[0], 0
        for item in config:
            if item == "M":
                if pools_seen >= skip_pools:
                    layers.append(MaxPool2d(2, ceil_mode=True))
                pools_seen += 1
                continue
            out = scaled(int(item), width)
            units.append(len(layers))
            layers.append(nn.Sequential(nn.Conv2d(channels, out, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(out), nn.ReLU(inplace=True)))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if adaptive_pool else nn.Identity()
        with torch.no_grad():
            flat = self.pool(self.features.eval()(torch.zeros(1, *input_shape))).numel()
        self.features.train()
        self.classifier = nn.Linear(flat, num_classes)
        self.probe_sets = {
            "blocks": [f"features.{i}" for i in units],
            "conv": [f"features.{i}.0" for i in units],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
