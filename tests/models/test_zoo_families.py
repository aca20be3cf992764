"""The papers' model families: Nguyen et al.'s CIFAR ResNets, Harun et al.'s ViT-T and
Badger's linear MLPs (parameter counts, shapes, probe points, exact properties, training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from references import hooked_outputs
from tunnelscope import data, models, train
from tunnelscope.capture import Capture
from tunnelscope.engine import analyze_layers
from tunnelscope.errors import ProbePointError, ShapeError, SpecError
from tunnelscope.models.cifar_resnet import CifarResNet
from tunnelscope.models.vit import VisionTransformer

TINY_DATA = "fashion-mnist[classes=0-4,per_class=20,test_per_class=10]"


# ---------------------------------------------------------------------------------------- parameter counts
def _conv_bn(c_in: int, c_out: int) -> int:
    """A bias-free 3x3 conv and its BatchNorm (weight and bias)."""
    return 9 * c_in * c_out + 2 * c_out


def test_cifar_resnet_parameters_match_a_hand_count():
    # cifar-resnet-14x2: n = 2 blocks per stage, widths 32/64/128; option-A shortcuts have no weights.
    expected = _conv_bn(1, 32)  # stem
    for c_in, c_out in [(32, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]:
        expected += _conv_bn(c_in, c_out) + _conv_bn(c_out, c_out)
    expected += 128 * 7 + 7  # linear head
    assert models.count_parameters(models.build("cifar-resnet-14x2", 7, (1, 28, 28))) == expected


def test_cifar_resnet_20_and_110_have_he_et_al_sizes():
    # He et al. (2016), Table 6: ResNet-20 0.27M and ResNet-110 1.7M parameters on CIFAR-10
    # (built without the registry's dry run, which a parameter count does not need).
    assert round(models.count_parameters(CifarResNet("r20", 20, 10, (3, 32, 32))) / 1e6, 2) == 0.27
    assert round(models.count_parameters(CifarResNet("r110", 110, 10, (3, 32, 32))) / 1e6, 1) == 1.7


def test_vit_t_parameters_match_a_hand_count_and_torchvision():
    d, tokens, classes = 192, (28 // 4) ** 2 + 1, 5
    per_block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = (1 * 4 * 4 * d + d) + d + tokens * d + 12 * per_block + 2 * d + (d * classes + classes)
    assert models.count_parameters(models.build("vit-t", classes, (1, 28, 28))) == expected
    reference = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3,
                                                     hidden_dim=192, mlp_dim=768, num_classes=1000)
    ours = VisionTransformer("vit-t-p16", 1000, (3, 224, 224), patch=16)  # ViT-Ti/16 at 224 px, no dry run
    assert models.count_parameters(ours) == sum(p.numel() for p in reference.parameters()) == 5_717_416


def test_linear_mlp_parameters_match_a_hand_count():
    expected = (784 * 256 + 256) + 4 * (256 * 256 + 256) + (256 * 10 + 10)
    assert models.count_parameters(models.build("linear-mlp-6x256", 10, (1, 28, 28))) == expected


# ---------------------------------------------------------------------------------------- shapes and points
@pytest.mark.parametrize("spec", ["cifar-resnet-8", "cifar-resnet-8x2", "vit-t-d2", "vit-t-p2-d1", "linear-mlp-4x32"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_forward_shapes(spec, shape):
    model = models.build(spec, 7, shape).eval()
    with torch.no_grad():
        assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_linear_mlp_takes_1d_signals():
    with torch.no_grad():
        assert models.build("linear-mlp-3x16", 10, (40,))(torch.randn(4, 40)).shape == (4, 10)


@pytest.mark.parametrize("spec, blocks, conv", [
    ("cifar-resnet-8", 1 + 3, 1 + 6), ("cifar-resnet-20", 1 + 9, 1 + 18), ("cifar-resnet-38x2", 1 + 18, 1 + 36),
    ("vit-t", 12, 0), ("vit-t-p8-d6", 6, 0), ("linear-mlp-6x256", 6, 5), ("linear-mlp-2x8", 2, 1),
])
def test_probe_point_counts(spec, blocks, conv):
    model = models.build(spec, 10, (3, 16, 16))
    assert len(models.probe_points(model, "blocks")) == blocks
    assert len(model.probe_sets["conv"]) == conv


def test_cifar_resnet_blocks_are_stem_then_residual_blocks_in_order():
    model = models.build("cifar-resnet-14", 10, (3, 32, 32))
    assert models.probe_points(model, "blocks") == ["stem", "stage1.0", "stage1.1", "stage2.0", "stage2.1",
                                                    "stage3.0", "stage3.1"]
    assert models.probe_points(model, "conv")[:3] == ["stem.0", "stage1.0.conv1", "stage1.0.conv2"]


def test_cifar_resnet_shortcut_is_a_padded_identity():
    # With the residual branch silenced (last BN scale 0), a downsampling block returns
    # relu(x subsampled by 2, new channels zero): He et al.'s option A.
    model = models.build("cifar-resnet-8x2", 10, (3, 32, 32)).eval()
    block = model.stage2[0]
    torch.nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, 32, 15, 15)
    with torch.no_grad():
        out = block(x)
    expected = np.zeros((2, 64, 8, 8))
    expected[:, :32] = np.maximum(x.numpy()[:, :, ::2, ::2], 0)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_vit_conv_set_is_refused_with_a_hint():
    with pytest.raises(ProbePointError, match="no 'conv' probe points; use 'blocks'"):
        models.probe_points(models.build("vit-t-d1", 10, (3, 32, 32)), "conv")


# ---------------------------------------------------------------------------------------- ViT tokens


def test_vit_blocks_are_token_sequences_with_the_class_token_first():
    model = models.build("vit-t-d3", 5, (1, 28, 28)).eval()
    x = torch.randn(4, 1, 28, 28)
    names = models.probe_points(model, "blocks")
    outs = hooked_outputs(model, names, x)
    assert all(o.shape == (4, 1 + 49, 192) for o in outs.values())
    # token 0 before the blocks is the class token (plus its position embedding), whatever the input
    with torch.no_grad():
        tokens = model.tokens(torch.cat([x, -3 * x]))
    expected = (model.class_token + model.pos_embed[:, :1]).detach().numpy()[0, 0]
    np.testing.assert_allclose(tokens[:, 0].numpy(), np.broadcast_to(expected, (8, 192)), atol=1e-6)
    # the head reads token 0 of the last block's output
    with torch.no_grad():
        logits = model.head(model.norm(outs[names[-1]][:, 0]))
        np.testing.assert_allclose(model(x).numpy(), logits.numpy(), atol=1e-5)
    # the capture averages the patch tokens only
    features = Capture(model, "blocks")(x)
    for name in names:
        patch_mean = outs[name].double().numpy()[:, 1:].mean(axis=1)
        np.testing.assert_allclose(features[name].double().numpy(), patch_mean, atol=1e-5)
        assert not np.allclose(features[name].numpy(), outs[name].numpy().mean(axis=1), atol=1e-5)


# ---------------------------------------------------------------------------------------- linear MLP
def test_linear_mlp_is_exactly_one_affine_map():
    model = models.build("linear-mlp-6x32", 4, (1, 6, 6)).double().eval()
    for layer in model.layers:  # biases start at 0: give them values so that they count
        torch.nn.init.normal_(layer.bias)
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randn(5, 1, 6, 6, dtype=torch.float64)
    a, b = 1.7, -0.6
    with torch.no_grad():
        zero = model(torch.zeros(1, 1, 6, 6, dtype=torch.float64))
        lhs = model(a * x + b * y) - zero
        rhs = a * (model(x) - zero) + b * (model(y) - zero)
    assert zero.abs().min() > 1e-3
    np.testing.assert_allclose(lhs.numpy(), rhs.numpy(), rtol=1e-10, atol=1e-10)
    # the same map from the weights, composed in numpy
    weight, bias = np.eye(36), np.zeros(36)
    for layer in model.layers:
        w, c = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        weight, bias = w @ weight, w @ bias + c
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), x.numpy().reshape(5, 36) @ weight.T + bias, rtol=1e-10, atol=1e-10)


def test_the_relu_mlp_is_not_affine():  # the affinity check above can fail
    model = models.build("mlp-3x32", 4, (36,)).double().eval()
    x, y = torch.randn(5, 36, dtype=torch.float64), torch.randn(5, 36, dtype=torch.float64)
    with torch.no_grad():
        zero = model(torch.zeros(1, 36, dtype=torch.float64))
        assert not torch.allclose(model(x + y) - zero, (model(x) - zero) + (model(y) - zero), atol=1e-6)


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny() -> data.Dataset:
    return data.load(TINY_DATA)


# vit-t-p14: the full ViT-T (12 blocks, width 192) with 14x14 patches, 4 tokens + the class token at 28 px,
# a tenth of the default's cost; the linear MLP needs lr 0.01 with SGD (0.1 diverges).
@pytest.mark.parametrize("spec, recipe, lr", [
    ("cifar-resnet-8", "sgd", None), ("vit-t-p14", "adamw", None), ("linear-mlp-6x64", "sgd", 0.01),
])
def test_one_epoch_of_training_then_one_rank_row_per_block(spec, recipe, lr, tiny, tmp_path):
    result = train(spec, tiny, epochs=1, out=tmp_path, recipe=recipe, lr=lr, batch_size=25, progress=False,
                   early_checkpoints=False)
    assert len(result.history) == 1 and np.isfinite(result.history["train_loss"].iloc[0])
    results = analyze_layers(result.final_checkpoint, tiny, metrics="rank", points="blocks", progress=False)
    blocks = models.probe_points(result.model, "blocks")
    for split in ("train", "test"):
        rows = results.table[(results.table.split == split) & (results.table.layer > 0)]
        assert rows["point"].tolist() == blocks
        assert (rows["metric"] == "rank").all() and rows["value"].between(1, len(tiny.train)).all()


# ---------------------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("spec, shape, error, message", [
    ("cifar-resnet-40", (3, 32, 32), SpecError, r"6n\+2.*e\.g\. 38 or 44"),
    ("cifar-resnet-2", (3, 32, 32), SpecError, "8 is the smallest"),
    ("cifar-resnet-20x0", (3, 32, 32), SpecError, "width multiplier"),
    ("cifar-resnet-20", (40,), ShapeError, "takes images"),
    ("vit-t-p0", (3, 32, 32), SpecError, "patch size"),
    ("vit-t-d0", (3, 32, 32), SpecError, "impossible depth"),
    ("vit-t-p5", (3, 32, 32), ShapeError, "5x5 patches"),
    ("vit-t", (3, 30, 30), ShapeError, "multiple of 4"),
    ("vit-s", (3, 32, 32), SpecError, "vit specs look like vit-t"),
    ("linear-mlp-1x64", (1, 28, 28), SpecError, "impossible depth"),
    ("linear-mlp-3x0", (1, 28, 28), SpecError, "impossible width"),
])
def test_bad_specs(spec, shape, error, message):
    with pytest.raises(error, match=message):
        models.build(spec, 10, shape)


@pytest.mark.parametrize("spec", ["cifar-resnet-40", "vit-t-d0", "linear-mlp-1x8"])
def test_check_spec_refuses_without_building(spec):
    with pytest.raises(SpecError):
        models.check_spec(spec)


def test_families_are_listed():
    families = {row["family"]: row["example"] for row in models.list_models()}
    assert families["cifar-resnet"] == "cifar-resnet-38x2" and families["vit"] == "vit-t"
    assert families["linear-mlp"] == "linear-mlp-6x256"
    for spec in ("cifar-resnet-38x2", "vit-t", "linear-mlp-6x256", "cifar-resnet-110x4", "vit-t-p2-d24"):
        models.check_spec(spec)
