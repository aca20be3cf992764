"""``tv:NAME``: any torchvision classification model, randomly initialised offline.

Weights come from a local file only (``build(..., weights=PATH)``): a state dict as saved
by torchvision or ``torch.save(model.state_dict())``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError
from .base import ZooModel


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _blocks(net: nn.Module) -> list[str]:
    """Known block-level probe points of torchvision families; empty if unknown."""
    import torchvision.models as tvm

    names = [n for n, _ in net.named_modules()]
    if isinstance(net, tvm.ResNet):
        return [n for n in names if n.count(".") == 1 and n.startswith("layer")]
    if isinstance(net, tvm.VGG):
        relus = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
        return relus
    if isinstance(net, tvm.VisionTransformer):
        return [n for n in names if n.startswith("encoder.layers.") and n.count(".") == 2]
    if isinstance(net, tvm.ConvNeXt):
        return [n for n in names if n.startswith("features.") and n.count(".") == 2]
    return []


def _conv(net: nn.Module, classifier: str) -> list[str]:
    """Every Conv2d/Linear output except 1x1 shortcut convs and the final classifier."""
    points = []
    for name, module in net.named_modules():
        if name == classifier:
            continue
        if isinstance(module, nn.Conv2d):
            if "downsample" in name or "shortcut" in name:
                continue
            points.append(name)
        elif isinstance(module, nn.Linear) and not name.startswith("encoder.layers"):
            points.append(name)
    return points


class TorchvisionModel(ZooModel):
    """A torchvision model wrapped so that it carries its spec and probe sets."""

    def __init__(self, spec: str, name: str, num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        import torchvision

        if name not in torchvision_names():
            raise SpecError(
                f"unknown torchvision model {name!r}; e.g. {', '.join(torchvision_names()[:8])}, ... "
                "(see `tunnelscope models --torchvision`)"
            )
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        kwargs = {}
        if name.startswith("vit_") and len(input_shape) == 3:
            kwargs["image_size"] = input_shape[-1]
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        linears = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
        classifier = linears[-1] if linears else ""
        self.probe_sets = {"conv": [f"net.{n}" for n in _conv(self.net, classifier)]}
        blocks = _blocks(self.net)
        if blocks:
            self.probe_sets["blocks"] = [f"net.{n}" for n in blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
