"""``timm:NAME`` and ``hf:NAME``: image classifiers of timm and of Hugging Face transformers.

Both build offline with random weights, sized to the data: ``num_classes`` outputs,
``in_chans`` / ``num_channels`` from the data's channels and ``img_size`` / ``image_size``
from its side (where the model takes one). Weights come from a local file
(``build(..., weights=PATH)``, a state dict of the library's own names) or, only when asked
with ``weights="pretrained"``, from the library's pretrained weights: read from the local
Hugging Face cache, downloaded there first if absent (network).

Spec grammar (options in this order, each optional):

- ``timm:NAME[.TAG][-pP][-dL][-wW]``: any ``timm.list_models()`` name (``TAG`` picks the
  pretrained weights); ``-pP`` patch size, ``-dL`` blocks, ``-wW`` embedding width (one head
  per 64 dims) for models that take them (ViT and its kin).
- ``hf:ORG/NAME``: a Hugging Face model id whose config is in the local cache (or a local
  directory saved with ``save_pretrained``).
- ``hf:ALIAS[-pP][-dL][-wW]`` with ALIAS ``vit`` (``ViTConfig``: ViT-B/16 unless ``-pP``
  patch, ``-dL`` layers, ``-wW`` hidden size with one head per 64 dims) or ``convnext``
  (``ConvNextConfig``: ConvNeXt-T unless ``-pP`` stem patch, ``-dL`` blocks in each of the 4
  stages, ``-wW`` first-stage width, doubling per stage): no download ever.

The library's model object *is* the zoo model: its class is swapped for a subclass that also
derives from :class:`ZooModel`, so module names, state-dict keys and hooks are the library's
own (``blocks.3``, ``vit.layers.3``; no wrapper prefix). ``hf:`` models return the logits
tensor instead of an output object.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn

from ..errors import SpecError
from .base import ZooModel
from .probe_points import BLOCK_FINDERS, channels_last_blocks, outermost

PRETRAINED = "pretrained"
HEAD_DIM = 64  # -wW gives W // 64 attention heads, as ViT-B (768 / 12) and ViT-Ti (192 / 3)
EXTRAS = {"timm": "timm", "transformers": "hf"}
HF_ALIASES = {"vit": "ViT-B/16 (ViTConfig defaults)", "convnext": "ConvNeXt-T (ConvNextConfig defaults)"}
_OPTIONS = r"(?:-p(?P<patch>\d+))?(?:-d(?P<depth>\d+))?(?:-w(?P<width>\d+))?"
TIMM_PATTERN = rf"timm:(?P<name>[A-Za-z0-9_]+)(?:\.(?P<tag>[A-Za-z0-9_]+))?{_OPTIONS}"
HF_PATTERN = rf"hf:(?:(?P<alias>{'|'.join(HF_ALIASES)}){_OPTIONS}|(?P<name>[A-Za-z0-9_.~/\-]+))"
_CONTAINERS = ("layer", "layers", "blocks")  # names of the lists of repeated blocks in transformers models
_TOKEN_NAMES = ("vit", "deit", "beit", "eva", "cait", "xcit", "swin", "coat", "crossvit", "levit", "mvit", "pit_",
                "tnt_", "twins", "volo", "hiera", "dino", "pvt", "siglip", "clip", "nat_", "dinat")


def require(module: str) -> ModuleType:
    """Import an optional package, or raise a one-line :class:`SpecError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise SpecError(f"{extra}: model specs need the optional package {module}: "
                        f"pip install 'tunnelscope[{extra}]'") from None


def spec_kind(family: str, groups: dict[str, Any]) -> str:
    """``ViT`` or ``CNN`` for a ``timm``/``hf`` spec's regex groups, read from the name alone."""
    name = (groups.get("alias") or groups.get("name") or "").lower()
    if family == "hf":
        name = name.rsplit("/", 1)[-1]
        if groups.get("alias"):
            return "ViT" if name == "vit" else "CNN"
    return "ViT" if any(token in name for token in _TOKEN_NAMES) else "CNN"


# ----------------------------------------------------------------------------------------- the wrapper
class HubModel(ZooModel):
    """What a library model gains as a zoo model: spec, classes, input shape, probe sets, and
    ``class_token`` (the class-token parameter, where the model has one; the capture leaves out
    every prefix token, :func:`tunnelscope.models.base.prefix_tokens`)."""

    library: str = ""
    class_token_name: str | None = None  # dotted name of the class-token parameter
    derived_probe_sets = True

    @property
    def class_token(self) -> torch.Tensor:
        """The class-token parameter; AttributeError when the model has none."""
        if self.class_token_name is None:
            raise AttributeError("class_token")
        return self.get_parameter(self.class_token_name)


class TimmModel(HubModel):
    """Mixin of ``timm:`` models (forward is timm's own: it returns logits)."""

    library = "timm"


class HFModel(HubModel):
    """Mixin of ``hf:`` models: forward returns the logits tensor, not an output object."""

    library = "transformers"
    hf_forward_kwargs: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images."""
        return super().forward(pixel_values=x, return_dict=True, **self.hf_forward_kwargs).logits


_CLASSES: dict[tuple[type, type], type] = {}
_MIXINS: dict[str, type[HubModel]] = {"TimmModel": TimmModel, "HFModel": HFModel}


def hub_class(mixin: type[HubModel], base: type) -> type:
    """The class ``(mixin, base)``, made once per process. Its ``__qualname__`` encodes both
    (``HFModel|transformers:models:vit:modeling_vit|ViTForImageClassification``) so that the
    module's ``__getattr__`` rebuilds it wherever a pickled model is loaded."""
    key = (mixin, base)
    if key not in _CLASSES:
        qualname = f"{mixin.__name__}|{base.__module__}|{base.__qualname__}".replace(".", ":")
        _CLASSES[key] = type(base.__name__, (mixin, base), {"__module__": __name__, "__qualname__": qualname})
    return _CLASSES[key]


def __getattr__(name: str) -> type:
    """The hub model class a pickle names by its encoded ``__qualname__`` (see :func:`hub_class`)."""
    parts = name.replace(":", ".").split("|")
    if len(parts) != 3 or parts[0] not in _MIXINS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    base: Any = importlib.import_module(parts[1])
    for attr in parts[2].split("."):
        base = getattr(base, attr)
    return hub_class(_MIXINS[parts[0]], base)


def _adopt(net: nn.Module, mixin: type[HubModel], spec: str, num_classes: int, shape: tuple[int, ...],
           probe_sets: dict[str, list[str]]) -> HubModel:
    """Turn ``net`` itself into a zoo model by swapping its class for ``(mixin, type(net))``."""
    net.__class__ = hub_class(mixin, type(net))
    model: HubModel = net  # type: ignore[assignment]
    model.spec, model.num_classes, model.input_shape = spec, num_classes, tuple(shape)
    model.probe_sets = probe_sets
    tokens = [n for n, _ in net.named_parameters() if n.rsplit(".", 1)[-1] == "cls_token"]
    model.class_token_name = tokens[0] if tokens else None
    return model


def _conv_points(net: nn.Module) -> list[str]:
    """Every Conv2d except 1x1 shortcut convs (``downsample``/``shortcut`` in the name). Only
    convolutions: their outputs are channels-first maps in every library, unlike the Linear
    layers of ConvNeXt blocks, which act on channels-last maps."""
    points = []
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        shortcut = "downsample" in name or "shortcut" in name
        if shortcut and tuple(module.kernel_size) == (1, 1):
            continue
        points.append(name)
    return points


def _with_conv(net: nn.Module, blocks: list[str]) -> dict[str, list[str]]:
    """Probe sets: ``blocks`` when known, and ``conv`` for models with more than one conv
    (a ViT's only conv is its patch embedding)."""
    sets: dict[str, list[str]] = {}
    if blocks:
        sets["blocks"] = blocks
    convs = _conv_points(net)
    if len(convs) > 1:
        sets["conv"] = convs
    return sets


def _children(net: nn.Module, container: str) -> list[str]:
    module = net.get_submodule(container)
    prefix = f"{container}." if container else ""
    return [f"{prefix}{name}" for name, _ in module.named_children()]


# ----------------------------------------------------------------------------------------- timm
# timm's block classes besides those named ``...Block`` or ``...Bottleneck``: MobileNet/EfficientNet blocks
_TIMM_BLOCK_CLASSES = frozenset({"InvertedResidual", "DepthwiseSeparableConv", "EdgeResidual"})


def _timm_block(module: nn.Module) -> bool:
    """Whether a module is one of timm's blocks, by its class name."""
    name = type(module).__name__
    return name.endswith(("Block", "Bottleneck")) or name in _TIMM_BLOCK_CLASSES


def _timm_blocks(net: nn.Module) -> list[str]:
    """Block-level points: ResNets (``layerN.M``), ConvNeXts (``stages.N.blocks.M``), ViT-like
    models (``blocks.N`` with a position embedding), and for the other families each outermost
    module of a block class (``...Block``, ``...Bottleneck``, ``InvertedResidual``, ...)."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet

    if isinstance(net, ResNet):
        return [n for i in range(1, 5) if hasattr(net, f"layer{i}") for n in _children(net, f"layer{i}")]
    if isinstance(net, ConvNeXt):
        return [n for stage in _children(net, "stages") for n in _children(net, f"{stage}.blocks")]
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and hasattr(net, "pos_embed"):
        return _children(net, "blocks")
    return outermost(net, _timm_block)



def _timm_options(spec: str, m: re.Match) -> dict[str, int]:
    """The ``-pP -dL -wW`` options as timm keyword arguments."""
    options = {}
    if m["patch"] is not None:
        options["patch_size"] = int(m["patch"])
    if m["depth"] is not None:
        options["depth"] = int(m["depth"])
    if m["width"] is not None:
        options["embed_dim"] = int(m["width"])
        options["num_heads"] = int(m["width"]) // HEAD_DIM
    return options


def _check_options(spec: str, m: re.Match, heads: bool = True) -> None:
    """``-pP -dL -wW`` at least 1, and (with ``heads``: a transformer's) W a multiple of 64."""
    for key, what in (("patch", "patch size"), ("depth", "depth"), ("width", "width")):
        if m[key] is not None and int(m[key]) < 1:
            raise SpecError(f"{what} {m[key]} in {spec!r} must be >= 1")
    if heads and m["width"] is not None and int(m["width"]) % HEAD_DIM:
        raise SpecError(f"width {m['width']} in {spec!r} must be a multiple of {HEAD_DIM} "
                        f"(one attention head per {HEAD_DIM} dims), e.g. -w{HEAD_DIM} or -w{3 * HEAD_DIM}")


def check_timm(spec: str, m: re.Match) -> None:
    """One-line :class:`SpecError` unless timm is installed and knows the model's name."""
    timm = require("timm")
    _check_options(spec, m)
    name = m["name"]
    if not timm.is_model(name):
        like = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6) or timm.list_models("resnet*")[:6]
        raise SpecError(f"unknown timm model {name!r} in {spec!r}; e.g. {', '.join(like)}, ... "
                        "(see timm.list_models())")


# "unexpected keyword argument 'x'" (Python) or "unexpected keyword argument(s): ['x']" (timm's own check)
_UNEXPECTED = re.compile(r"unexpected keyword argument(?:\(s\))?:? \[?'(?P<key>\w+)'")
_FLAGS = {"patch_size": "-pP", "depth": "-dL", "embed_dim": "-wW", "num_heads": "-wW"}


def build_timm(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...], pretrained: bool = False) -> ZooModel:
    """``timm.create_model`` for ``num_classes`` outputs and inputs of ``shape``, random
    init unless ``pretrained`` (timm's pretrained weights: local Hugging Face cache, else a
    download); ``img_size`` is passed to the models that take it."""
    timm = require("timm")
    check_timm(spec, m)
    name = m["name"] + (f".{m['tag']}" if m["tag"] else "")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": shape[0], **_timm_options(spec, m)}
    if len(shape) == 3:
        kwargs["img_size"] = (shape[1], shape[2])
    while True:
        try:
            net = timm.create_model(name, pretrained=pretrained, **kwargs)
            break
        except TypeError as exc:
            bad = _UNEXPECTED.search(str(exc))
            if bad is None:
                raise SpecError(f"timm could not build {name!r} for {spec!r}: {_first(exc)}") from None
            if bad["key"] == "img_size" and "img_size" in kwargs:
                del kwargs["img_size"]  # a model without a fixed input size (CNNs)
                continue
            flag = _FLAGS.get(bad["key"], bad["key"])
            raise SpecError(f"timm model {m['name']!r} takes no {flag} option ({bad['key']}); "
                            f"drop it from {spec!r}") from None
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise SpecError(f"timm could not build {name!r} for {spec!r} and inputs {shape}: {_first(exc)}") from None
    blocks = _timm_blocks(net)
    model = _adopt(net.float(), TimmModel, spec, num_classes, shape, _with_conv(net, blocks))
    model.channels_last_points = channels_last_blocks(net, blocks)
    return model


def build_timm_pretrained(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    """:func:`build_timm` with timm's pretrained weights (network on first use)."""
    return build_timm(spec, m, num_classes, shape, pretrained=True)


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ----------------------------------------------------------------------------------------- Hugging Face
def _hf_blocks(net: nn.Module) -> list[str]:
    """The children of the innermost lists of repeated blocks named ``layer``, ``layers`` or
    ``blocks`` (``vit.layers.N`` or ``vit.encoder.layer.N`` by transformers version,
    ``convnext.encoder.stages.N.layers.M``, ``swin.encoder.layers.N.blocks.M``)."""
    containers = [n for n, mod in net.named_modules()
                  if isinstance(mod, (nn.ModuleList, nn.Sequential)) and n.rsplit(".", 1)[-1] in _CONTAINERS]
    innermost = [c for c in containers if not any(o.startswith(f"{c}.") for o in containers)]
    return [n for c in innermost for n in _children(net, c)]


def _object_blocks(library: str, finder: Any) -> Any:
    """A block finder for ``library``'s module objects (None for any other module)."""
    def find(net: nn.Module) -> list[str] | None:
        return finder(net) if type(net).__module__.startswith(f"{library}.") else None
    return find


BLOCK_FINDERS.extend([("timm", _object_blocks("timm", _timm_blocks)),
                      ("transformers", _object_blocks("transformers", _hf_blocks))])


def _hub_id(spec: str, name: str) -> None:
    if "/" not in name:
        raise SpecError(f"unknown hf: alias {name!r} in {spec!r}; aliases: {', '.join(HF_ALIASES)} "
                        "(e.g. hf:vit-p4-d6-w256), or a model id such as hf:google/vit-base-patch16-224")


def _hub_config(spec: str, name: str, local_only: bool) -> Any:
    """The config of a Hugging Face model id from the local cache (or, when not
    ``local_only``, downloaded)."""
    transformers = require("transformers")
    try:
        return transformers.AutoConfig.from_pretrained(name, local_files_only=local_only)
    except OSError:
        raise SpecError(
            f"the config of {name!r} ({spec!r}) is not in the local Hugging Face cache; download it once with network "
            f"(python -c \"import transformers; transformers.AutoConfig.from_pretrained('{name}')\"), "
            f"ask for its weights (weights='pretrained', network), or use an alias: hf:vit, hf:convnext") from None
    except ValueError as exc:
        raise SpecError(f"transformers {transformers.__version__} cannot read the config of {name!r}: "
                        f"{_first(exc)}; upgrade transformers") from None


def check_hf(spec: str, m: re.Match) -> None:
    """One-line :class:`SpecError` unless transformers is installed and the spec names an
    alias or a model id whose config is in the local Hugging Face cache."""
    require("transformers")
    if m["alias"]:
        _check_options(spec, m, heads=m["alias"] == "vit")
        return
    _hub_id(spec, m["name"])
    _hub_config(spec, m["name"], local_only=True)


def _alias_config(m: re.Match, num_classes: int, shape: tuple[int, ...]) -> Any:
    transformers = require("transformers")
    patch, depth, width = (int(m[k]) if m[k] is not None else None for k in ("patch", "depth", "width"))
    common = {"num_labels": num_classes, "num_channels": shape[0], "image_size": shape[-1]}
    if m["alias"] == "vit":
        sizes: dict[str, int] = {}
        if patch is not None:
            sizes["patch_size"] = patch
        if depth is not None:
            sizes["num_hidden_layers"] = depth
        if width is not None:
            sizes.update(hidden_size=width, num_attention_heads=width // HEAD_DIM, intermediate_size=4 * width)
        return transformers.ViTConfig(**common, **sizes)
    stages: dict[str, Any] = {}
    if patch is not None:
        stages["patch_size"] = patch
    if depth is not None:
        stages["depths"] = [depth] * 4
    if width is not None:
        stages["hidden_sizes"] = [width, 2 * width, 4 * width, 8 * width]
    return transformers.ConvNextConfig(**common, **stages)


def build_hf(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...], pretrained: bool = False) -> ZooModel:
    """A transformers image classifier for ``num_classes`` outputs and inputs of ``shape``:
    from an alias's config class or a cached config, random init; with ``pretrained`` the
    model id's pretrained weights (local cache, else a download) with a new head."""
    transformers = require("transformers")
    auto = transformers.AutoModelForImageClassification
    interpolate = False
    if m["alias"]:
        if pretrained:
            raise SpecError(f"{spec!r} is an alias with no pretrained weights; name a model id such as "
                            "hf:google/vit-base-patch16-224 for weights='pretrained'")
        _check_options(spec, m, heads=m["alias"] == "vit")
        config = _alias_config(m, num_classes, shape)
    else:
        _hub_id(spec, m["name"])
        config = _hub_config(spec, m["name"], local_only=not pretrained)
        config.num_labels = num_classes
        if pretrained:
            if getattr(config, "num_channels", shape[0]) != shape[0]:
                raise SpecError(f"the pretrained {m['name']!r} takes {config.num_channels}-channel images; add "
                                f"[channels={config.num_channels}] to the data spec")
            size = getattr(config, "image_size", None)
            interpolate = size is not None and size != shape[-1]  # the pretrained position embeddings' size
        else:
            for key, value in (("num_channels", shape[0]), ("image_size", shape[-1])):
                if hasattr(config, key):
                    setattr(config, key, value)
    try:
        if pretrained:
            net = auto.from_pretrained(m["name"], config=config, ignore_mismatched_sizes=True)
        else:
            net = auto.from_config(config)
    except (KeyError, ValueError) as exc:
        raise SpecError(f"{spec!r} is not an image classifier transformers can build ({_first(exc)})") from None
    interpolate = interpolate and "interpolate_pos_encoding" in inspect.signature(net.forward).parameters
    model = cast(HFModel, _adopt(net.float(), HFModel, spec, num_classes, shape, _with_conv(net, _hf_blocks(net))))
    if interpolate:
        model.hf_forward_kwargs = {"interpolate_pos_encoding": True}
    return model


def build_hf_pretrained(spec: str, m: re.Match, num_classes: int, shape: tuple[int, ...]) -> ZooModel:
    """:func:`build_hf` with the model id's pretrained weights (network on first use)."""
    return build_hf(spec, m, num_classes, shape, pretrained=True)


__all__ = ["HF_ALIASES", "HF_PATTERN", "PRETRAINED", "TIMM_PATTERN", "HFModel", "HubModel", "TimmModel",
           "build_hf", "build_hf_pretrained", "build_timm", "build_timm_pretrained", "check_hf", "check_timm",
           "hub_class", "require", "spec_kind"]
