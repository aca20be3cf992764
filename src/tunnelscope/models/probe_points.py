"""Which modules' outputs are probe points, for zoo models and for any ``nn.Module``.

``points`` is a named set (``"blocks"``, ``"conv"``) or module-name glob patterns over the
dotted names of ``model.named_modules()``, such as ``["layer*.?", "fc"]``. A pattern must
match a whole name; the wildcards respect the dots that separate the levels of a name:

- ``*`` matches any characters within ONE level (never a dot): ``blocks.*`` is every direct
  child of ``blocks`` (a ViT's 12 blocks), not their submodules;
- ``?`` matches one character other than a dot; ``[seq]`` / ``[!seq]`` one character in /
  not in ``seq`` (never a dot);
- ``**`` as a whole level matches any number of levels: ``a.**`` is everything below ``a``
  (not ``a`` itself), ``**.relu`` any module named ``relu`` at any depth (top level
  included), ``a.**.relu`` any ``relu`` below ``a``, and ``**`` alone every module. Inside a
  level (``layer**``) it matches any characters, dots included.

The translation to a regular expression (:func:`glob_regex`) is: ``*`` → ``[^.]*``,
``?`` → ``[^.]``, ``[seq]`` → ``(?!\\.)[seq]``, ``**.`` → ``(?:[^.]+\\.)*``, a final
``.**`` → ``\\.[^.]+(?:\\.[^.]+)*``, a lone ``**`` → ``.+``, ``**`` inside a level → ``.*``;
every other character stands for itself; the whole name must match.

:func:`order_by_execution` checks chosen points with one forward pass of an example batch:
it puts them in execution order, refuses modules that never run or run more than once, and
warns when two points output the very same tensor.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..errors import ProbePointError

POINT_SETS = ("blocks", "conv")
# (family, finder): a finder returns a library module object's block-level points, or None when
# the module is not of its library; the tv and hub modules register theirs when imported
BLOCK_FINDERS: list[tuple[str, Callable[[nn.Module], list[str] | None]]] = []
# modules whose outputs stand for a layer when a model has no repeated composite blocks
_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardswish)
_CONTAINER_TYPES = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:  # noqa: C901 (a tokenizer: one branch per token kind)
    """The compiled regular expression a module-name glob ``pattern`` stands for (module docstring)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            whole_level = (i == 0 or pattern[i - 1] == ".") and (j == n or pattern[j] == ".")
            if not whole_level:
                out.append(".*")
            elif j < n:  # "**." : zero or more whole levels, each with its dot
                out.append(r"(?:[^.]+\.)*")
                j += 1
            elif i == 0:  # "**" alone
                out.append(".+")
            else:  # "a.**": one or more levels below a (its dot is already out)
                out.append(r"[^.]+(?:\.[^.]+)*")
            i = j
        elif c == "*":
            out.append("[^.]*")
            i += 1
        elif c == "?":
            out.append("[^.]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(r"\[")
                i += 1
                continue
            inside = pattern[i + 1:j].replace("\\", "\\\\")
            if inside.startswith("!"):
                inside = "^" + inside[1:]
            elif inside.startswith("^"):
                inside = "\\" + inside
            out.append(rf"(?!\.)[{inside}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def match_names(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The ``names`` that match any of ``patterns`` (module-name globs), in the order of ``names``."""
    regexes = [glob_regex(p) for p in patterns]
    return [name for name in names if any(r.fullmatch(name) for r in regexes)]


def _generic_conv(model: nn.Module) -> list[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    return [n for n, m in model.named_modules()
            if (isinstance(m, nn.Conv2d) and "downsample" not in n and "shortcut" not in n)
            or (isinstance(m, nn.Linear) and n != last)]


def outermost(net: nn.Module, is_block: Callable[[nn.Module], bool]) -> list[str]:
    """Names, in registration order, of the modules for which ``is_block`` holds that sit inside
    no other such module: a library model's blocks, found by their classes."""
    found: list[str] = []
    for name, module in net.named_modules():
        if name and is_block(module) and not any(name.startswith(f"{outer}.") for outer in found):
            found.append(name)
    return found


def channels_last_blocks(net: nn.Module, blocks: Sequence[str]) -> frozenset[str]:
    """The ``blocks`` whose 4-D outputs are channels-last ``(B, H, W, C)`` maps: Swin transformer
    blocks (torchvision's and timm's), found by their class names."""
    modules = dict(net.named_modules())
    return frozenset(n for n in blocks if type(modules.get(n)).__name__.startswith("SwinTransformer"))


def default_blocks(model: nn.Module) -> tuple[list[str], str]:
    """The ``blocks`` of a module that is no zoo model, and the rule that found them: its
    library's own blocks (torchvision, timm, Hugging Face transformers: the rules of the
    ``tv:``, ``timm:`` and ``hf:`` specs), else the outermost modules of a class with children
    that occurs at least twice (a model's repeated blocks), else the outputs of a repeated
    activation module (a plain Sequential MLP's nonlinearities); ``([], rule)`` if none."""
    for family, finder in BLOCK_FINDERS:
        found = finder(model)
        if found is not None:
            return found, family
    composite: dict[type, int] = {}
    for name, module in model.named_modules():
        if name and not isinstance(module, _CONTAINER_TYPES) and any(True for _ in module.children()):
            composite[type(module)] = composite.get(type(module), 0) + 1
    repeated = {cls for cls, count in composite.items() if count >= 2}
    if repeated:
        return outermost(model, lambda module: type(module) in repeated), "outermost repeated blocks"
    activations = [n for n, m in model.named_modules() if isinstance(m, _ACTIVATIONS)]
    return (activations, "repeated activations") if len(activations) >= 2 else ([], "none")


def _no_match_hint(all_names: list[str], patterns: list[str]) -> str:
    """Why patterns written for the old syntax or the old ``tv:`` names match nothing, if that is why."""
    if any(p.startswith("net.") for p in patterns) and match_names(all_names, [p[4:] for p in patterns]):
        return "; tv: models now use torchvision's own module names: drop the 'net.' prefix"
    if any(fnmatch.fnmatchcase(n, p) for n in all_names for p in patterns):
        return ("; note that '*' stays within one level of a dotted name: use '**' to cross levels, "
                "e.g. 'layer1.**' for everything below layer1")
    return ""


def probe_points(model: nn.Module, points: str | Sequence[str] = "blocks") -> list[str]:
    """Module names whose outputs are read, in registration order.

    For zoo models the named sets come from the model; for other modules ``conv`` means
    every Conv2d/Linear except 1x1 shortcut convs and the last Linear, and ``blocks`` is
    found by :func:`default_blocks` (a library's own blocks, else the repeated ones). Patterns
    choose any modules (module docstring: ``*`` stays within one dotted level, ``**`` crosses
    levels).
    """
    sets = getattr(model, "probe_sets", None) or {}
    if isinstance(points, str) and points in POINT_SETS:
        if points in sets:
            names = list(sets[points])
        elif points == "conv":
            names = _generic_conv(model)
        else:
            names = default_blocks(model)[0]
            if not names:
                raise ProbePointError(
                    f"no blocks could be found in {type(model).__name__} (no library blocks, no repeated modules "
                    f"with children, no repeated activations); pass module-name patterns instead, e.g. "
                    f"{_pattern_example(model)}")
        if not names:
            others = [k for k, v in sets.items() if v and k != points]
            hint = f"; use {' or '.join(repr(k) for k in others)}" if others else ""
            raise ProbePointError(f"{type(model).__name__} has no '{points}' probe points{hint}")
        return names
    patterns = [points] if isinstance(points, str) else list(points)
    bad = [p for p in patterns if not isinstance(p, str)]
    if bad or not patterns:
        raise ProbePointError(f"points must be 'blocks', 'conv' or a list of module-name patterns (strings), "
                              f"got {points!r}")
    all_names = [n for n, _ in model.named_modules() if n]
    names = match_names(all_names, patterns)
    if not names:
        sample = ", ".join(all_names[:10])
        raise ProbePointError(
            f"no module of {type(model).__name__} matches {patterns}; valid sets are "
            f"{', '.join(POINT_SETS)}, or patterns over module names such as: {sample}, ..."
            f"{_no_match_hint(all_names, patterns)}"
        )
    return names


def _pattern_example(model: nn.Module) -> str:
    """A pattern over the model's own top-level children, for an error message."""
    children = [name for name, _ in model.named_children()]
    first = children[0] if children else "features"
    return f"points=['{first}.*'] (CLI: --points '{first}.*'), or see model.named_modules()"


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


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a probe point's output is read from (the first element of a tuple or list)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) else None


def _identity(t: torch.Tensor) -> tuple:
    """A key equal for two outputs holding the very same values: the same tensor object, or the
    same storage, offset, shape, strides and dtype, not written in place in between (version)."""
    try:
        version: int | None = t._version
    except RuntimeError:  # an inference tensor has no version counter
        version = None
    try:
        pointer = t.untyped_storage().data_ptr() if t.numel() else 0
    except (RuntimeError, NotImplementedError):  # sparse, meta or other storage-less tensors
        pointer = 0
    if not pointer:
        return ("object", id(t), version)
    return ("storage", t.device.type, t.device.index, pointer, t.storage_offset(), tuple(t.shape), t.stride(),
            t.dtype, version)


def duplicate_groups(outputs: dict[str, torch.Tensor], versions: dict[str, int | None] | None = None
                     ) -> list[list[str]]:
    """Groups (2 or more, in the order of ``outputs``) of points whose outputs are the same tensor.

    ``versions`` are the tensors' version counters when each was read (an in-place op in
    between, such as ``ReLU(inplace=True)``, makes the values differ)."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in outputs.items():
        key = _identity(tensor)
        if versions is not None:
            key = (*key[:-1], versions.get(name))
        groups.setdefault(key, []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def warn_duplicates(groups: Sequence[Sequence[str]]) -> None:
    """One warning line naming the points that output the same tensor, advising to drop one of each."""
    if groups:
        pairs = "; ".join(_join(g) for g in groups)
        warnings.warn(f"probe points output the very same tensor: {pairs} (a block returns its last child's "
                      "output, or an Identity/Dropout passes its input on); drop all but one of each so that no "
                      "layer is counted twice", UserWarning, stacklevel=3)


def readable_points(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[str]:
    """The ``names`` whose output one forward pass of ``example`` can read as a probe point, in
    the order given: modules that run exactly once and output a tensor, leaving out Linear
    layers applied to channels-last maps (4-D outputs or more, as inside ConvNeXt and Swin
    blocks). For point sets derived from a library's module tree, where some modules only run
    in training (auxiliary heads) or are called through their weights (Swin's attention)."""
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    dims: dict[str, int] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            tensor = _first_tensor(output)
            dims[name] = -1 if tensor is None else tensor.dim()
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in dict.fromkeys(names) if n in modules]
    hooked_pass(model, example, handles)
    return [n for n in names if calls.get(n) == 1 and dims[n] > 0
            and not (isinstance(modules[n], nn.Linear) and dims[n] >= 4)]


def order_by_execution(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> list[str]:
    """``names`` sorted by when each module first finishes in a forward pass of ``example``
    (a small batch; a block comes after its children).

    Raises :class:`ProbePointError` when a module never runs or runs more than once (a
    module called twice, such as a shared ReLU, has no single output to read), and warns
    when two points output the very same tensor (the same values, read twice).
    """
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ProbePointError(f"{type(model).__name__} has no modules named {unknown}; choose names from "
                              "model.named_modules()")
    calls: dict[str, int] = {}
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}  # kept alive so that no other tensor reuses their memory
    versions: dict[str, int | None] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append(name)
                tensor = _first_tensor(output)
                if tensor is not None:
                    outputs[name] = tensor
                    versions[name] = _identity(tensor)[-1]
        return hook

    with torch.inference_mode(False):  # normal tensors, whose version counters tell in-place writes
        example = example.clone() if example.is_inference() else example
        handles = [modules[n].register_forward_hook(hook_for(n)) for n in dict.fromkeys(names)]
        hooked_pass(model, example, handles)
    never = [n for n in names if n not in calls]
    twice = [n for n in dict.fromkeys(names) if calls.get(n, 0) > 1]
    if never:
        raise ProbePointError(f"probe points never run in a forward pass: {never}; they are defined but not called "
                              "by forward() on this input, so drop them from the points")
    if twice:
        advice = "; ".join(
            f"{n} runs {calls[n]} times" + (f": choose its parent block {n.rpartition('.')[0]!r} instead"
                                             if "." in n else ": drop it (the model calls it at several places)")
            for n in twice)
        raise ProbePointError(f"probe points run more than once per forward pass (a shared module such as a ReLU "
                              f"called twice has no single output): {advice}")
    warn_duplicates(duplicate_groups(outputs, versions))
    return order
