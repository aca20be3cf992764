"""Architecture traits (the design variables of Harun et al.'s analysis), checked against what each
architecture's definition says."""

from __future__ import annotations

import math

import pytest
from torch import nn

from tunnelscope.models import build
from tunnelscope.models.traits import measured_traits, spec_traits


@pytest.mark.parametrize("spec, expected", [
    ("mlp-12x256", {"family": "mlp", "kind": "MLP", "depth": 12, "width": 256.0}),
    ("vgg19-w0.5", {"family": "vgg", "kind": "CNN", "depth": 19, "width": 32.0}),
    ("vggm17-nopool", {"family": "vggm", "kind": "CNN", "depth": 17, "width": 64.0}),
    ("resnet18-imagenet", {"family": "resnet", "kind": "CNN", "depth": 18, "width": 64.0}),
    ("cifar-resnet-38x2", {"family": "cifar-resnet", "kind": "CNN", "depth": 38, "width": 32.0}),
    ("vit-t-p8-d6", {"family": "vit", "kind": "ViT", "depth": 6, "width": 192.0}),
    ("vit-t", {"family": "vit", "kind": "ViT", "depth": 12, "width": 192.0}),
    ("convnet-8x64", {"family": "convnet", "kind": "CNN", "depth": 8, "width": 64.0}),
    ("tv:vit_b_16", {"family": "tv", "kind": "ViT", "depth": None, "width": None}),
    ("tv:resnet50", {"family": "tv", "kind": "CNN", "depth": None, "width": None}),
    ("timm:vit_tiny_patch16_224-p8-d2-w64", {"family": "timm", "kind": "ViT", "depth": 2, "width": 64.0}),
    ("timm:resnet18", {"family": "timm", "kind": "CNN", "depth": None, "width": None}),
    ("hf:vit-d4", {"family": "hf", "kind": "ViT", "depth": 4, "width": None}),
    ("hf:convnext", {"family": "hf", "kind": "CNN", "depth": None, "width": None}),
])
def test_spec_traits(spec, expected):
    assert spec_traits(spec) == expected


@pytest.mark.parametrize("spec, shape, stem, reduction", [
    ("vit-t-p4-d1", (3, 32, 32), 4.0, 4.0),  # patch embedding: a 4x4 stride-4 convolution, 8x8 tokens
    ("resnet18-imagenet", (3, 64, 64), 7.0, 32.0),  # 7x7 stem; 64 px down to 2x2 before global pooling
    ("resnet18", (3, 32, 32), 3.0, 8.0),  # CIFAR stem 3x3, no max pool: 32 -> 4x4 after three stride-2 stages
    ("tv:convnext_tiny", (3, 64, 64), 4.0, 32.0),  # 2x2 before the pool; the head's LayerNorm on 1x1 does not count
    ("tv:swin_t", (3, 64, 64), 4.0, 32.0),  # channels-last maps: 64 -> 16 (patches) -> 2x2 after 3 mergings
])
def test_measured_stem_and_spatial_reduction(spec, shape, stem, reduction):
    traits = measured_traits(build(spec, 10, shape), shape)
    assert traits["stem"] == stem and traits["spatial_reduction"] == reduction


def test_fewer_pools_mean_less_spatial_reduction_and_mlps_have_neither():
    pooled = measured_traits(build("vggm17", 10, (3, 32, 32)), (3, 32, 32))["spatial_reduction"]
    unpooled = measured_traits(build("vggm17-nopool", 10, (3, 32, 32)), (3, 32, 32))["spatial_reduction"]
    assert (pooled, unpooled) == (32, 8)  # VGG-19's five 2x2 max pools take 32 px to 1x1; -nopool skips two
    model = build("mlp-3x16", 5, (1, 8, 8))
    traits = measured_traits(model, (1, 8, 8))
    assert math.isnan(traits["stem"]) and math.isnan(traits["spatial_reduction"])
    assert traits["parameters"] == sum(p.numel() for p in model.parameters())


def test_measured_traits_keep_the_mode_and_leave_no_hooks():
    model = build("convnet-2x8", 3, (1, 16, 16)).train()
    measured_traits(model, (1, 16, 16))
    assert model.training and all(not m._forward_hooks for m in model.modules() if isinstance(m, nn.Module))


def test_a_family_is_one_record_its_traits_and_recipe_included(monkeypatch):
    """A new family needs its module (the builder) and one record: build, traits and the default
    recipe follow from the record, with no edit of traits.py or train/recipes.py."""
    from tunnelscope.models import registry
    from tunnelscope.train.recipes import default_recipe

    mlp = registry.FAMILIES[0]
    toy = registry.Family("toy", r"toy-(?P<depth>\d+)x(?P<width>\d+)", "toy-3x8", "a toy family", False, mlp.build,
                          mlp.validate, traits=lambda g: ("ViT", int(g["depth"]), float(g["width"])), recipe="adamw")
    monkeypatch.setattr(registry, "FAMILIES", [*registry.FAMILIES, toy])
    assert spec_traits("toy-3x8") == {"family": "toy", "kind": "ViT", "depth": 3, "width": 8.0}
    assert default_recipe("toy-3x8") == "adamw" and default_recipe("no-such-model") == "sgd"
    assert registry.build("toy-3x8", 4, (1, 8, 8)) is not None
