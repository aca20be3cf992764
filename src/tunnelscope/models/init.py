"""Seeded initialisation: a spec's random init and an untrained copy of a model, reproducible by seed."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators (CPU and every CUDA device) seeded by
    ``seed``, restoring their state afterwards: what the block draws depends on ``seed`` only,
    and nothing outside it is disturbed."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def untrained_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture re-initialised by each module's own ``reset_parameters`` (or
    ``_reset_parameters``), seeded. Parameters no module resets (bare ``nn.Parameter``s such
    as a ViT's class token) are redrawn from N(0, 0.02²) and named in a warning."""
    fresh = copy.deepcopy(model)
    reset_by_a_module: set[str] = set()
    with seeded(seed):
        for prefix, module in fresh.named_modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
                # its own parameters, even those reset to constants (a BatchNorm's weight 1 and bias 0)
                reset_by_a_module |= {f"{prefix}.{name}" if prefix else name
                                      for name, _ in module.named_parameters(recurse=False)}
        kept = [name for name, p in fresh.named_parameters() if p.numel() > 1 and name not in reset_by_a_module]
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                if name in kept:
                    p.normal_(0.0, 0.02)
    if kept:
        warnings.warn(f"untrained copy: no module resets {', '.join(kept)}; redrawn from N(0, 0.02²)", stacklevel=2)
    return fresh
