"""Interventions on a trained network: how far each layer moved, and what resetting or
deleting layers costs (Masarczyk et al. 2023; Nguyen et al. 2021). See docs/interventions.md.

- :func:`weight_movement`: per checkpoint and layer, ``‖W_t − W_0‖_F / ‖W_0‖_F`` and the
  distance from the previous checkpoint.
- :func:`reset_layers`: test accuracy after putting layers ``k..L`` (or ``1..k``) back to
  their values at initialisation (the run's step-0 checkpoint).
- :func:`delete_blocks`: test accuracy of a residual network with residual blocks reduced to
  their skip connection, one at a time and in contiguous ranges.

**Layers.** Layer ``k`` (1..L) is the ``k``-th probe point of a point set (``"blocks"`` by
default, in forward order); it owns every state entry (parameters; buffers such as BatchNorm
running statistics) of the module named by that point. The **head** (layer ``L + 1``) owns
the entries of modules outside every point that run after the last point: for the zoo's
``blocks`` sets, exactly the classifier. Entries outside every point that run earlier
(a torchvision ResNet's stem, the BatchNorms between ``conv`` points) form the group
``"other"``: never reset, reported by :func:`weight_movement` with no layer index.

Every function returns a tidy :class:`pandas.DataFrame` whose ``attrs`` record the settings;
:class:`InterventionResult` holds one such table with its settings as ``config`` and saves it
(``movement.csv``, ``reset.csv`` or ``deletion.csv``, ``interventions.png``/``.svg`` and ``config.json``);
:func:`tunnelscope.report.interventions.interventions_figure` draws several side by side.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .. import data as data_mod
from ..checkpoint import read_checkpoint
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, InsufficientDataError, RunDirectoryError, ShapeError
from ..models.probe_points import hooked_pass, order_by_execution, probe_points
from ..models.resolve import load_model
from ..report.interventions import HEAD, OTHER
from ..rundir import CKPT_DIR, checkpoint_name, checkpoints, foreign_checkpoint
from ..train.loop import read_run
from .base import ExperimentResult

DIRECTIONS = ("k..L", "1..k")  # and "both": each in turn
PROJECTION_POLICIES = ("skip", "keep")
Points = str | Sequence[str]
# each intervention's table: the name its result gives it, by the ``attrs["kind"]`` of the function's table
TABLE_NAMES = {"movement": "movement", "reset": "resets", "deletion": "deletions"}
TABLE_FILES = {"movement": "movement.csv", "resets": "reset.csv", "deletions": "deletion.csv"}
INTERVENTION_KEY = "intervention"  # the key of config.json naming the table a directory holds


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerMap:
    """Which state entries each layer owns: ``points`` are layers 1..L in forward order;
    ``owned`` maps each point, :data:`HEAD` and :data:`OTHER` to state-dict names;
    ``parameters`` holds the names that are parameters (the rest are buffers)."""

    points: tuple[str, ...]
    owned: dict[str, tuple[str, ...]]
    parameters: frozenset[str]

    @property
    def depth(self) -> int:
        """L, the number of probe-point layers."""
        return len(self.points)

    def index(self, layer: str) -> int | None:
        """1..L for a point, L + 1 for the head, None for the ``other`` group."""
        if layer == HEAD:
            return self.depth + 1
        return self.points.index(layer) + 1 if layer in self.points else None

    def names(self, layers: Iterable[str], buffers: bool = True) -> list[str]:
        """The state names the given layers own (parameters only unless ``buffers``)."""
        return [n for layer in layers for n in self.owned.get(layer, ())
                if buffers or n in self.parameters]


def layer_map(model: nn.Module, points: Points = "blocks", input_shape: Sequence[int] | None = None) -> LayerMap:
    """Assign ``model``'s state entries to probe-point layers, the head and ``other``.

    One forward pass of a dummy batch (shape ``input_shape``, default ``model.input_shape``)
    orders the points and tells which modules outside them run after the last one (the head).
    Raises :class:`ConfigError` for nested points (one inside another)."""
    shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
    if not shape:
        raise ConfigError(f"{type(model).__name__} records no input shape; pass input_shape=(C, H, W)")
    example = torch.zeros(2, *shape, device=_device_of(model))
    names = order_by_execution(model, probe_points(model, points), example)
    nested = [(a, b) for a in names for b in names if b.startswith(a + ".")]
    if nested:
        raise ConfigError(f"probe points {nested[0][0]} and {nested[0][1]} are nested, so a parameter would belong "
                          "to two layers; choose points that do not contain each other (e.g. 'blocks')")
    if HEAD in names or OTHER in names:
        raise ConfigError(f"a probe point named {HEAD!r} or {OTHER!r} clashes with the names of the extra groups; "
                          "choose other points")
    state = list(model.state_dict().keys())
    owned: dict[str, list[str]] = {n: [] for n in (*names, HEAD, OTHER)}
    loose = []
    for key in state:
        point = next((p for p in names if key.startswith(p + ".")), None)
        if point is None:
            loose.append(key)
        else:
            owned[point].append(key)
    if loose:
        starts = _start_ticks(model, {k.rpartition(".")[0] for k in loose} | {names[-1]}, example)
        last_end = starts[names[-1]][1]
        for key in loose:
            start = starts.get(key.rpartition(".")[0], (None, None))[0]
            owned[HEAD if start is not None and start > last_end else OTHER].append(key)
    parameters = frozenset(n for n, _ in model.named_parameters())
    return LayerMap(tuple(names), {k: tuple(v) for k, v in owned.items()}, parameters)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _start_ticks(model: nn.Module, modules: set[str], example: Tensor) -> dict[str, tuple[int, int]]:
    """For each named module that runs: (tick when its forward first starts, tick when it first ends)."""
    ticks: dict[str, tuple[int, int]] = {}
    clock = [0]
    found = dict(model.named_modules())

    def stamp(name: str, at_start: bool):
        def hook(*_args: Any) -> None:
            clock[0] += 1
            start, end = ticks.get(name, (-1, -1))
            if at_start and start < 0:
                ticks[name] = (clock[0], end)
            elif not at_start and end < 0:
                ticks[name] = (start, clock[0])
        return hook

    handles = []
    for name in modules:
        if name in found:
            handles.append(found[name].register_forward_pre_hook(stamp(name, True)))
            handles.append(found[name].register_forward_hook(stamp(name, False)))
    hooked_pass(model, example, handles)
    return {name: t for name, t in ticks.items() if t[0] >= 0}


# ----------------------------------------------------------------------------- checkpoints and data
def _checkpoint_paths(source: str | Path, checkpoint: int | str | Path | None,
                      init: str | Path | None) -> tuple[Path, Path, bool]:
    """(checkpoint to intervene on, initialisation checkpoint, whether the latter was given)."""
    source = Path(source)
    if source.is_dir():
        by_step = checkpoints(source, required=True)
        if checkpoint is None:
            chosen = list(by_step.values())[-1]
        elif isinstance(checkpoint, int):
            if checkpoint not in by_step:
                raise ConfigError(f"{source} has no checkpoint at step {checkpoint}; steps: {sorted(by_step)}")
            chosen = by_step[checkpoint]
        else:
            chosen = Path(checkpoint) if Path(checkpoint).is_file() else source / checkpoint
        first = source / CKPT_DIR / checkpoint_name(0)
    else:
        if checkpoint is not None:
            raise ConfigError("checkpoint= picks a checkpoint inside a run directory; give the run directory "
                              "or the checkpoint file, not both")
        chosen, first = source, source.parent / checkpoint_name(0)
    if init is not None:
        return chosen, Path(init), True
    return chosen, first, False


def _initial_state(path: Path, meta: Mapping[str, Any], given: bool) -> dict[str, Tensor]:
    """The model state at initialisation: the step-0 checkpoint of the same model (and seed)."""
    if not path.is_file() and not given:
        raise CheckpointError(f"no initialisation checkpoint {path}; train with early checkpoints (the default) "
                              "so that step 0 is saved, or pass init=PATH")
    payload = read_checkpoint(path)
    init_meta = payload["meta"]
    if init_meta["model_spec"] != meta["model_spec"]:
        raise CheckpointError(f"initialisation {path} holds {init_meta['model_spec']}, not {meta['model_spec']}")
    if not given and (init_meta.get("step") != 0 or init_meta.get("seed") != meta.get("seed")):
        raise CheckpointError(f"{path} is not this run's initialisation (step {init_meta.get('step')}, seed "
                              f"{init_meta.get('seed')}); pass init=PATH to name it")
    return payload["model"]


def _dataset(data: str | data_mod.Dataset | None, meta: Mapping[str, Any],
             data_root: str | Path | None) -> data_mod.Dataset:
    """``data`` (default: the checkpoint's training data spec), checked to fit the model."""
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data or meta["data_spec"], root=data_root)
    if dataset.num_classes != meta["num_classes"]:
        raise ShapeError(f"the model has {meta['num_classes']} classes but {dataset.spec} has "
                        f"{dataset.num_classes}; give the data it was trained on ({meta['data_spec']})")
    if tuple(dataset.input_shape) != tuple(meta["input_shape"]):
        raise ShapeError(f"the model takes inputs {tuple(meta['input_shape'])} but {dataset.spec} gives "
                         f"{tuple(dataset.input_shape)}; add size=/channels= modifiers")
    return dataset


