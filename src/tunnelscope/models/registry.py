"""``build(spec, num_classes, input_shape)``: a model spec string becomes a zoo model."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, ShapeError, SpecError, TunnelscopeError
from ..specs import parse_spec
from .base import ZooModel, count_parameters
from .cifar_resnet import CifarResNet, blocks_per_stage
from .convnet import ConvNet
from .hub import (
    HF_PATTERN,
    PRETRAINED,
    TIMM_PATTERN,
    build_hf,
    build_hf_pretrained,
    build_timm,
    build_timm_pretrained,
    check_hf,
    check_timm,
)
from .init import seeded
from .mlp import MLP, LinearMLP
from .probe_points import order_by_execution, readable_points
from .resnet import STAGES, ResNet
from .tv import TorchvisionModel
from .vgg import CONFIGS, VGG, VGGM_BASE
from .vit import DEFAULT_DEPTH, DEFAULT_PATCH, VisionTransformer

MAX_WIDTH = 1 << 16
MAX_DEPTH = 1000
MAX_CIFAR_RESNET_WIDTH = 64


@dataclass(frozen=True)
class Family:
    """One family of model specs: its pattern, an example, what it is and how to build it."""

    name: str
    pattern: str
    example: str
    description: str
    image_only: bool
    build: Callable[[str, re.Match, int, tuple[int, ...]], ZooModel]
    validate: Callable[[str, re.Match], None] | None = None  # checks depth, width, ... before building
    pretrained: Callable[[str, re.Match, int, tuple[int, ...]], ZooModel] | None = None  # weights="pretrained"
    # (kind, depth, width) a spec of the family names: MLP/CNN/ViT, the depth in the spec, hidden units
    # (MLP), first-stage channels (CNN) or embedding width (ViT); None where the spec does not say
    traits: Callable[[dict[str, Any]], tuple[str | None, int | None, float | None]] = lambda groups: ("CNN", None, None)
    recipe: str | None = None  # its default training recipe (None: adamw for a ViT, sgd otherwise)
    # the example's ("blocks", "conv") probe-point counts for 10 classes and 3x32x32 inputs, declared so that
    # `tunnelscope models` lists them without building (and importing timm, transformers); a test builds each
    example_points: tuple[int | None, int | None] = (None, None)


def _multiplier(text: str | None, spec: str) -> float:
    if text is None:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"bad width multiplier in {spec!r}: write e.g. -w0.5") from None
    if not 0 < value <= 64:
        raise SpecError(f"width multiplier in {spec!r} must be in (0, 64], got {value}")
    return value


def _depth_width(spec: str, depth: int, width: int, min_depth: int, what: str) -> None:
    if not min_depth <= depth <= MAX_DEPTH:
        raise SpecError(f"impossible depth {depth} in {spec!r}: {what} depth must be in {min_depth}..{MAX_DEPTH}")
    if not 1 <= width <= MAX_WIDTH:
        raise SpecError(f"impossible width {width} in {spec!r}: width must be in 1..{MAX_WIDTH}")


def _check_mlp(spec: str, m: re.Match) -> None:
    _depth_width(spec, int(m["depth"]), int(m["width"]), 2, "an MLP's (Linear layers, classifier included)")


def _check_convnet(spec: str, m: re.Match) -> None:
    _depth_width(spec, int(m["depth"]), int(m["width"]), 0, "CONV-L-H's L")


def _check_multiplier(spec: str, m: re.Match) -> None:
    _multiplier(m["w"], spec)


def _check_tv(spec: str, m: re.Match) -> None:
    from .tv import torchvision_names

    names = torchvision_names()
    if m["name"] not in names:
        raise SpecError(f"unknown torchvision model {m['name']!r}; e.g. {', '.join(names[:8])}, ... "
                        "(see `tunnelscope models --torchvision`)")


def _check_cifar_resnet(spec: str, m: re.Match) -> None:
    depth, width = int(m["depth"]), int(m["width"] or 1)
    if blocks_per_stage(depth) is None or depth > MAX_DEPTH:
        below = max(8, depth - (depth - 2) % 6)
        hint = f"e.g. {below} or {below + 6}" if depth > 8 else "8 is the smallest"
        raise SpecError(f"depth {depth} in {spec!r} is not a CIFAR ResNet depth: it must be 6n+2 "
                        f"(n blocks per stage, n >= 1) and at most {MAX_DEPTH}, {hint}")
    if not 1 <= width <= MAX_CIFAR_RESNET_WIDTH:
        raise SpecError(f"width multiplier {width} in {spec!r} must be in 1..{MAX_CIFAR_RESNET_WIDTH}, "
                        "e.g. cifar-resnet-38x2")


def _check_vit(spec: str, m: re.Match) -> None:
    patch, depth = int(m["patch"] or DEFAULT_PATCH), int(m["depth"] or DEFAULT_DEPTH)
    if patch < 1:
        raise SpecError(f"patch size {patch} in {spec!r} must be >= 1, e.g. vit-t-p4")
    if not 1 <= depth <= MAX_DEPTH:
        raise SpecError(f"impossible depth {depth} in {spec!r}: a ViT's depth (transformer blocks) must be in "
                        f"1..{MAX_DEPTH}, e.g. vit-t-d6")


def _mlp(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return MLP(spec, int(m["depth"]), int(m["width"]), num_classes, shape)


def _linear_mlp(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return LinearMLP(spec, int(m["depth"]), int(m["width"]), num_classes, shape)


def _vgg(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return VGG(spec, CONFIGS[int(m["depth"])], num_classes, shape, width=_multiplier(m["w"], spec))


def _vggm(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return VGG(spec, CONFIGS[VGGM_BASE[int(m["depth"])]], num_classes, shape,
               width=_multiplier(m["w"], spec), adaptive_pool=True, skip_pools=2 if m["nopool"] else 0)


def _resnet(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return ResNet(spec, int(m["depth"]), num_classes, shape, width=_multiplier(m["w"], spec),
                  imagenet_stem=bool(m["imagenet"]))


def _cifar_resnet(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return CifarResNet(spec, int(m["depth"]), num_classes, shape, width=int(m["width"] or 1))


def _vit(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return VisionTransformer(spec, num_classes, shape, patch=int(m["patch"] or DEFAULT_PATCH),
                             depth=int(m["depth"] or DEFAULT_DEPTH))


def _convnet(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return ConvNet(spec, int(m["depth"]), int(m["width"]), num_classes, shape)


def _tv(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    return TorchvisionModel(spec, m["name"], num_classes, shape)


_W = r"(?:-w(?P<w>[0-9.]+))?"
def _depth(groups: dict[str, Any]) -> int | None:
    return int(groups["depth"]) if groups.get("depth") else None


def _mlp_traits(groups: dict[str, Any]) -> tuple[str, int | None, float]:
    return "MLP", _depth(groups), float(groups["width"])


def _channels(first_stage: int) -> Callable[[dict[str, Any]], tuple[str, int | None, float]]:
    """CNN traits whose width is ``first_stage`` channels times the spec's ``-wM`` multiplier."""
    return lambda groups: ("CNN", _depth(groups), float(round(first_stage * float(groups.get("w") or 1.0))))


