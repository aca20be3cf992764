"""Which modules' outputs are probe points, for zoo models and for any ``nn.Module``.

``points`` is a named set (``"blocks"``, ``"conv"``) or module-name glob patterns such
as ``["layer*.?", "fc"]`` (``fnmatch`` syntax; ``*`` also matches dots).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ProbePointError

POINT_SETS = ("blocks", "conv")


def _generic_conv(model: nn.Module) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    return [n for n, m in model.named_modules()
            if (isinstance(m, nn.Conv2d) and "downsample" not in n and "shortcut" not in n)
            or (isinstance(m, nn.Linear) and n != last)]


def probe_points(model: nn.Module, points: str | Sequence[str] = "blocks") -> list[str]:
    """Module names whose outputs are read, in registration order.

    For zoo models the named sets come from the model; for other modules ``conv`` means
    every Conv2d/Linear except 1x1 shortcut convs and the last Linear, and ``blocks`` is
    only known for zoo and some torchvision models, so pass patterns instead.
    """
    sets = getattr(model, "probe_sets", None) or {}
    if isinstance(points, str) and points in POINT_SETS:
        if points in sets:
            names = list(sets[points])
        elif points == "conv":
            names = _generic_conv(model)
        else:
            raise ProbePointError(
                f"no '{points}' probe points are known for {type(model).__name__}; pass module-name "
                "patterns instead, e.g. points=['layer*.?'] (CLI: --points 'layer*.?')"
            )
        if not names:
            others = [k for k, v in sets.items() if v and k != points]
            hint = f"; use {' or '.join(repr(k) for k in others)}" if others else ""
            raise ProbePointError(f"{type(model).__name__} has no '{points}' probe points{hint}")
        return names
    patterns = [points] if isinstance(points, str) else list(points)
    all_names = [n for n, _ in model.named_modules() if n]
    names = [n for n in all_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        sample = ", ".join(all_names[:10])
        raise ProbePointError(
            f"no module of {type(model).__name__} matches {patterns}; valid sets are "
            f"{', '.join(POINT_SETS)}, or patterns over module names such as: {sample}, ..."
        )
    return names


def hooked_pass(model: nn.Module, example: torch.Tensor, handles: Sequence) -> None:
    """One forward pass of ``example`` in eval mode without gradients, for the hooks behind
    ``handles`` to observe; the hooks are removed and the model's mode restored afterwards,
    whatever happens."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def order_by_execution(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[str]:
    """``names`` sorted by when each module first runs in a forward pass of ``example``.

    Raises :class:`ProbePointError` when a module never runs or runs more than once (a
    module called twice, such as a shared ReLU, has no single output to read).
    """
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    order: list[str] = []

    def hook_for(name: str):
        def hook(_module, _inputs, _output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    hooked_pass(model, example, handles)
    never = [n for n in names if n not in calls]
    twice = [n for n in names if calls.get(n, 0) > 1]
    if never:
        raise ProbePointError(f"probe points never run in a forward pass: {never}")
    if twice:
        raise ProbePointError(
            f"probe points run more than once per forward pass (shared modules): {twice}; "
            "choose their parent blocks instead"
        )
    return order
