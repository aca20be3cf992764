"""The base class of zoo models: a module that knows its spec and its probe points."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
    # True when the sets were derived from a library's module tree rather than written by
    # hand: the build keeps only the points a forward pass can read (registry._dry_run)
    derived_probe_sets: bool = False
    # points whose 4-D outputs are channels-last (B, H, W, C) maps, such as Swin blocks
    channels_last_points: frozenset[str] = frozenset()

    def describe(self) -> dict:
        """What is recorded about the model in results and checkpoints."""
        return {
            "spec": self.spec,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "parameters": count_parameters(self),
            "probe_points": {k: list(v) for k, v in self.probe_sets.items()},
        }


# parameters holding tokens that a ViT-like model puts before its patch tokens
PREFIX_TOKEN_PARAMETERS = frozenset({"cls_token", "class_token", "dist_token", "distillation_token",
                                     "reg_token", "register_tokens"})


def prefix_tokens(model: nn.Module) -> int:
    """How many leading tokens of the model's token sequences stand for no image patch: the
    class token, a distillation token, register tokens. timm models say so themselves
    (``num_prefix_tokens``); for others, the token parameters are counted by name, each
    ``(1, n, width)`` parameter giving n tokens."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    total = 0
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in PREFIX_TOKEN_PARAMETERS:
            total += int(parameter.shape[-2]) if parameter.dim() >= 2 else 1
    return total


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())


def scaled(channels: int, multiplier: float) -> int:
    """A layer width times a width multiplier, at least 1."""
    return max(1, int(round(channels * multiplier)))


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a CPU batch read without gradients in the channels-last layout,
    then hands it back contiguous: the same values (a maximum is exact), 1.5-3x faster than
    torch's channels-first CPU kernel on the zoo's VGG and ResNet stages (measured on an Intel
    Xeon). With gradients (training, input reconstruction) it is ``nn.MaxPool2d`` itself, whose
    backward is the faster one there."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
