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
:func:`save_intervention` writes one as CSV, JSON and figure, :func:`interventions_figure` draws them.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .. import data as data_mod
from ..checkpoint import read_checkpoint
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, InsufficientDataError, RunDirectoryError, ShapeError, SpecError
from ..io import atomic_write, write_json, write_text
from ..models.probe_points import hooked_pass, order_by_execution, probe_points
from ..models.resolve import load_model
from ..rundir import CKPT_DIR, checkpoint_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HEAD, OTHER = "head", "other"
DIRECTIONS = ("k..L", "1..k")  # and "both": each in turn
PROJECTION_POLICIES = ("skip", "keep")
STEP_FILE = re.compile(r"step-(\d+)\.pt")
Points = str | Sequence[str]


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
def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A training run's checkpoints ``checkpoints/step-NNNNNNN.pt``, ordered by step."""
    folder = Path(run_dir) / CKPT_DIR
    if not Path(run_dir).is_dir():
        raise RunDirectoryError(f"run directory {run_dir} does not exist or is not a folder")
    found = [(int(m[1]), p) for p in folder.glob("step-*.pt") if (m := STEP_FILE.fullmatch(p.name))]
    if not found:
        raise RunDirectoryError(f"no checkpoints in {folder}; give the --out folder of `tunnelscope train`")
    return [p for _, p in sorted(found)]


def _checkpoint_paths(source: str | Path, checkpoint: int | str | Path | None,
                      init: str | Path | None) -> tuple[Path, Path, bool]:
    """(checkpoint to intervene on, initialisation checkpoint, whether the latter was given)."""
    source = Path(source)
    if source.is_dir():
        listed = run_checkpoints(source)
        if checkpoint is None:
            chosen = listed[-1]
        elif isinstance(checkpoint, int):
            by_step = {int(STEP_FILE.fullmatch(p.name)[1]): p for p in listed}  # type: ignore[index]
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
        raise SpecError(f"the model has {meta['num_classes']} classes but {dataset.spec} has "
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
    paths = run_checkpoints(run_dir)
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


def reset_layers(source: str | Path, data: str | data_mod.Dataset | None = None,
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


def delete_blocks(checkpoint: str | Path, data: str | data_mod.Dataset | None = None,
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
    path = run_checkpoints(checkpoint)[-1] if Path(checkpoint).is_dir() else Path(checkpoint)
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


# ----------------------------------------------------------------------------- figure and files
def interventions_figure(movement: pd.DataFrame | None = None, resets: pd.DataFrame | None = None,
                         deletions: pd.DataFrame | None = None) -> Figure:
    """One panel per table given: weight movement (each layer's relative distance from
    initialisation against training step), accuracy against k for resets, accuracy per deletion."""
    from matplotlib.figure import Figure

    panels = [(draw, t) for draw, t in ((_movement_panel, movement), (_reset_panel, resets),
                                        (_deletion_panel, deletions)) if t is not None]
    if not panels:
        raise ConfigError("interventions_figure needs at least one table (movement, resets or deletions)")
    fig = Figure(figsize=(5.6 * len(panels), 4.4), layout="constrained")
    for ax, (draw, table) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        draw(fig, ax, table)
    return fig


def _movement_panel(fig: Figure, ax: Axes, table: pd.DataFrame) -> None:
    from matplotlib import colormaps

    rows = table[table.point != OTHER]
    layers = rows[["layer", "point"]].drop_duplicates().sort_values("layer")
    colours = colormaps["viridis"].resampled(max(2, len(layers)))
    for i, (layer, point) in enumerate(layers.itertuples(index=False)):
        line = rows[rows.point == point].sort_values("step")
        ax.plot(line.step, line.relative, marker=".", color=colours(i), linestyle="--" if point == HEAD else "-",
                label=f"{layer} {point}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step (checkpoints; symlog)")
    ax.set_ylabel("‖W_t − W_0‖ / ‖W_0‖")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 10 else 1, title="layer", title_fontsize=7)
    ax.set_title(f"weight movement: {table.attrs.get('model_spec', '')}")


def _reset_panel(fig: Figure, ax: Axes, table: pd.DataFrame) -> None:
    from matplotlib.ticker import MaxNLocator

    for direction, part in table.groupby("reset", sort=False):
        ax.plot(part.k, part.accuracy, marker="o", label=f"reset {direction}")
    ax.axhline(table.untouched_accuracy.iloc[0], color="black", linestyle="--", label="trained")
    ax.axhline(table.init_accuracy.iloc[0], color="grey", linestyle=":", label="initialisation")
    classes = table.attrs.get("num_classes")
    if classes:
        ax.axhline(1 / classes, color="grey", linewidth=0.8, label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("k (layers k..L or 1..k reset; L + 1 = the head alone)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("resetting layers to initialisation")


def _deletion_panel(fig: Figure, ax: Axes, table: pd.DataFrame) -> None:
    colours = ["#4c72b0" if kind == "block" else "#dd8452" for kind in table.kind]
    ax.bar(range(len(table)), table.accuracy, color=colours)
    labels = [f"{first}-{last} {deleted}" if first != last else f"{first} {deleted}"
              for first, last, deleted in zip(table.first_layer, table.last_layer, table.deleted)]
    ax.set_xticks(range(len(table)), labels, rotation=60, ha="right", fontsize=7)
    if len(table):
        ax.axhline(table.untouched_accuracy.iloc[0], color="black", linestyle="--", label="no deletion")
    classes = table.attrs.get("num_classes")
    if classes:
        ax.axhline(1 / classes, color="grey", linewidth=0.8, label="chance")
    if len(table) or classes:
        ax.legend(fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("residual blocks deleted (orange: ranges)")


def save_intervention(table: pd.DataFrame, out: str | Path, name: str | None = None) -> list[Path]:
    """Write ``NAME.csv`` (the table), ``NAME.json`` (its ``attrs``), ``NAME.png`` and ``NAME.svg``
    (its figure) into ``out``, each atomically; ``name`` defaults to the table's kind."""
    kind = table.attrs.get("kind")
    if kind not in ("movement", "reset", "deletion"):
        raise ConfigError("save_intervention takes a table made by weight_movement, reset_layers or delete_blocks")
    out, name = Path(out), name or str(kind)
    written = [write_text(out / f"{name}.csv", table.to_csv(index=False)),
               write_json(out / f"{name}.json", table.attrs)]
    fig = interventions_figure(**{{"movement": "movement", "reset": "resets", "deletion": "deletions"}[kind]: table})
    for fmt in ("png", "svg"):
        def draw(handle: IO[bytes], fmt: str = fmt) -> None:
            fig.savefig(handle, format=fmt, dpi=150)

        written.append(atomic_write(out / f"{name}.{fmt}", draw))
    return written


__all__ = ["HEAD", "OTHER", "LayerMap", "ResidualBlock", "SkipOnly", "delete_blocks", "interventions_figure",
           "layer_map", "reset_layers", "reset_model", "residual_blocks", "run_checkpoints", "save_intervention",
           "weight_movement", "without_blocks"]
