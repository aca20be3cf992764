"""Cutting a model in two on its state dict: the extractor/tunnel split of a continual-learning
experiment (:mod:`tunnelscope.experiments.continual`), the classifier head, and swapped states.

The modules' order comes from forward hooks on one small batch, so the split works for any
architecture without model surgery: a tensor belongs to the extractor when the module holding
it has finished running by the time the split point's output is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError, ProbePointError
from ..models.probe_points import hooked_pass

COMBINATIONS = ("E1+T1", "E1+T2", "E2+T1", "E2+T2")


@dataclass(frozen=True)
class Partition:
    """State-dict keys of a model split at one probe point into extractor and tunnel.

    ``keys`` lists every key in state-dict order; each is in exactly one of ``extractor`` and
    ``tunnel``. ``extractor_modules`` are the modules that finished running by the time the
    split point's output was ready. ``straddling`` are keys held directly by a module that
    encloses the split point (a container that started before it and ends after it, such as
    a transformer's class token on the root module): they are counted in the extractor.
    ``unused`` are keys of modules that never ran in the forward pass (counted in the tunnel).
    """

    split_point: str
    keys: tuple[str, ...]
    extractor: tuple[str, ...]
    tunnel: tuple[str, ...]
    extractor_modules: tuple[str, ...]
    straddling: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """What a config records of the split."""
        return {"split_point": self.split_point, "extractor": list(self.extractor), "tunnel": list(self.tunnel),
                "extractor_modules": list(self.extractor_modules), "straddling": list(self.straddling),
                "unused": list(self.unused)}


def _execution_times(model: nn.Module, example: Tensor) -> tuple[dict[int, int], dict[int, list[int]]]:
    """When each module (by id) first starts and every time it finishes, on one forward pass of
    ``example`` in eval mode; times are positions in one sequence of start and finish events."""
    clock = [0]
    starts: dict[int, int] = {}
    finishes: dict[int, list[int]] = {}

    def tick() -> int:
        clock[0] += 1
        return clock[0]

    def on_start(module: nn.Module, _inputs: Any) -> None:
        starts.setdefault(id(module), tick())

    def on_finish(module: nn.Module, _inputs: Any, _output: Any) -> None:
        finishes.setdefault(id(module), []).append(tick())

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(on_start))
        handles.append(module.register_forward_hook(on_finish))
    hooked_pass(model, example, handles)
    return starts, finishes


def partition(model: nn.Module, split_point: str, example: Tensor) -> Partition:
    """Split ``model``'s state-dict keys at the module ``split_point`` (a probe point's name).

    The extractor holds every parameter and buffer of the modules that finish running, in a
    forward pass of ``example`` (a small batch), no later than ``split_point``; the tunnel holds
    the rest. Raises :class:`ProbePointError` when the point is unknown or does not run exactly
    once, and :class:`ConfigError` when a module holding weights runs on both sides of it.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    if split_point not in modules:
        raise ProbePointError(f"split point {split_point!r} is not a module of {type(model).__name__}")
    starts, finishes = _execution_times(model, example)
    split_times = finishes.get(id(modules[split_point]), [])
    if len(split_times) != 1:
        raise ProbePointError(f"split point {split_point!r} runs {len(split_times)} times in a forward pass; "
                              "choose a probe point that runs exactly once")
    cut = split_times[0]
    keys = tuple(model.state_dict().keys())
    extractor, tunnel, straddling, unused = [], [], [], []
    for key in keys:
        owner_name = key.rpartition(".")[0]
        owner = modules.get(owner_name)
        if owner is None:
            raise ConfigError(f"state-dict key {key!r} belongs to no module; cannot split this model generically")
        times = finishes.get(id(owner), [])
        if not times:
            tunnel.append(key)
            unused.append(key)
        elif max(times) <= cut:
            extractor.append(key)
        elif starts[id(owner)] > cut:
            tunnel.append(key)
        elif min(times) <= cut:
            raise ConfigError(f"module {owner_name!r} runs both before and after the split point {split_point!r} "
                              "(shared weights); choose another split point")
        else:  # a container that encloses the split point holds this tensor itself
            extractor.append(key)
            straddling.append(key)
    done = tuple(name for name, m in model.named_modules() if name and max(finishes.get(id(m), [cut + 1])) <= cut)
    return Partition(split_point, keys, tuple(extractor), tuple(tunnel), done, tuple(straddling), tuple(unused))