def _hub_traits(family: str) -> Callable[[dict[str, Any]], tuple[str, int | None, float | None]]:
    def traits(groups: dict[str, Any]) -> tuple[str, int | None, float | None]:
        from .hub import spec_kind

        return spec_kind(family, groups), _depth(groups), float(groups["width"]) if groups.get("width") else None
    return traits


_TV_VIT_NAMES = ("vit_", "swin_", "maxvit_")


FAMILIES = [
    Family("mlp", r"mlp-(?P<depth>\d+)x(?P<width>\d+)", "mlp-12x256",
           "MLP, depth Linear layers (classifier included), hidden blocks Linear-BN-ReLU", False, _mlp, _check_mlp,
           traits=_mlp_traits, example_points=(11, 11)),
    Family("linear-mlp", r"linear-mlp-(?P<depth>\d+)x(?P<width>\d+)", "linear-mlp-6x256",
           "Badger's linear MLP: depth Linear layers (classifier included), no nonlinearity, no BN",
           False, _linear_mlp, _check_mlp, traits=_mlp_traits, recipe="adamw",  # SGD at lr 0.1 diverges on it
           example_points=(6, 5)),
    Family("vgg", rf"vgg(?P<depth>{'|'.join(map(str, CONFIGS))}){_W}", "vgg19-w0.5",
           "VGG-11/13/16/19 with BN for 28/32 px, width multiplier -wM", True, _vgg, _check_multiplier,
           traits=_channels(64), example_points=(16, 16)),
    Family("vggm", rf"vggm(?P<depth>11|17)(?P<nopool>-nopool)?{_W}", "vggm17-nopool",
           "Harun et al.'s VGGm-11/17: VGG-13/19 convs, BN, adaptive avg pool, one FC", True, _vggm,
           _check_multiplier, traits=_channels(64), example_points=(16, 16)),
    Family("resnet", rf"resnet(?P<depth>{'|'.join(map(str, STAGES))})(?P<imagenet>-imagenet)?{_W}", "resnet18",
           "ResNet-18/34, CIFAR stem (or -imagenet stem), width multiplier -wM", True, _resnet, _check_multiplier,
           traits=_channels(64), example_points=(9, 17)),
    Family("cifar-resnet", r"cifar-resnet-(?P<depth>\d+)(?:x(?P<width>\d+))?", "cifar-resnet-38x2",
           "He et al.'s CIFAR ResNet of depth 6n+2, widths 16/32/64 times K (Nguyen et al.)", True,
           _cifar_resnet, _check_cifar_resnet,
           traits=lambda g: ("CNN", _depth(g), float(16 * int(g.get("width") or 1))), example_points=(19, 37)),
    Family("vit", r"vit-t(?:-p(?P<patch>\d+))?(?:-d(?P<depth>\d+))?", "vit-t",
           "ViT-T (Harun et al.): width 192, 3 heads, 12 pre-norm blocks, patch 4 (-pP), depth -dL",
           True, _vit, _check_vit, traits=lambda g: ("ViT", _depth(g) or DEFAULT_DEPTH, 192.0), recipe="adamw",
           example_points=(12, 0)),
    Family("convnet", r"convnet-(?P<depth>\d+)x(?P<width>\d+)", "convnet-8x64",
           "Galanti et al.'s CONV-L-H: 2 stride-2 stem convs + L 3x3 convs of width H", True, _convnet,
           _check_convnet, traits=lambda g: ("CNN", _depth(g), float(g["width"])), example_points=(10, 10)),
    Family("tv", r"tv:(?P<name>[A-Za-z0-9_]+)", "tv:resnet50",
           "any torchvision classification model, random init (weights from a local file)", True, _tv, _check_tv,
           traits=lambda g: ("ViT" if g["name"].startswith(_TV_VIT_NAMES) else "CNN", None, None)),
    Family("timm", TIMM_PATTERN, "timm:vit_tiny_patch16_224-d6",
           "any timm model sized to the data, random init (weights: a local file or 'pretrained'); "
           "ViT options -pP patch, -dL blocks, -wW width", True, build_timm, check_timm, build_timm_pretrained,
           traits=_hub_traits("timm"), example_points=(6, None)),
    Family("hf", HF_PATTERN, "hf:vit-p4-d6-w256",
           "a Hugging Face image classifier: a cached model id (hf:ORG/NAME) or the alias vit or convnext "
           "(-pP patch, -dL depth, -wW width), random init (weights: a local file or 'pretrained')", True, build_hf,
           check_hf, build_hf_pretrained, traits=_hub_traits("hf"), example_points=(6, None)),
]


