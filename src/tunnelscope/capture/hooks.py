"""Reading probe points: forward hooks, reductions to vectors, and a streaming pass.

A :class:`Capture` hooks a model's probe points and turns each output into a ``(B, D)``
matrix with a reduction (METRICS.md §1):

- ``pool2`` (default): adaptive average pool of a conv map to 2x2, flattened (4C dims);
  maps already at most 2x2 are flattened directly.
- ``gap``: global average pool (C dims); ``poolK``: KxK adaptive pool; ``flatten``: C·H·W.
- ``project:D``: flatten, then a fixed Gaussian random projection to D dims, seeded per
  probe point.
- 4-D outputs of the model's ``channels_last_points`` (Swin blocks) are ``(B, H, W, C)``
  maps, turned channels-first before they are pooled.
- 3-D outputs are token sequences ``(B, T, D)`` (transformers, RNNs), averaged over
  tokens with the prefix tokens excluded (class, distillation and register tokens:
  :func:`tunnelscope.models.base.prefix_tokens`); in models built on
  ``Conv1d`` they are 1-D maps ``(B, C, L)``, pooled like 2-D ones (``pool2`` → 2
  positions per channel).

Layers wider than ``max_dim`` after reduction (projection included) keep a fixed, seeded
random subset of ``max_dim`` coordinates (METRICS.md §3: 8000; ``None``: no cap), recorded in
:attr:`Capture.layout`. Features never share memory with the module's output.
Points are put in execution order and checked by one forward pass of an example batch
(the ``example`` given, else a zero batch of a zoo model's input shape, else the first
batch captured): a module that never runs or runs more than once per forward pass is
refused, two points that output the very same tensor are warned about.
The forward pass stops once every probe point that was asked for has run.
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ProbePointError
from ..features import Features, joint_features, point_views  # noqa: F401  (re-exported)
from ..models.base import prefix_tokens
from ..models.probe_points import channels_last_blocks, order_by_execution, probe_points
from .reduce import Reduction

DEFAULT_MAX_DIM = 8000
INPUT_POINT = "input"  # layer 0: the model's input, reduced like the probe points


class _StopForward(Exception):
    """Raised by the deepest hook to end a forward pass early."""


def _full_copy(_name: str, out) -> Tensor:
    """The whole output, copied so that later in-place ops cannot change it; autograd intact."""
    return (out[0] if isinstance(out, (tuple, list)) else out).clone()


def run_points(model: nn.Module, names: Sequence[str], x: Tensor, keep: Callable[[str, Any], Tensor] | None = None,
               stop: bool = True) -> tuple[dict[str, Tensor], Any]:
    """``({name: keep(name, output)}, model output)`` on input ``x``; with ``stop`` the forward
    pass ends as soon as every one of ``names`` has run (in whatever order they were given:
    a block and its children may be listed together) and the model output is None. Each point
    is read at its first call; a point that did not run is an error."""
    keep = keep or _full_copy
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ProbePointError(f"{type(model).__name__} has no modules named {unknown}")
    outputs: dict[str, Tensor] = {}
    handles = []
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        def hook(_m, _i, out, name=name):
            if name in outputs:
                return
            outputs[name] = keep(name, out)
            if stop and len(outputs) == len(wanted):
                raise _StopForward
        handles.append(modules[name].register_forward_hook(hook))
    result = None
    try:
        result = model(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in wanted if n not in outputs]
    if missing:
        raise ProbePointError(f"probe points did not run in the forward pass: {missing}")
    return outputs, result


def activations(model: nn.Module, names: Sequence[str], x: Tensor,
                keep: Callable[[str, Any], Tensor] = _full_copy) -> dict[str, Tensor]:
    """``keep(name, output)`` for each of ``names`` on input ``x``: by default the full,
    unreduced output with autograd intact. The forward pass stops once all of them have run;
    a point that did not run is an error."""
    return run_points(model, names, x, keep)[0]


_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[str]]] = weakref.WeakKeyDictionary()


def _preordered(model: nn.Module, names: Sequence[str]) -> list[str] | None:
    """``names`` in execution order when they all belong to one of a zoo model's probe sets
    (ordered and checked when the model was built), else None."""
    for members in (getattr(model, "probe_sets", None) or {}).values():
        if set(names) <= set(members):
            return [n for n in members if n in set(names)]
    return None


def checked_points(model: nn.Module, names: Sequence[str], example: Tensor) -> list[str]:
    """``names`` in execution order, checked with one forward pass of ``example`` (see
    :func:`~tunnelscope.models.order_by_execution`: modules that never run or run more than
    once are refused, points that output the same tensor warned about). The result is cached
    per model instance, point modules and input shape, so repeated captures cost no pass."""
    modules = dict(model.named_modules())
    key = (tuple(sorted(set(names))), tuple(id(modules.get(n)) for n in sorted(set(names))),
           tuple(example.shape[1:]), example.dtype, example.device.type)
    cache = _CHECKED.setdefault(model, {})
    if key not in cache:
        cache[key] = order_by_execution(model, names, example[:2])
    return list(cache[key])


def _model_example(model: nn.Module) -> Tensor | None:
    """A zero batch of 2 of the input shape a zoo model records, on its device; None if unknown."""
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or not shape:
        return None
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        return torch.zeros(2, *shape)
    return torch.zeros(2, *shape, device=tensor.device, dtype=tensor.dtype)


def _excluded(count: int) -> str:
    """What a token mean left out, for the recorded reduction."""
    return " (class token excluded)" if count == 1 else f" ({count} prefix tokens excluded)"


def _seed_for(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) + 7919 * seed) % (2**31)



def _reduce_map(out: Tensor, red: Reduction) -> tuple[Tensor, str]:
    """A ``(B, C, H, W)`` map reduced by ``red`` (a projection starts from the flattened map)."""
    if red.kind == "gap":
        x = out.mean((2, 3))
    elif red.kind == "pool" and (out.shape[2] > red.size or out.shape[3] > red.size):
        x = F.adaptive_avg_pool2d(out, red.size).flatten(1)
    else:
        x = out.flatten(1)
    return x, str(red) if red.kind != "project" else "flatten"


def class_scores(output: Any) -> Tensor | None:
    """The class scores a model returned: a plain tensor, the ``logits`` of a Hugging Face
    output (or any object carrying them), or the first tensor of a tuple (``return_dict=False``,
    torchvision's auxiliary-output tuples); None when there are none."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None

class Capture:
    """Hooks on a model's probe points that return ``{name: (B, D) tensor}`` per batch.

    ``points`` is a probe-point set (``blocks``, ``conv``) or glob patterns, or an explicit
    list of module names. Use as ``features = capture(x)``; the model's own output is not
    computed past the deepest point unless ``model_output`` (then ``features.output`` holds it).
    ``include_input`` adds layer 0, :data:`INPUT_POINT`: the model's input reduced the same
    way as the points (flattened for models that flatten their input first, such as the MLPs).
    ``names`` lists every point read, layer 0 first; ``points`` only the modules, in
    execution order: checked with one dry pass of ``example`` (a small batch) at construction,
    of a zero batch of a zoo model's ``input_shape`` when no example is given, or else of the
    first batch captured (then ``points`` and ``names`` are settled by the first call). A zoo
    model's named sets were checked when it was built and need no pass.
    """

    def __init__(self, model: nn.Module, points: str | Sequence[str] = "blocks", reduce: str = "pool2",
                 max_dim: int | None = DEFAULT_MAX_DIM, seed: int = 0, example: Tensor | None = None,
                 include_input: bool = False, model_output: bool = False) -> None:
        self.model = model
        self.reduction = Reduction.parse(reduce)
        if max_dim is not None and max_dim < 1:
            raise ConfigError(f"max_dim must be >= 1 (or None for no cap), got {max_dim}")
        self.max_dim = max_dim
        self.seed = seed
        names = probe_points(model, points)
        ordered = _preordered(model, names)
        example = example if example is not None or ordered is not None else _model_example(model)
        if ordered is None and example is not None:
            ordered = checked_points(model, names, example)
        self._checked = ordered is not None
        names = ordered if ordered is not None else names
        if include_input and INPUT_POINT in names:
            raise ProbePointError(f"a probe point is named {INPUT_POINT!r}, the name of layer 0 (the input); "
                                  "rename the module or analyse without the input point")
        self.points = names
        self.input_point = INPUT_POINT if include_input else None
        self.names = ([INPUT_POINT] if include_input else []) + names
        self.model_output = model_output
        self.flat_input = bool(getattr(model, "flat_input", False))
        self.prefix_tokens = prefix_tokens(model)
        self.channels_last = frozenset(getattr(model, "channels_last_points", None)
                                       or channels_last_blocks(model, self.points))
        # 3-D outputs are (B, C, L) maps in models built on Conv1d, token sequences otherwise
        self.tokens = self.prefix_tokens > 0 or not any(isinstance(m, nn.Conv1d) for m in model.modules())
        self.layout: dict[str, dict] = {}  # per point: raw shape, reduced dims, subset/projection
        self._projections: dict[str, Tensor] = {}
        self._subsets: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ reductions
    def _reduce(self, name: str, out: Tensor) -> Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise ProbePointError(f"probe point {name} returned {type(out).__name__}, not a tensor")
        raw_shape = tuple(out.shape[1:])
        out = out.detach()
        red = self.reduction
        x, how = self._reduce_shape(name, out)
        if red.kind == "project":
            x = x.float() @ self._projection(name, x.shape[1], x.device)
            how += f" + gaussian projection to {red.size}"
        if self.max_dim is not None and x.shape[1] > self.max_dim:
            idx = self._subset(name, x.shape[1], x.device)
            x = x[:, idx]
            how += f" + seeded subset of {self.max_dim} coordinates"
        if x.untyped_storage().data_ptr() == out.untyped_storage().data_ptr():
            x = x.clone()  # a later in-place op (e.g. ReLU(inplace=True)) must not rewrite what was read
        if name not in self.layout:
            self.layout[name] = {"raw_shape": list(raw_shape), "dims": int(x.shape[1]), "reduction": how}
        return x

    def _reduce_shape(self, name: str, out: Tensor) -> tuple[Tensor, str]:
        """``out`` reduced by its layout to ``(B, D)`` (before any projection or subset), and how."""
        red = self.reduction
        if out.dim() == 4:
            channels_last = name in self.channels_last
            x, how = _reduce_map(out.permute(0, 3, 1, 2) if channels_last else out, red)
            return x, how + (" (channels-last map)" if channels_last else "")
        if out.dim() == 3 and self.tokens:
            skip = self.prefix_tokens
            tokens = out[:, skip:] if (skip and out.shape[1] > skip) else out
            return tokens.mean(1), "token mean" + (_excluded(skip) if tokens is not out else "")
        if out.dim() == 3:  # (B, C, L): a 1-D conv map
            if red.kind == "gap":
                x = out.mean(2)
            elif red.kind == "pool" and out.shape[2] > red.size:
                x = F.adaptive_avg_pool1d(out, red.size).flatten(1)
            else:
                x = out.flatten(1)
            return x, (str(red) if red.kind != "project" else "flatten") + " (1-D map)"
        return (out, "none") if out.dim() == 2 else (out.flatten(1), "flatten")

    def _projection(self, name: str, d_in: int, device: torch.device) -> Tensor:
        if name not in self._projections:
            g = torch.Generator().manual_seed(_seed_for(name, self.seed))
            d = self.reduction.size
            self._projections[name] = (torch.randn(d_in, d, generator=g) / d**0.5).to(device)
        return self._projections[name]

    def _subset(self, name: str, d_in: int, device: torch.device) -> Tensor:
        if name not in self._subsets:
            g = torch.Generator().manual_seed(_seed_for(name, self.seed))
            cap = self.max_dim if self.max_dim is not None else d_in
            self._subsets[name] = torch.sort(torch.randperm(d_in, generator=g)[:cap]).values.to(device)
        return self._subsets[name]

    # ------------------------------------------------------------------ running
    def layer(self, name: str) -> int:
        """The layer index of a point: 0 for the input, then 1, 2, ... in execution order."""
        return self.names.index(name) + (0 if self.input_point else 1)

    def __call__(self, x: Tensor) -> Features:
        """Run the model on ``x`` and return every point's reduced features."""
        if not self._checked:
            self._settle(x)
        feats, output = run_points(self.model, self.points, x, keep=self._reduce, stop=not self.model_output)
        out = Features()
        if self.input_point:
            out[self.input_point] = self._reduce(self.input_point, x.flatten(1) if self.flat_input else x)
        for n in self.points:
            out[n] = feats[n]
        out.output = class_scores(output)
        return out

    def _settle(self, x: Tensor) -> None:
        """Order and check the points with a dry pass of (up to 2 samples of) the first batch."""
        self.points = checked_points(self.model, self.points, x)
        self.names = ([INPUT_POINT] if self.input_point else []) + self.points
        self._checked = True

    def widths(self, example: Tensor) -> dict[str, int]:
        """Each point's reduced width, from one forward pass over ``example`` (a small batch)."""
        was_training, output = self.model.training, self.model_output
        self.model.eval()
        self.model_output = False
        try:
            with torch.inference_mode():
                return {name: x.shape[1] for name, x in self(example).items()}
        finally:
            self.model.train(was_training)
            self.model_output = output

    def stream(self, split, batch_size: int, device: torch.device, progress=None, description: str = "",
               generator: torch.Generator | None = None) -> Iterator[tuple[Features, Tensor]]:
        """One pass over a split under ``inference_mode``: yields ``(features, labels)``.

        The split's order is kept unless a ``generator`` is given, which shuffles it.
        ``progress`` is a rich Progress (or the silent one).
        """
        was_training = self.model.training
        self.model.eval()
        task = progress.add_task(description, total=len(split), info="") if progress is not None else None
        seen = 0
        try:
            with torch.inference_mode():
                for x, y in split.batches(batch_size, device=device, shuffle=generator is not None,
                                          generator=generator):
                    seen += len(y)
                    yield self(x), y
                    if task is not None:
                        progress.update(task, completed=seen)
        finally:
            self.model.train(was_training)


def capture_for(model: nn.Module, points: str | Sequence[str], **options: Any) -> Capture:
    """The capture of ``model``'s probe points: a :class:`Capture`, or the model's own
    ``capture_class`` when it reads its points itself (precomputed features)."""
    make_capture = getattr(model, "capture_class", Capture)
    capture: Capture = make_capture(model, points, **options)
    return capture