def combine(extractor_state: Mapping[str, Tensor], tunnel_state: Mapping[str, Tensor],
            split: Partition) -> dict[str, Tensor]:
    """A state dict whose extractor tensors come from ``extractor_state`` and tunnel tensors
    from ``tunnel_state`` (copies, in ``split``'s key order). Both must hold exactly ``split``'s keys."""
    expected = set(split.keys)
    for role, state in (("extractor", extractor_state), ("tunnel", tunnel_state)):
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ConfigError(f"the {role} state dict does not fit the split model (missing {missing[:5]}, "
                              f"unexpected {extra[:5]}); both models must share one architecture")
    in_extractor = set(split.extractor)
    return {key: (extractor_state if key in in_extractor else tunnel_state)[key].detach().clone()
            for key in split.keys}


def swap_states(m1_state: Mapping[str, Tensor], m2_state: Mapping[str, Tensor],
                split: Partition) -> dict[str, dict[str, Tensor]]:
    """The four state dicts ``E1+T1``, ``E1+T2``, ``E2+T1`` and ``E2+T2`` (``Ei`` and ``Ti``
    from model i)."""
    states = {"1": m1_state, "2": m2_state}
    return {name: combine(states[name[1]], states[name[4]], split) for name in COMBINATIONS}


@dataclass(frozen=True)
class Head:
    """The classifier head: the module ``name`` that computes the logits, and its state-dict keys."""

    name: str
    keys: tuple[str, ...]


def classifier_head(model: nn.Module, example: Tensor, num_classes: int) -> Head:
    """The module holding weights of its own that starts last in a forward pass of ``example``
    (a container holding a tensor of its own, such as a class token on the root, starts before
    its children), which must output ``num_classes`` logits (a last dimension of that size);
    raises :class:`ConfigError` for a model whose last weighted module is not such a head."""
    starts, _ = _execution_times(model, example)
    weighted = [(starts[id(m)], name, m) for name, m in model.named_modules()
                if id(m) in starts and any(True for _ in m.parameters(recurse=False))]
    if not weighted:
        raise ConfigError(f"{type(model).__name__} has no module with weights; it has no classifier head to give "
                          "each task its own")
    _, name, module = max(weighted, key=lambda row: row[0])
    shapes: list[tuple[int, ...]] = []
    handle = module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(getattr(out, "shape", ()))))
    hooked_pass(model, example, [handle])
    if not shapes or not shapes[-1] or shapes[-1][-1] != num_classes:
        raise ConfigError(f"the last module with weights of {type(model).__name__}, {name!r}, outputs "
                          f"{shapes[-1] if shapes else 'no tensor'}, not {num_classes} logits: it is not a classifier "
                          "head, so tasks cannot have one head each; use heads='shared'")
    prefix = f"{name}." if name else ""
    keys = tuple(k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix):])
    return Head(name, keys)


def with_head(state: Mapping[str, Tensor], head_state: Mapping[str, Tensor], head: Head | None) -> dict[str, Tensor]:
    """``state`` with ``head``'s tensors taken from ``head_state`` (``state`` itself for no head)."""
    if head is None:
        return dict(state)
    return {key: head_state[key] if key in head.keys else value for key, value in state.items()}


__all__ = ["COMBINATIONS", "Head", "Partition", "classifier_head", "combine", "partition", "swap_states", "with_head"]