def _unknown(spec: str) -> SpecError:
    hint = ""
    for family in FAMILIES:
        if spec.startswith(family.name) and family.name != "vgg":
            hint = f" ({family.name} specs look like {family.example})"
    if spec.startswith("vgg") and not spec.startswith("vggm"):
        hint = f" (VGG depths: {', '.join(map(str, CONFIGS))})"
    examples = ", ".join(f.example for f in FAMILIES)
    return SpecError(f"unknown model spec {spec!r}{hint}; valid forms: {examples} "
                     "(see `tunnelscope models`)")


def _check_shape(input_shape: tuple[int, ...], image_only: bool, spec: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ShapeError(f"input shape {shape} for {spec!r} must be positive sizes, e.g. (1, 28, 28)")
    if image_only and len(shape) != 3:
        raise ShapeError(
            f"{spec!r} takes images (channels, height, width) but the data has input shape {shape}; "
            "use an mlp-DxW model for 1-D signals"
        )
    return shape


def family_of(spec: str) -> tuple[Family, dict[str, Any]] | None:
    """The family a model spec belongs to and its pattern's groups (depth, width, ...), or None."""
    name = parse_spec(spec, "model spec").name
    for family in FAMILIES:
        match = re.fullmatch(family.pattern, name)
        if match is not None:
            return family, match.groupdict()
    return None


def default_recipe(spec: str) -> str:
    """The recipe a model trains with when none is named: its family's (``adamw`` for the zoo's
    ViT and linear MLPs, whose plain SGD at lr 0.1 diverges or trains poorly), else ``adamw`` for a
    transformer (a timm, Hugging Face or torchvision ViT) and ``sgd`` for everything else."""
    found = family_of(spec)
    if found is None:
        return "sgd"
    family, groups = found
    return family.recipe or ("adamw" if family.traits(groups)[0] == "ViT" else "sgd")


def check_spec(spec: str) -> None:
    """Raise :class:`SpecError` unless ``spec`` names a model this registry can build (its
    syntax, family, depth and width; not its fit to a dataset). Builds nothing."""
    parsed = parse_spec(spec, "model spec")
    if parsed.modifiers:
        raise SpecError(f"model spec {spec!r} takes no [modifiers]; they belong to dataset specs")
    for family in FAMILIES:
        match = re.fullmatch(family.pattern, parsed.name)
        if match is None:
            continue
        if family.validate is not None:
            family.validate(parsed.name, match)
        return
    raise _unknown(parsed.name)


MAX_CLASSES = 1_000_000  # a checkpoint that claims more is refused before a head is allocated
MAX_INPUT_SIDE = 1 << 16


def build(spec: str, num_classes: int, input_shape: tuple[int, ...], weights: str | Path | None = None,
          seed: int | None = None) -> ZooModel:
    """Build the model a spec names, for ``num_classes`` outputs and inputs of ``input_shape``.

    The model is checked with one forward pass of a dummy batch, which also puts its
    probe points in execution order. ``weights`` loads a state dict from a local file
    (``.safetensors`` or a PyTorch file); the string ``"pretrained"`` asks ``timm:`` and
    ``hf:`` specs for their library's pretrained weights (from the local Hugging Face
    cache, downloaded there first if absent). ``seed`` draws the random initialisation from
    torch's generator seeded so (restored afterwards): the same seed gives the same model, the
    one ``tunnelscope train --seed`` starts from; ``None`` draws from the global generator as it
    stands. Raises :class:`SpecError` for an unknown or impossible spec and :class:`ShapeError`
    when the inputs do not fit.
    """
    parsed = parse_spec(spec, "model spec")
    if parsed.modifiers:
        raise SpecError(f"model spec {spec!r} takes no [modifiers]; they belong to dataset specs")
    if int(num_classes) < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if int(num_classes) > MAX_CLASSES:
        raise ConfigError(f"num_classes {num_classes:,} is above {MAX_CLASSES:,}, the most tunnelscope builds a "
                          "classifier for (its head and every per-class statistic grow with it)")
    if len(input_shape) == 0 or any(int(d) < 1 or int(d) > MAX_INPUT_SIDE for d in input_shape):
        raise ConfigError(f"input shape {tuple(input_shape)} is not one tunnelscope builds a model for: each "
                          f"dimension must be between 1 and {MAX_INPUT_SIDE:,}")
    pretrained = isinstance(weights, str) and weights == PRETRAINED
    for family in FAMILIES:
        match = re.fullmatch(family.pattern, parsed.name)
        if match is None:
            continue
        if pretrained and family.pretrained is None:
            hubs = ", ".join(f"{f.name}:" for f in FAMILIES if f.pretrained is not None)
            raise ConfigError(f"weights='pretrained' is for {hubs} specs only; give {spec!r} a local weights file")
        if family.validate is not None and not pretrained:  # the pretrained builder checks what it needs
            family.validate(parsed.name, match)
        shape = _check_shape(input_shape, family.image_only, spec)
        builder = family.pretrained if pretrained and family.pretrained is not None else family.build
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            model = builder(parsed.name, match, int(num_classes), shape)
        _dry_run(model, shape, spec)
        if weights is not None and not pretrained:
            load_weights(model, weights)
        return model
    raise _unknown(parsed.name)


def _dry_run(model: ZooModel, shape: tuple[int, ...], spec: str) -> None:
    example = torch.zeros(2, *shape)
    try:
        if model.derived_probe_sets:  # one pass over every set's points keeps those a pass can read
            every = list(dict.fromkeys(n for names in model.probe_sets.values() for n in names))
            readable = set(readable_points(model, every, example))
            model.probe_sets = {key: kept for key, names in model.probe_sets.items()
                                if (kept := [n for n in names if n in readable])}
        for key, names in model.probe_sets.items():
            model.probe_sets[key] = order_by_execution(model, names, example)
        model.eval()
        with torch.no_grad():
            out = model(example)
    except TunnelscopeError:
        raise
    except (RuntimeError, ValueError, AssertionError) as exc:  # library models also assert on input sizes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ShapeError(f"{spec!r} cannot take inputs of shape {shape}: {first}; "
                         "resize the data with a [size=S] or [channels=C] modifier") from None
    finally:
        model.train()
    if tuple(out.shape) != (2, model.num_classes):
        raise ShapeError(f"{spec!r} returned shape {tuple(out.shape)[1:]} for {model.num_classes} classes")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict from a local file, with a clear error when it does not fit."""
    from ..checkpoint import safe_load

    state = _load_safetensors(path) if Path(path).suffix == ".safetensors" else safe_load(path, "weights file")
    if isinstance(state, dict) and state.get("format") == "tunnelscope.checkpoint" and "model" in state:
        state = state["model"]  # a tunnelscope checkpoint's weights
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"weights file {path} is not a state dict (a mapping of names to tensors); save one "
                              "with torch.save(model.state_dict(), path)")
    net = getattr(model, "net", None)
    target = net if isinstance(net, torch.nn.Module) and not any(k.startswith("net.") for k in state) else model
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"weights in {path} do not fit {getattr(model, 'spec', type(model).__name__)}: "
                              f"{' '.join(s.strip() for s in first[:3])}") from None


def _load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` state dict (the format Hugging Face saves; it holds tensors only)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"weights file {path} is .safetensors: pip install safetensors (or "
                              "'tunnelscope[hf]') to read it") from None
    if not Path(path).is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"weights file {path} is not a readable .safetensors file "
                              f"({type(exc).__name__})") from None


def list_models() -> list[dict]:
    """Every model family: its name, an example spec and a description."""
    rows = []
    for family in FAMILIES:
        rows.append({"family": family.name, "example": family.example, "description": family.description})
    return rows


__all__ = ["FAMILIES", "Family", "build", "check_spec", "count_parameters", "default_recipe", "family_of",
           "list_models", "load_weights"]
