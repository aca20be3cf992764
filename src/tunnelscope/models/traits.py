"""Architecture traits of a model: the design variables Harun et al. (2024) explain transfer with.

:func:`spec_traits` reads what a zoo spec says (family, kind, depth, width);
:func:`measured_traits` measures what any ``nn.Module`` does to an input of a given shape (stem
kernel, spatial reduction, parameters). Definitions (also in docs/explain.md):

- ``family``: the zoo family (``mlp``, ``vggm``, ``vit``, ...); ``kind``: ``MLP``, ``CNN`` or ``ViT``.
- ``depth``: the depth the spec names (Linear layers for MLPs, the VGG/ResNet number, ViT blocks,
  CONV-L-H's L); ``width``: hidden units (MLP), channels of the first stage (CNN), embedding width (ViT).
- ``stem``: side of the first convolution's kernel in execution order (a ViT's patch embedding is one,
  so this is its patch size); missing for models without convolutions.
- ``spatial_reduction``: input side ÷ side of the smallest feature map a layer outputs before the
  global pool (adaptive pools and the head after a 1x1 pool do not count; a map's side is the
  smaller of its last two dimensions, so channels-last maps count too); 1 means no downsampling,
  missing for models without feature maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import count_parameters


def spec_traits(spec: str) -> dict[str, Any]:
    """``family``, ``kind``, ``depth`` and ``width`` named by a zoo spec (missing ones are None),
    as its family's record declares them (:class:`tunnelscope.models.registry.Family`)."""
    from .registry import family_of

    found = family_of(spec)
    if found is None:
        return {"family": None, "kind": None, "depth": None, "width": None}
    family, groups = found
    kind, depth, width = family.traits(groups)
    return {"family": family.name, "kind": kind, "depth": depth, "width": width}


@torch.no_grad()
def measured_traits(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``stem``, ``spatial_reduction`` and ``parameters`` of ``model`` on inputs of ``input_shape``
    (one forward pass of two zero inputs in eval mode; the model's mode is restored)."""
    convs: list[nn.Conv2d] = []
    sides: list[int] = []
    pooled = [False]  # a global pool has run: what follows is the head

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            convs.append(module)
        if pooled[0] or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            pooled[0] = tuple(output.shape[-2:]) == (1, 1)
            return
        # (B, C, H, W) or channels-last (B, H, W, C) as in Swin: the smaller of the last two is the side
        sides.append(int(min(output.shape[-2], output.shape[-1])))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(2, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    image = len(input_shape) == 3
    stem = float(convs[0].kernel_size[0]) if convs else math.nan
    reduction = input_shape[-1] / min(sides) if image and sides else math.nan
    return {"stem": stem, "spatial_reduction": reduction, "parameters": count_parameters(model)}


__all__ = ["measured_traits", "spec_traits"]
