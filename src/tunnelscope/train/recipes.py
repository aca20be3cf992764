"""Training recipes of the papers: optimiser, learning-rate schedule and loss settings.

- ``sgd``: SGD, momentum 0.9, weight decay 5e-4, lr 0.1, batch 128, schedule ``cosine``
  (default) or ``onecycle``; no label smoothing (Galanti et al.; Masarczyk et al.).
- ``adamw``: AdamW, lr 1e-3, weight decay 0.05, linear warm-up then cosine, label
  smoothing 0.1 (Harun et al.; warm-up 5 epochs, or a tenth of the run when shorter than
  50 epochs).

Schedules advance once per optimiser step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.registry import default_recipe as default_recipe  # the family record says (re-exported)

RECIPES = ("sgd", "adamw")


SCHEDULES = {"sgd": ("cosine", "onecycle", "constant"), "adamw": ("cosine", "constant")}


@dataclass
class Recipe:
    """A fully resolved recipe: every number that changes training, none left implicit."""

    name: str
    lr: float
    weight_decay: float
    momentum: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float

    @staticmethod
    def resolve(name: str, epochs: int, lr: float | None = None, weight_decay: float | None = None,
                schedule: str | None = None, warmup_epochs: float | None = None,
                label_smoothing: float | None = None) -> Recipe:
        """Fill every unset option with the recipe's default."""
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
        schedule = schedule or "cosine"
        if schedule not in SCHEDULES[name]:
            raise ConfigError(f"schedule {schedule!r} does not go with recipe {name!r}; "
                            f"valid: {', '.join(SCHEDULES[name])}")
        if name == "sgd":
            recipe = Recipe("sgd", 0.1, 5e-4, 0.9, schedule, 0.0, 0.0)
        else:
            warm = 5.0 if epochs >= 50 else epochs / 10
            recipe = Recipe("adamw", 1e-3, 0.05, 0.0, schedule, warm, 0.1)
        if lr is not None:
            recipe.lr = lr
        if weight_decay is not None:
            recipe.weight_decay = weight_decay
        if warmup_epochs is not None:
            recipe.warmup_epochs = warmup_epochs
        if label_smoothing is not None:
            recipe.label_smoothing = label_smoothing
        if recipe.lr <= 0 or recipe.weight_decay < 0 or not 0 <= recipe.label_smoothing < 1:
            raise ConfigError(f"recipe values out of range: lr={recipe.lr}, weight_decay={recipe.weight_decay}, "
                            f"label_smoothing={recipe.label_smoothing}")
        return recipe

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimiser over the model's parameters."""
        if self.name == "sgd":
            return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The per-step learning-rate schedule over ``total_steps`` optimiser steps."""
        total = max(1, total_steps)
        if self.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total + 1)
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        constant = self.schedule == "constant"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if constant:
                return 1.0
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def early_steps(steps_per_epoch: int) -> list[int]:
    """Log-spaced steps inside the first epoch: 0, 1, 2, 4, 8, ... below ``steps_per_epoch``."""
    steps = [0]
    s = 1
    while s < steps_per_epoch:
        steps.append(s)
        s *= 2
    return steps
