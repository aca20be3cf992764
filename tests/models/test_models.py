import pytest
import torch
from torch import nn

from tunnelscope import models
from tunnelscope.errors import CheckpointError, ProbePointError, ShapeError, SpecError

ZOO = ["mlp-4x32", "vgg11-w0.25", "vgg13-w0.25", "vgg16-w0.25", "vgg19-w0.25", "vggm11-w0.25", "vggm17-w0.25",
       "vggm11-nopool-w0.25", "vggm17-nopool-w0.25", "resnet18-w0.25", "resnet34-w0.25",
       "resnet18-imagenet-w0.25", "convnet-3x16"]


@pytest.mark.parametrize("spec, expected", [("vggm11", 10), ("vggm17", 16), ("resnet18", 17), ("resnet34", 33),
                                            ("vggm11-nopool", 10), ("mlp-12x256", 11), ("convnet-4x8", 6)])
def test_conv_probe_point_counts_match_the_papers(spec, expected):
    model = models.build(spec, 10, (3, 32, 32))
    assert len(models.probe_points(model, "conv")) == expected


@pytest.mark.parametrize("spec, expected", [("mlp-12x256", 11), ("vgg19", 16), ("vgg11", 8), ("resnet18", 9),
                                            ("resnet34", 17), ("convnet-4x8", 6)])
def test_blocks_probe_point_counts(spec, expected):
    assert len(models.probe_points(models.build(spec, 10, (1, 28, 28)), "blocks")) == expected


@pytest.mark.parametrize("spec", ZOO)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shapes_at_28_and_32_px(spec, shape):
    model = models.build(spec, 7, shape).eval()
    with torch.no_grad():
        assert model(torch.randn(3, *shape)).shape == (3, 7)


@pytest.mark.parametrize("spec", ["mlp-4x32", "vgg11-w0.25", "resnet18-w0.25", "convnet-2x8"])
def test_probe_points_fire_once_in_forward_order(spec):
    model = models.build(spec, 5, (3, 32, 32)).eval()
    names = models.probe_points(model, "blocks") + models.probe_points(model, "conv")
    seen: list[str] = []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.append(n)) for n in names]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
    for key in ("blocks", "conv"):
        order = [n for n in seen if n in set(models.probe_points(model, key))]
        assert order == models.probe_points(model, key)


def test_block_outputs_are_post_activation_and_conv_outputs_pre_norm():
    model = models.build("vggm11-w0.25", 10, (3, 32, 32)).eval()
    outs = {}
    modules = dict(model.named_modules())
    for n in (model.probe_sets["blocks"][0], model.probe_sets["conv"][0]):
        modules[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.clone()))
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    block, conv = outs[model.probe_sets["blocks"][0]], outs[model.probe_sets["conv"][0]]
    assert block.min() >= 0 and conv.min() < 0
    bn = modules[model.probe_sets["blocks"][0]][1]
    assert torch.allclose(torch.relu(bn(conv)), block)


def test_torchvision_models_and_local_weights(tmp_path):
    a = models.build("tv:resnet18", 10, (3, 32, 32))
    assert len(models.probe_points(a, "conv")) == 17 and len(models.probe_points(a, "blocks")) == 8
    torch.save(a.net.state_dict(), tmp_path / "w.pth")
    b = models.build("tv:resnet18", 10, (3, 32, 32), weights=tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
    with pytest.raises(CheckpointError, match="do not fit"):
        models.build("tv:resnet34", 10, (3, 32, 32), weights=tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        models.build("tv:resnet18", 10, (3, 32, 32), weights=tmp_path / "missing.pth")


class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
        self.shared = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.shared(self.stage2(self.stage1(x)))
        return self.head(self.shared(x.mean((2, 3))))


def test_any_module_with_glob_patterns():
    net = _UserNet()
    assert models.probe_points(net, ["stage*", "stage*.*"]) == ["stage1", "stage1.0", "stage1.1", "stage2", "stage2.0",
                                                               "stage2.1"]
    assert models.probe_points(net, "stage?") == ["stage1", "stage2"]
    assert models.probe_points(net, "conv") == ["stage1.0", "stage2.0"]
    x = torch.randn(2, 1, 8, 8)
    assert models.order_by_execution(net, ["stage2", "stage1"], x) == ["stage1", "stage2"]
    with pytest.raises(ProbePointError, match="more than once"):
        models.order_by_execution(net, ["shared"], x)
    with pytest.raises(ProbePointError, match="no module"):
        models.probe_points(net, ["layer*"])
    # no repeated composite blocks: the repeated activations stand for the layers (test_default_blocks.py)
    assert models.probe_points(net, "blocks") == ["stage1.1", "stage2.1", "shared"]


@pytest.mark.parametrize("spec, shape, error, message", [
    ("mlp-1x64", (1, 28, 28), SpecError, "impossible depth"),
    ("mlp-4x0", (1, 28, 28), SpecError, "impossible width"),
    ("vgg12", (3, 32, 32), SpecError, "VGG depths"),
    ("resnet50", (3, 32, 32), SpecError, "resnet specs look like"),
    ("vgg11-w0", (3, 32, 32), SpecError, "width multiplier"),
    ("mlp-4x8[bn=0]", (1, 28, 28), SpecError, "takes no"),
    ("tv:not_a_model", (3, 32, 32), SpecError, "unknown torchvision model"),
    ("vgg11", (1, 40), ShapeError, "takes images"),
    ("tv:resnet18", (1, 28, 28), ShapeError, "channels"),
])
def test_bad_model_specs(spec, shape, error, message):
    with pytest.raises(error, match=message):
        models.build(spec, 10, shape)


@pytest.mark.parametrize("family", [f for f in models.FAMILIES if f.name != "tv"], ids=lambda f: f.name)
def test_each_familys_declared_example_point_counts_equal_a_build(family):
    """`tunnelscope models` lists the declared counts without building anything; they must be true."""
    from optional import require

    if family.name in ("timm", "hf"):
        require({"timm": "timm", "hf": "transformers"}[family.name])
    model = models.build(family.example, 10, (3, 32, 32))
    counts = {k: len(v) for k, v in model.probe_sets.items()}
    assert family.example_points == (counts.get("blocks"), counts.get("conv"))


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil", [((5, 3, 28, 28), 2, 2, 0, True),
                                                                  ((4, 6, 7, 7), 2, 2, 0, True),
                                                                  ((3, 4, 9, 11), 3, 2, 1, False)])
def test_the_zoos_max_pool_gives_torchs_values_and_gradients(shape, kernel, stride, padding, ceil):
    """Pooled channels-last without gradients (odd sides with ceil_mode included), plain with them:
    both equal to nn.MaxPool2d, values and input gradients, and the output comes back contiguous."""
    from tunnelscope.models.base import MaxPool2d

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).relu()  # ties at zero, as after a ReLU
    ours = MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
    torchs = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
    with torch.inference_mode():
        fast = ours(x)
    assert torch.equal(fast, torchs(x)) and fast.is_contiguous()
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours(a).square().sum().backward()
    torchs(b).square().sum().backward()
    assert torch.equal(a.grad, b.grad)