def _test_split(dataset: data_mod.Dataset, max_samples: int | None, seed: int) -> tuple[data_mod.Split, int]:
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1 (or None for the whole test split), got {max_samples}")
    split, n = data_mod.sample_split(dataset.test, max_samples, seed)
    if n == 0:
        raise InsufficientDataError(f"{dataset.spec} has an empty test split; nothing to measure accuracy on")
    return split, n


@torch.inference_mode()
def _accuracy(model: nn.Module, split: data_mod.Split, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``split``: the plain evaluation loop."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in split.batches(batch_size, device=device):
        correct += (model(x).argmax(1) == y).sum()
    return int(correct) / len(split)


# ----------------------------------------------------------------------------- weight movement
def weight_movement(run_dir: str | Path, points: Points = "blocks", *, include_head: bool = True) -> pd.DataFrame:
    """How far each layer's parameters have moved, at every checkpoint of a training run.

    For layer ``l`` with parameters ``W`` (all of its weights, biases and BatchNorm scales and
    shifts, concatenated; buffers excluded): ``absolute = ‖W_t − W_0‖_F``,
    ``relative = absolute / ‖W_0‖_F`` (step 0 is the initialisation), and from the previous
    checkpoint ``step_absolute = ‖W_t − W_prev‖_F``, ``step_relative = step_absolute / ‖W_prev‖_F``
    (NaN at step 0). In float64. Rows: one per checkpoint and layer (the head as layer L + 1
    when ``include_head``; parameters in no layer as point ``other``, no layer index).
    Columns: step, epoch, point, layer, parameters, relative, absolute, step_relative, step_absolute.
    """
    paths = list(checkpoints(run_dir, required=True).values())
    run = read_run(run_dir)
    first = read_checkpoint(paths[0])
    if first["meta"].get("step") != 0:
        raise CheckpointError(f"{paths[0]} is not the initialisation (step {first['meta'].get('step')}); "
                              "train with early checkpoints (the default) so that step 0 is saved")
    model, meta = load_model(paths[0])
    layers = layer_map(model, points, meta["input_shape"])
    groups = [(p, layers.index(p), layers.names([p], buffers=False)) for p in layers.points]
    if include_head:
        groups.append((HEAD, layers.index(HEAD), layers.names([HEAD], buffers=False)))
    groups.append((OTHER, None, layers.names([OTHER], buffers=False)))
    groups = [g for g in groups if g[2]]
    wanted = [n for _, _, names in groups for n in names]
    init = _float64(first["model"], wanted, paths[0])
    previous, rows = init, []
    for path in paths:
        payload = first if path == paths[0] else read_checkpoint(path)
        if payload["meta"]["model_spec"] != meta["model_spec"]:
            raise CheckpointError(f"{path} holds {payload['meta']['model_spec']}, not {meta['model_spec']}")
        theirs = payload["meta"]
        if why := foreign_checkpoint(run, path, theirs["model_spec"], theirs.get("data_spec"), theirs.get("seed")):
            raise CheckpointError(f"{why}; move it out of {Path(run_dir) / 'checkpoints'}")
        now = _float64(payload["model"], wanted, path)
        for point, index, names in groups:
            rows.append({"step": payload["meta"].get("step"), "epoch": payload["meta"].get("epoch", math.nan),
                         "point": point, "layer": index, "parameters": sum(now[n].numel() for n in names),
                         **_distances(now, init, previous, names, first_row=path == paths[0])})
        previous = now
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    table.attrs = {"kind": "movement", "run_dir": str(run_dir), "model_spec": meta["model_spec"],
                   "data_spec": meta["data_spec"], "points": _points_label(points), "include_head": include_head,
                   "checkpoints": len(paths), "norm": "Frobenius norm over all of a layer's parameters, float64"}
    return table


def _float64(state: Mapping[str, Tensor], names: list[str], path: Path) -> dict[str, Tensor]:
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(f"{path} lacks parameters {missing[:3]}; is it from the same run?")
    return {n: state[n].detach().to("cpu", torch.float64) for n in names}


def _distances(now: Mapping[str, Tensor], init: Mapping[str, Tensor], previous: Mapping[str, Tensor],
               names: list[str], first_row: bool) -> dict[str, float]:
    def norm(parts: Iterable[Tensor]) -> float:
        return math.sqrt(sum(float(t.square().sum()) for t in parts))

    absolute = norm(now[n] - init[n] for n in names)
    step_absolute = math.nan if first_row else norm(now[n] - previous[n] for n in names)
    init_norm, previous_norm = norm(init[n] for n in names), norm(previous[n] for n in names)
    return {"relative": absolute / init_norm if init_norm > 0 else math.nan, "absolute": absolute,
            "step_relative": step_absolute / previous_norm if previous_norm > 0 else math.nan,
            "step_absolute": step_absolute}


def _points_label(points: Points) -> str | list[str]:
    return points if isinstance(points, str) else list(points)


# ----------------------------------------------------------------------------- resets
def reset_model(model: nn.Module, init_state: Mapping[str, Tensor], names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` whose state entries ``names`` hold their ``init_state`` values
    (every other entry keeps ``model``'s). ``model`` itself is not changed."""
    state = dict(model.state_dict())
    for name in names:
        if name not in init_state:
            raise CheckpointError(f"the initial state has no entry {name!r}; is it from the same model?")
        state[name] = init_state[name]
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(state)
    return fresh


def reset_layers(source: str | Path, data: str | data_mod.Dataset | None = None,  # noqa: PLR0913 (a public facade: readable keywords)
                 from_layers: Sequence[int] | None = None, checkpoint: int | str | Path | None = None, *,
                 direction: str = "k..L", include_head: bool = True, include_buffers: bool = True,
                 points: Points = "blocks", init: str | Path | None = None, max_samples: int | None = None,
                 seed: int = 0, batch_size: int = 512, device: str | torch.device = "auto",
                 data_root: str | Path | None = None) -> pd.DataFrame:
    """Test accuracy after resetting layers to their values at initialisation.

    ``source`` is a training run directory (``checkpoint``: a step or a file in it; default
    the last) or a checkpoint file (its folder's ``step-0000000.pt`` is the initialisation;
    ``init`` names another). For each ``k`` of ``from_layers`` (default 1..L), ``direction``
    ``"k..L"`` resets layers k..L, and the head too when ``include_head`` (k = L + 1 then resets
    the head alone); ``"1..k"`` resets layers 1..k (k = 0: nothing), never the head; ``"both"``
    runs each in turn. Reset means
    every state entry of the layer, BatchNorm running statistics included unless
    ``include_buffers=False``. Accuracy is the model's own top-1 on ``data``'s test split
    (default: the data it was trained on; ``max_samples`` draws a seeded subset).
    Columns: k, point, reset, head, layers_reset, accuracy, untouched_accuracy, init_accuracy.
    """
    if direction not in (*DIRECTIONS, "both"):
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)} or both, got {direction!r}")
    trained_path, init_path, init_given = _checkpoint_paths(source, checkpoint, init)
    dev = resolve_device(device)
    model, meta = load_model(trained_path, dev)
    init_state = _initial_state(init_path, meta, init_given)
    dataset = _dataset(data, meta, data_root)
    split, n = _test_split(dataset, max_samples, seed)
    layers = layer_map(model, points, meta["input_shape"])
    ks = list(from_layers) if from_layers is not None else list(range(1, layers.depth + 1))
    plan = [(way, k, _reset_selection(layers, k, way, include_head))
            for way in (DIRECTIONS if direction == "both" else (direction,)) for k in ks]
    if not plan:
        raise ConfigError("from_layers is empty: give at least one k (or None for every layer)")
    untouched = _accuracy(model, split, batch_size, dev)
    init_accuracy = _accuracy(reset_model(model, init_state, model.state_dict().keys()), split, batch_size, dev)
    rows = []
    for way, k, chosen in plan:
        net = reset_model(model, init_state, layers.names(chosen, buffers=include_buffers))
        rows.append({"k": k, "point": _point_at(layers, k), "reset": way, "head": HEAD in chosen,
                     "layers_reset": _describe(layers, chosen), "accuracy": _accuracy(net, split, batch_size, dev),
                     "untouched_accuracy": untouched, "init_accuracy": init_accuracy})
    table = pd.DataFrame(rows, columns=["k", "point", "reset", "head", "layers_reset", "accuracy",
                                        "untouched_accuracy", "init_accuracy"])
    table.attrs = {"kind": "reset", "checkpoint": str(trained_path), "init_checkpoint": str(init_path),
                   "model_spec": meta["model_spec"], "step": meta.get("step"), "epoch": meta.get("epoch"),
                   "data_spec": dataset.spec, "num_classes": dataset.num_classes, "samples": n,
                   "max_samples": max_samples, "seed": seed, "points": _points_label(points),
                   "depth": layers.depth, "direction": direction, "include_head": include_head,
                   "include_buffers": include_buffers, "unassigned": list(layers.owned[OTHER])}
    return table


def _reset_selection(layers: LayerMap, k: int, direction: str, include_head: bool) -> list[str]:
    depth = layers.depth
    if direction == "k..L":
        if not 1 <= k <= depth + 1:
            raise ConfigError(f"k={k} is out of range for resetting k..L: use 1..{depth + 1} (L + 1 = the head alone)")
        return list(layers.points[k - 1:]) + ([HEAD] if include_head and layers.owned[HEAD] else [])
    if not 0 <= k <= depth:
        raise ConfigError(f"k={k} is out of range for resetting 1..k: use 0..{depth} (0 = nothing)")
    return list(layers.points[:k])


def _point_at(layers: LayerMap, k: int) -> str:
    if 1 <= k <= layers.depth:
        return layers.points[k - 1]
    return HEAD if k == layers.depth + 1 else ""


def _describe(layers: LayerMap, chosen: Sequence[str]) -> str:
    indices = [layers.index(c) for c in chosen if c != HEAD]
    text = f"{indices[0]}-{indices[-1]}" if indices else ""
    if HEAD in chosen:
        text = f"{text}+head" if text else "head"
    return text or "none"


# ----------------------------------------------------------------------------- block deletion
class SkipOnly(nn.Module):
    """A residual block with its residual branch deleted: ``relu(shortcut(x))``, which is
    ``relu(x)`` (= ``x`` after a ReLU block) for an identity shortcut."""

    def __init__(self, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x))


@dataclass(frozen=True)
class ResidualBlock:
    """A residual block of a model: its module name, whether its shortcut is a projection (a
    shortcut with parameters, such as 1x1 conv + BN; a parameter-free one, such as
    cifar-resnet's subsample-and-zero-pad, is not), and its layer index in the model's
    ``blocks`` probe points (or its 1-based position among the residual blocks when the model
    has no ``blocks`` set)."""

    name: str
    projection: bool
    layer: int


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The model's residual blocks (torchvision ``BasicBlock`` / ``Bottleneck``: the zoo's
    ``resnet*``, ``cifar-resnet-*`` and ``tv:resnet*``), in order. Raises :class:`ConfigError` when there are none."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]
    if not found:
        raise ConfigError(f"{getattr(model, 'spec', type(model).__name__)} has no residual blocks; block deletion "
                          "needs a residual network (resnet18, resnet34, tv:resnet50, ...)")
    sets = getattr(model, "probe_sets", None) or {}
    position = {n: i for i, n in enumerate(sets.get("blocks", []), start=1)}
    if not all(n in position for n, _ in found):
        position = {n: i for i, (n, _) in enumerate(found, start=1)}
    return [ResidualBlock(n, _has_parameters(m.downsample), position[n]) for n, m in found]


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def without_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` in which each named residual block is replaced by :class:`SkipOnly`
    (its shortcut alone, projection kept). ``model`` itself is not changed."""
    fresh = copy.deepcopy(model)
    for name in names:
        block = fresh.get_submodule(name)
        if not isinstance(block, (BasicBlock, Bottleneck)):
            raise ConfigError(f"{name} is not a residual block")
        parent, _, child = name.rpartition(".")
        setattr(fresh.get_submodule(parent) if parent else fresh, child, SkipOnly(block.downsample))
    return fresh


def delete_blocks(checkpoint: str | Path, data: str | data_mod.Dataset | None = None,  # noqa: PLR0913 (a public facade: readable keywords)
                  blocks: Sequence[str | int] | None = None, *,
                  ranges: Sequence[tuple[str | int, str | int] | str] | None = None, projection: str = "skip",
                  max_samples: int | None = None, seed: int = 0, batch_size: int = 512,
                  device: str | torch.device = "auto", data_root: str | Path | None = None) -> pd.DataFrame:
    """Test accuracy of a residual network with residual blocks deleted (Nguyen et al. 2021).

    Deleting a block replaces its output ``relu(branch(x) + shortcut(x))`` by
    ``relu(shortcut(x))``: the residual branch is zeroed. ``projection="skip"`` leaves blocks
    whose shortcut is a projection (1x1 conv + BN, where the stage changes width or stride)
    alone; ``"keep"`` deletes their branch and keeps the projection. Parameter-free shortcuts
    (cifar-resnet's subsample-and-zero-pad) are always kept, their blocks deletable. ``blocks`` are deleted one
    at a time (names such as ``"layer2.1"`` or layer indices of the ``blocks`` probe points, as
    in the analysis table; default every deletable block); each ``(first, last)`` of ``ranges``
    (or text: ``"6-9"``, ``"layer2.0:layer3.1"``) deletes all deletable blocks between them
    together (non-residual points inside are ignored, skipped projection blocks are listed in
    ``kept``). ``checkpoint`` is a file or a
    run directory (its last checkpoint). Non-residual models raise :class:`ConfigError`.
    Columns: deleted (a block, or a range's first..last residual block), kind (block or range),
    first_layer, last_layer, blocks (how many were deleted), projections (how many of those kept
    their projection), kept (the range's projection blocks left alone), accuracy,
    untouched_accuracy, drop (untouched − accuracy).
    """
    if projection not in PROJECTION_POLICIES:
        raise ConfigError(f"projection must be 'skip' or 'keep', got {projection!r}")
    path = list(checkpoints(checkpoint, required=True).values())[-1] if Path(checkpoint).is_dir() else Path(checkpoint)
    dev = resolve_device(device)
    model, meta = load_model(path, dev)
    found = residual_blocks(model)
    dataset = _dataset(data, meta, data_root)
    split, n = _test_split(dataset, max_samples, seed)
    deletable = [b for b in found if projection == "keep" or not b.projection]
    singles = [_select_block(found, b, projection) for b in blocks] if blocks is not None else deletable
    spans = [_select_range(found, pair, projection) for pair in (ranges or [])]
    if not singles and not spans:
        raise ConfigError("nothing to delete: give blocks or ranges (blocks=None: every deletable block)")
    untouched = _accuracy(model, split, batch_size, dev)
    rows = []
    for kind, chosen, kept in [("block", [b], []) for b in singles] + [("range", c, k) for c, k in spans]:
        accuracy = _accuracy(without_blocks(model, [b.name for b in chosen]), split, batch_size, dev)
        span = sorted([*chosen, *kept], key=lambda b: b.layer)  # the range's residual blocks, kept ones too
        label = span[0].name if kind == "block" else f"{span[0].name}..{span[-1].name}"
        rows.append({"deleted": label, "kind": kind, "first_layer": span[0].layer, "last_layer": span[-1].layer,
                     "blocks": len(chosen), "projections": sum(b.projection for b in chosen),
                     "kept": " ".join(b.name for b in kept), "accuracy": accuracy,
                     "untouched_accuracy": untouched, "drop": untouched - accuracy})
    table = pd.DataFrame(rows, columns=["deleted", "kind", "first_layer", "last_layer", "blocks", "projections",
                                        "kept", "accuracy", "untouched_accuracy", "drop"])
    table.attrs = {"kind": "deletion", "checkpoint": str(path), "model_spec": meta["model_spec"],
                   "step": meta.get("step"), "epoch": meta.get("epoch"), "data_spec": dataset.spec,
                   "num_classes": dataset.num_classes, "samples": n, "max_samples": max_samples, "seed": seed,
                   "projection": projection,
                   "residual_blocks": [{"name": b.name, "layer": b.layer, "projection": b.projection} for b in found]}
    return table


def _as_selector(selector: str | int) -> str | int:
    """A layer index (an int, or digits) or a block name."""
    if isinstance(selector, str):
        selector = selector.strip()
        return int(selector) if selector.isdigit() else selector
    return selector


def _find_block(found: Sequence[ResidualBlock], selector: str | int) -> ResidualBlock:
    selector = _as_selector(selector)
    match = [b for b in found if (b.layer == selector if isinstance(selector, int) else b.name == selector)]
    if not match:
        known = ", ".join(f"{b.layer}={b.name}" for b in found)
        raise ConfigError(f"{selector!r} is not a residual block; give a name or a layer index ({known})")
    return match[0]


def _select_block(found: Sequence[ResidualBlock], selector: str | int, projection: str) -> ResidualBlock:
    block = _find_block(found, selector)
    if block.projection and projection == "skip":
        raise ConfigError(f"{block.name} has a projection shortcut and projection='skip' leaves it alone; "
                          "pass projection='keep' (--projection keep) to delete its branch and keep the projection")
    return block


def _select_range(found: Sequence[ResidualBlock], pair: tuple[str | int, str | int] | str,
                  projection: str) -> tuple[list[ResidualBlock], list[ResidualBlock]]:
    """(blocks to delete, projection blocks kept) for a (first, last) range of names or layer indices."""
    ends = [_as_selector(e) for e in (pair.split(":" if ":" in pair else "-") if isinstance(pair, str) else pair)]
    if len(ends) != 2 or "" in ends:
        raise ConfigError(f"a range is (first, last), 'FIRST-LAST' (layer indices) or 'NAME:NAME', got {pair!r}")
    lo, hi = (e if isinstance(e, int) else _find_block(found, e).layer for e in ends)
    if lo > hi:
        raise ConfigError(f"range {ends[0]}..{ends[1]} runs backwards; give (first, last)")
    inside = [b for b in found if lo <= b.layer <= hi]
    chosen = [b for b in inside if projection == "keep" or not b.projection]
    if not chosen:
        raise ConfigError(f"range {ends[0]}..{ends[1]} holds no deletable residual block")
    return chosen, [b for b in inside if b not in chosen]


# ----------------------------------------------------------------------------- the result
@dataclass
class InterventionResult(ExperimentResult):
    """One intervention's table and its settings.

    ``intervention`` names the table: ``movement`` (:func:`weight_movement`, saved as
    ``movement.csv``), ``resets`` (:func:`reset_layers`, ``reset.csv``) or ``deletions``
    (:func:`delete_blocks`, ``deletion.csv``). ``config`` is the table's ``attrs`` with
    ``intervention`` in place of their ``kind``; its figure, ``interventions.png``/``.svg``, is
    the table's panel (:mod:`tunnelscope.report.interventions`). A directory holds one intervention."""

    kind: ClassVar[str] = "interventions"
    table_files: ClassVar[dict[str, str]] = TABLE_FILES

    intervention: str
    table: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.intervention not in TABLE_FILES:
            raise ConfigError(f"unknown intervention {self.intervention!r}; one of {', '.join(TABLE_FILES)}")

    @classmethod
    def of(cls, table: pd.DataFrame) -> InterventionResult:
        """The result of a table made by :func:`weight_movement`, :func:`reset_layers` or :func:`delete_blocks`."""
        kind = table.attrs.get("kind")
        if kind not in TABLE_NAMES:
            raise ConfigError("an intervention result takes a table made by weight_movement, reset_layers or "
                              "delete_blocks")
        name = TABLE_NAMES[kind]
        return cls(name, table, {INTERVENTION_KEY: name, **{str(k): v for k, v in table.attrs.items() if k != "kind"}})

    def tables(self) -> dict[str, pd.DataFrame]:
        """The one table, by its name (``intervention``)."""
        return {self.intervention: self.table}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> InterventionResult:
        """The result whose table and config were saved; the table's ``attrs`` are rebuilt from ``config``."""
        name = config.get(INTERVENTION_KEY)
        if name not in TABLE_FILES or name not in tables:
            raise RunDirectoryError(f"an interventions directory whose config names intervention {name!r} lacks "
                                    f"its table ({TABLE_FILES.get(str(name), 'unknown')}); run it again")
        table = tables[name].copy()
        if name == "movement":
            table["layer"] = table["layer"].astype("Int64")
        for column in {"resets": ["point"], "deletions": ["kept"]}.get(name, []):
            table[column] = table[column].astype(object).where(table[column].notna(), "")  # empty text reads as NaN
        kind = {v: k for k, v in TABLE_NAMES.items()}[name]
        table.attrs = {"kind": kind, **{k: v for k, v in config.items() if k != INTERVENTION_KEY}}
        return cls(name, table, config)

    def save(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the table's CSV, its figure (``.png``/``.svg``) and, last, ``config.json`` into
        ``out`` (see :meth:`ExperimentResult.save`); with ``overwrite``, another intervention's
        files there (and an older version's ``NAME.json`` and ``NAME.png``/``.svg``) are removed."""
        paths = super().save(out, overwrite)
        folder = Path(out)
        for name, file in TABLE_FILES.items():
            if name != self.intervention:
                (folder / file).unlink(missing_ok=True)
        for stem in TABLE_NAMES:
            for suffix in ("json", "png", "svg"):
                (folder / f"{stem}.{suffix}").unlink(missing_ok=True)
        return paths


def save_intervention(table: pd.DataFrame, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Save a table made by :func:`weight_movement`, :func:`reset_layers` or :func:`delete_blocks`
    as an :class:`InterventionResult` into ``out``; return the written paths."""
    return InterventionResult.of(table).save(out, overwrite)


__all__ = ["HEAD", "OTHER", "InterventionResult", "LayerMap", "ResidualBlock", "SkipOnly", "delete_blocks",
           "layer_map", "reset_layers", "reset_model", "residual_blocks", "save_intervention", "weight_movement",
           "without_blocks"]
