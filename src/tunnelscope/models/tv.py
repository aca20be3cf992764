"""``tv:NAME``: any torchvision classification model, randomly initialised offline.

Weights come from a local file only (``build(..., weights=PATH)``): a state dict as saved
by torchvision or ``torch.save(model.state_dict())``. The model is torchvision's own (module
names such as ``layer1.0``, torchvision's state-dict keys); state dicts of the earlier
wrapper, whose keys start with ``net.``, still load.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import SpecError
from .base import ZooModel
from .probe_points import BLOCK_FINDERS, channels_last_blocks, outermost


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# torchvision's block classes, by name: a ``blocks`` set is each outermost module of these
# classes (GoogLeNet/Inception modules, SqueezeNet's Fire, the inverted residuals of
# MobileNet, ShuffleNet and MNASNet, EfficientNet's MBConv, RegNet's blocks, DenseNet's dense
# blocks and transitions, MaxViT's layers, Swin's transformer blocks)
_BLOCK_CLASSES = frozenset({
    "Inception", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "Fire",
    "InvertedResidual", "_InvertedResidual", "MBConv", "FusedMBConv", "ResBottleneckBlock",
    "_DenseBlock", "_Transition", "MaxVitLayer", "SwinTransformerBlock", "SwinTransformerBlockV2",
})


def _blocks(net: nn.Module) -> list[str]:
    """Known block-level probe points of torchvision families; empty if unknown."""
    import torchvision.models as tvm

    names = [n for n, _ in net.named_modules()]
    if isinstance(net, tvm.ResNet):
        return [n for n in names if n.count(".") == 1 and n.startswith("layer")]
    if isinstance(net, tvm.VGG):
        relus = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
        return relus
    if isinstance(net, tvm.VisionTransformer):
        return [n for n in names if n.startswith("encoder.layers.") and n.count(".") == 2]
    if isinstance(net, tvm.ConvNeXt):
        return [n for n in names if n.startswith("features.") and n.count(".") == 2]
    return outermost(net, lambda module: type(module).__name__ in _BLOCK_CLASSES)


def _object_blocks(net: nn.Module) -> list[str] | None:
    """The blocks of a torchvision model passed as an object (None for any other module)."""
    return _blocks(net) if type(net).__module__.startswith("torchvision.models") else None


BLOCK_FINDERS.append(("torchvision", _object_blocks))


def _conv(net: nn.Module, classifier: str) -> list[str]:
    """Every Conv2d/Linear output except 1x1 shortcut convs, a ViT's token MLPs and the final
    classifier (the build then drops what a forward pass cannot read: ``readable_points``)."""
    points = []
    for name, module in net.named_modules():
        if name == classifier:
            continue
        if isinstance(module, nn.Conv2d):
            if "downsample" in name or "shortcut" in name:
                continue
            points.append(name)
        elif isinstance(module, nn.Linear) and not name.startswith("encoder.layers"):
            points.append(name)
    return points


_CLASSES: dict[type, type] = {}


def _class_for(base: type) -> type:
    """The class ``TorchvisionModel`` + a torchvision model class (one per class, made once)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"Torchvision{base.__name__}", (TorchvisionModel, base),
                   {"__module__": __name__, "__doc__": f"torchvision's {base.__name__} as a zoo model."})
        _CLASSES[base] = cls
    return cls


def _new_instance(base: type) -> TorchvisionModel:
    """An empty instance of the zoo class for torchvision class ``base`` (for pickle and deepcopy)."""
    instance: TorchvisionModel = nn.Module.__new__(_class_for(base))
    return instance


def strip_net_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A state dict whose keys all start with ``net.`` (saved from the old wrapper, which held the
    torchvision model as ``self.net``) with that prefix removed, its metadata kept; others as they are."""
    if not state or not all(isinstance(k, str) and k.startswith("net.") for k in state):
        return state
    stripped: OrderedDict[str, Any] = OrderedDict((k[4:], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        renamed = OrderedDict()
        for key, value in metadata.items():
            if key == "net":
                renamed[""] = value
            elif key.startswith("net."):
                renamed[key[4:]] = value
        stripped._metadata = renamed  # type: ignore[attr-defined]
    return stripped


class TorchvisionModel(ZooModel):
    """A torchvision model that also carries its spec and probe sets.

    ``TorchvisionModel(spec, name, num_classes, input_shape)`` returns the torchvision model
    itself, of a class derived from both this class and torchvision's (``ResNet``, ...): its
    module names, state-dict keys and ``isinstance`` checks are torchvision's own
    (``layer1.0``, ``layer1.0.conv1.weight``). State dicts saved from the earlier wrapper,
    whose keys start with ``net.``, still load; ``model.net`` is the model itself.
    """

    def __new__(cls, spec: str, name: str, num_classes: int, input_shape: tuple[int, ...]) -> TorchvisionModel:
        import torchvision

        if name not in torchvision_names():
            raise SpecError(
                f"unknown torchvision model {name!r}; e.g. {', '.join(torchvision_names()[:8])}, ... "
                "(see `tunnelscope models --torchvision`)"
            )
        kwargs = {}
        if name.startswith("vit_") and len(input_shape) == 3:
            kwargs["image_size"] = input_shape[-1]
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        classifier = linears[-1] if linears else ""
        probe_sets = {"conv": _conv(net, classifier)}
        blocks = _blocks(net)
        if blocks:
            probe_sets["blocks"] = blocks
        channels_last = channels_last_blocks(net, blocks)
        net.__class__ = _class_for(type(net))
        model: TorchvisionModel = net
        model.spec, model.num_classes, model.input_shape = spec, num_classes, tuple(input_shape)
        model.probe_sets = probe_sets
        model.channels_last_points = channels_last
        return model

    derived_probe_sets = True

    def __init__(self, spec: str, name: str, num_classes: int, input_shape: tuple[int, ...]) -> None:
        """Nothing to do: ``__new__`` built the torchvision model and made it this class."""

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickle and deepcopy as an empty instance of the same class plus the state."""
        base = next(b for b in type(self).__bases__ if b is not TorchvisionModel)
        return _new_instance, (base,), self.__dict__.copy()

    @property
    def net(self) -> nn.Module:
        """The torchvision model: this object (kept for code written for the earlier wrapper)."""
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, also taking state dicts saved from the earlier wrapper
        (every key prefixed ``net.``)."""
        return super().load_state_dict(strip_net_prefix(state_dict), strict=strict, assign=assign)
