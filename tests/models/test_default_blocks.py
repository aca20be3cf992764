"""Default ``blocks`` for model objects: a library's own blocks (as its spec gets them), else repeated modules."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from optional import require
from tunnelscope import analyze, data, models
from tunnelscope.errors import ProbePointError
from tunnelscope.models.probe_points import default_blocks

DATA = "digits[size=32,channels=3,per_class=20,test_per_class=10]"
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def digits32() -> data.Dataset:
    return data.load(DATA)


def _tiny_vit(library: str) -> nn.Module:
    if library == "timm":
        timm = require("timm")
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                                 depth=2, embed_dim=64, num_heads=1)
    transformers = require("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=64,
                                    num_attention_heads=1, intermediate_size=256, num_labels=10)
    return transformers.AutoModelForImageClassification.from_config(config)


@pytest.mark.parametrize("library, spec", [("timm", "timm:vit_tiny_patch16_224-p8-d2-w64"),
                                           ("hf", "hf:vit-p8-d2-w64")])
def test_a_library_vit_object_gets_the_blocks_its_spec_gets(library, spec):
    found, rule = default_blocks(_tiny_vit(library))
    assert found == models.probe_points(models.build(spec, 10, SHAPE), "blocks") and len(found) == 2
    assert rule in ("timm", "transformers")


def test_a_torchvision_resnet_object_gets_its_eight_basic_blocks():
    net = torchvision.models.resnet18(num_classes=10)
    assert models.probe_points(net, "blocks") == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert default_blocks(net)[1] == "torchvision"


@pytest.mark.parametrize("library", ["tv", "timm", "hf"])
def test_model_objects_analyse_with_default_points_and_a_model_accuracy(library, digits32):
    net = torchvision.models.resnet18(num_classes=10) if library == "tv" else _tiny_vit(library)
    metrics = "rank" if library == "tv" else "probe,rank"  # ResNet-18's probes take a minute on 2 cores
    results = analyze(net, digits32, metrics=metrics, device="cpu", progress=False, resamples=0, max_samples=100)
    assert results.summary["points"] == (8 if library == "tv" else 2)
    accuracy = results.summary["model_accuracy"]
    assert math.isfinite(accuracy) and 0 <= accuracy <= 1
    assert "near_chance" in {f["code"] for f in results.summary["flags"]}  # random init: flagged, not valid
    assert not results.summary["verdict_valid"]


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear, self.act = nn.Linear(width, width), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class _Residual(nn.Module):
    """A user's own network: a stem, a list of three blocks of its own class, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
        self.body = nn.ModuleList([_Block(8) for _ in range(3)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.body:
            x = block(x)
        return self.head(x)


def test_any_module_falls_back_to_its_outermost_repeated_blocks_then_its_activations():
    assert default_blocks(_Residual()) == (["body.0", "body.1", "body.2"], "outermost repeated blocks")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert default_blocks(mlp) == (["2", "4"], "repeated activations")
    with pytest.raises(ProbePointError, match=r"no blocks could be found in Linear.*named_modules"):
        models.probe_points(nn.Linear(3, 2), "blocks")
