"""Choosing probe points of any model: dotted-level globs, duplicate outputs, execution order
checked for every model, blocks listed with their children, and tv: models under torchvision's
own module names (old ``net.``-prefixed state dicts still load)."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from references import hooked_outputs
from tunnelscope import models
from tunnelscope.capture import Capture, run_points
from tunnelscope.checkpoint import save_checkpoint
from tunnelscope.errors import ProbePointError
from tunnelscope.models.probe_points import glob_regex

pytestmark = pytest.mark.usefixtures("one_thread")


class _Tiny(nn.Module):
    """stem, body (two conv-relu blocks, each returning its relu's output), relu, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                                  nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()))
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.relu(self.body(self.stem(x))).mean((2, 3)))


class _ViTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.GELU()) for _ in range(12))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=10).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32)


# ----------------------------------------------------------------------------- 1. glob semantics
@pytest.mark.parametrize("pattern, expected", [
    ("*", ["stem", "body", "relu", "head"]),
    ("body.*", ["body.0", "body.1"]),
    ("body.?.0", ["body.0.0", "body.1.0"]),
    ("body.**", ["body.0", "body.0.0", "body.0.1", "body.1", "body.1.0", "body.1.1"]),
    ("**.1", ["body.0.1", "body.1", "body.1.1"]),
    ("body.**.1", ["body.0.1", "body.1", "body.1.1"]),
    ("**.relu", ["relu"]),
    ("b**", ["body", "body.0", "body.0.0", "body.0.1", "body.1", "body.1.0", "body.1.1"]),
    ("body.[!0]", ["body.1"]),
    ("?e*", ["relu", "head"]),
    ("body.0", ["body.0"]),
    ("**", ["stem", "body", "body.0", "body.0.0", "body.0.1", "body.1", "body.1.0", "body.1.1", "relu", "head"]),
])
def test_glob_levels_on_a_custom_module(pattern, expected):
    assert models.probe_points(_Tiny(), pattern) == expected


def test_star_stays_within_one_level_and_question_mark_takes_no_dot():
    net = _ViTLike()
    blocks = ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "blocks.7",
              "blocks.8", "blocks.9", "blocks.10", "blocks.11"]
    assert models.probe_points(net, "blocks.*") == blocks
    assert models.probe_points(net, ["blocks.?"]) == blocks[:10]
    assert models.probe_points(net, "blocks.1*") == ["blocks.1", "blocks.10", "blocks.11"]
    assert glob_regex("a?b").fullmatch("a.b") is None and glob_regex("a[!x]b").fullmatch("a.b") is None
    assert glob_regex("a.**").fullmatch("a") is None and glob_regex("a.**").fullmatch("a.b.c")


def test_globs_on_torchvision_resnet18():
    net = _resnet18()
    assert models.probe_points(net, "layer1.*") == ["layer1.0", "layer1.1"]
    assert models.probe_points(net, "layer*.?") == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                                                    "layer3.1", "layer4.0", "layer4.1"]
    assert models.probe_points(net, "**.relu") == ["relu", "layer1.0.relu", "layer1.1.relu", "layer2.0.relu",
                                                   "layer2.1.relu", "layer3.0.relu", "layer3.1.relu",
                                                   "layer4.0.relu", "layer4.1.relu"]
    assert models.probe_points(net, "layer2.0.**") == ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.relu",
                                                       "layer2.0.conv2", "layer2.0.bn2", "layer2.0.downsample",
                                                       "layer2.0.downsample.0", "layer2.0.downsample.1"]


def test_patterns_written_for_the_old_syntax_get_a_hint():
    net = _resnet18()
    with pytest.raises(ProbePointError, match=r"'\*' stays within one level.*'\*\*'"):
        models.probe_points(net, "layer1*conv1")
    with pytest.raises(ProbePointError, match="drop the 'net.' prefix"):
        models.probe_points(models.build("tv:resnet18", 10, (3, 32, 32)), ["net.layer1.*"])
    with pytest.raises(ProbePointError, match="strings"):
        models.probe_points(net, [3])


# ----------------------------------------------------------------------------- 2. duplicate tensors
class _PassThrough(nn.Module):
    """conv -> bn -> act (in place) -> keep (Identity) -> drop (Dropout) -> view (x[:]) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.keep = nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.view = _View()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.view(self.drop(self.keep(x)))
        return self.head(x.mean((2, 3)))


class _View(nn.Module):
    def forward(self, x):
        return x[:]


def _no_warning(model: nn.Module, points, x: torch.Tensor) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return Capture(model, points, example=x).points


def test_points_that_output_the_same_tensor_are_warned_about():
    model, x = _PassThrough(), _x()
    with pytest.warns(UserWarning, match=r"same tensor: act, keep and drop \(.*drop all but one") as caught:
        Capture(model, ["act", "keep", "drop"], example=x)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert _PassThrough().view(x) is not x  # a new tensor object on the same storage...
    with pytest.warns(UserWarning, match=r"same tensor: drop and view"):  # ...is the same tensor too
        Capture(model, ["drop", "view"], example=x)
    # an in-place op between two points changes the values: bn and act are different layers
    assert _no_warning(model, ["conv", "bn", "act"], x) == ["conv", "bn", "act"]


def test_a_block_and_its_last_child_are_the_same_tensor():
    model, x = _Tiny(), _x()
    with pytest.warns(UserWarning, match=r"body\.0\.1 and body\.0; body\.1\.1, body\.1 and body \("):
        Capture(model, ["body", "body.**"], example=x)
    assert _no_warning(model, ["body.*.0"], x) == ["body.0.0", "body.1.0"]


# ----------------------------------------------------------------------------- 3. execution order for every model
class _Reversed(nn.Module):
    """Registered late-then-early, run early-then-late; ``aux`` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Linear(4, 4)
        self.aux = nn.Linear(4, 2)

    def forward(self, x):
        return self.late(self.early(x))


def test_points_of_any_module_are_put_in_execution_order():
    model, x = _Reversed(), torch.randn(3, 4)
    assert models.probe_points(model, ["late", "early"]) == ["late", "early"]
    assert Capture(model, ["late", "early"], example=x).points == ["early", "late"]
    deferred = Capture(model, ["late", "early"], include_input=True)  # no example: the first batch orders them
    feats = deferred(x)
    assert deferred.points == ["early", "late"] and deferred.names == ["input", "early", "late"]
    assert list(feats) == ["input", "early", "late"]
    torch.testing.assert_close(feats["late"], model.late(model.early(x)))
    with pytest.raises(ProbePointError, match=r"never run.*\['aux'\]"):
        Capture(model, "*", example=x)


def test_a_module_run_twice_is_refused_with_its_parent_block():
    net, x = _resnet18(), _x()
    message = r"more than once.*layer1\.0\.relu runs 2 times: choose its parent block 'layer1\.0'"
    with pytest.raises(ProbePointError, match=message):
        Capture(net, ["layer1.0.*"], example=x)
    lazy = Capture(net, ["layer1.0.*"])  # no example: refused at the first batch, before any feature
    with pytest.raises(ProbePointError, match=message):
        lazy(x)
    tv = models.build("tv:resnet18", 10, (3, 32, 32))  # a zoo model: its input shape gives the dry pass
    with pytest.raises(ProbePointError, match=message):
        Capture(tv, ["layer1.0.*"])


def test_the_dry_pass_is_cached_per_model_and_skipped_for_checked_sets():
    net, x = _resnet18(), _x()
    passes = []
    net.register_forward_pre_hook(lambda *_: passes.append(1))
    first = Capture(net, ["layer*.?"], example=x)
    second = Capture(net, ["layer*.?"], example=torch.randn(4, 3, 32, 32))
    assert len(passes) == 1 and first.points == second.points
    Capture(net, ["layer1.*"], example=x)
    assert len(passes) == 2  # other points: another pass
    zoo = models.build("vggm11-w0.25", 10, (3, 32, 32))
    zoo.register_forward_pre_hook(lambda *_: passes.append(1))
    assert Capture(zoo, "blocks").points == zoo.probe_sets["blocks"] and len(passes) == 2


# ----------------------------------------------------------------------------- 4. a block listed with its children
def test_a_block_and_its_children_can_be_listed_together():
    net, x = _resnet18(), _x()
    names = ["layer1", "layer1.0", "layer1.0.conv1"]
    ran = []
    net.layer2.register_forward_hook(lambda *_: ran.append("layer2"))
    raw = hooked_outputs(net, names, x)
    ran.clear()
    outputs, result = run_points(net, names, x)  # given in registration order, not execution order
    assert result is None and ran == [] and set(outputs) == set(names)
    for name in names:
        torch.testing.assert_close(outputs[name], raw[name])
    cap = Capture(net, names)
    with torch.no_grad():
        feats = cap(x)
    assert cap.points == ["layer1.0.conv1", "layer1.0", "layer1"] and list(feats) == cap.points
    for name in names:
        torch.testing.assert_close(feats[name], F.adaptive_avg_pool2d(raw[name], 2).flatten(1))


# ----------------------------------------------------------------------------- 5. tv: models under torchvision's names
class _OldWrapper(nn.Module):
    """The earlier tv: wrapper, whose state-dict keys all start with ``net.``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


def test_tv_models_use_torchvision_module_names_and_keys():
    model, ref = models.build("tv:resnet18", 10, (3, 32, 32)), _resnet18()
    assert [n for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]
    assert list(model.state_dict()) == list(ref.state_dict())
    assert model.probe_sets["blocks"] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                                          "layer4.0", "layer4.1"]
    assert model.probe_sets["conv"][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert len(model.probe_sets["conv"]) == 17 and "fc" not in model.probe_sets["conv"]
    assert models.probe_points(model, "layer1.*") == ["layer1.0", "layer1.1"]
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model, models.ZooModel)
    assert model.net is model and model.describe()["spec"] == "tv:resnet18"
    vit = models.build("tv:vit_b_16", 10, (3, 32, 32))
    assert vit.probe_sets["blocks"][0] == "encoder.layers.encoder_layer_0" and len(vit.probe_sets["blocks"]) == 12
    assert Capture(vit, "blocks").prefix_tokens == 1


def test_tv_weights_load_with_torchvision_keys_and_old_net_keys(tmp_path):
    ref, x = _resnet18(), _x()
    with torch.no_grad():
        want = ref(x)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    torch.save(_OldWrapper(ref).state_dict(), tmp_path / "old.pth")
    for path in ("tv.pth", "old.pth"):
        model = models.build("tv:resnet18", 10, (3, 32, 32), weights=tmp_path / path).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    direct = models.build("tv:resnet18", 10, (3, 32, 32)).eval()
    direct.load_state_dict(_OldWrapper(ref).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(direct(x), want, rtol=0, atol=0)
    meta = {"model_spec": "tv:resnet18", "data_spec": "cifar10", "num_classes": 10, "input_shape": [3, 32, 32]}
    save_checkpoint(tmp_path / "old.pt", _OldWrapper(ref), meta)  # a checkpoint of the earlier wrapper
    loaded, _ = models.load_model(tmp_path / "old.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)


def test_old_net_keys_keep_their_version_metadata():
    """MNASNet refuses a state dict without its version metadata: the stripped keys keep it."""
    ref = torchvision.models.get_model("mnasnet0_5", num_classes=10).eval()
    model = models.build("tv:mnasnet0_5", 10, (3, 32, 32))
    model.load_state_dict(_OldWrapper(ref).state_dict())
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=0, atol=0)


def test_tv_models_copy_pickle_and_take_a_new_head():
    model, x = models.build("tv:resnet18", 10, (3, 32, 32)).eval(), _x()
    with torch.no_grad():
        want = model(x)
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert type(other) is type(model) and other.probe_sets == model.probe_sets
            torch.testing.assert_close(other.eval()(x), want, rtol=0, atol=0)
        model.fc = nn.Linear(512, 3)
        assert model(x).shape == (2, 3)
    model.train()
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- 6. torchvision families
@pytest.mark.parametrize("name, shape, blocks, block_class", [
    ("swin_t", (3, 64, 64), 12, "SwinTransformerBlock"),
    ("googlenet", (3, 64, 64), 9, "Inception"),
    ("inception_v3", (3, 75, 75), 11, None),
    ("efficientnet_b0", (3, 32, 32), 16, "MBConv"),
    ("mobilenet_v3_small", (3, 32, 32), 11, "InvertedResidual"),
    ("densenet121", (3, 32, 32), 7, None),
    ("squeezenet1_0", (3, 64, 64), 8, "Fire"),
])
def test_tv_families_build_with_blocks_and_only_readable_conv_points(name, shape, blocks, block_class):
    """Swin calls its attention Linears through their weights and GoogLeNet/Inception run their
    auxiliary heads only in training: derived sets keep only what one eval pass reads once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's init-weights notice
        model = models.build(f"tv:{name}", 5, shape).eval()
    assert len(model.probe_sets["blocks"]) == blocks
    if block_class is not None:
        assert {type(model.get_submodule(n)).__name__ for n in model.probe_sets["blocks"]} == {block_class}
    points = [p for s in model.probe_sets.values() for p in s]
    calls: dict[str, int] = {}
    handles = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: calls.__setitem__(p, calls.get(p, 0) + 1)) for p in set(points)]
    with torch.no_grad():
        model(torch.randn(2, *shape))
    for h in handles:
        h.remove()
    assert calls == {p: 1 for p in set(points)}
    assert not any("aux" in p.lower() for p in points)


def test_swin_blocks_are_channels_last_maps_pooled_over_space():
    model = models.build("tv:swin_t", 5, (3, 64, 64)).eval()
    names = models.probe_points(model, "blocks")
    assert model.channels_last_points == frozenset(names)
    x = torch.randn(3, 3, 64, 64)
    outs = hooked_outputs(model, names, x)
    capture = Capture(model, "blocks")
    features = capture(x)
    for name in names:
        nhwc = outs[name].double()
        assert nhwc.dim() == 4 and nhwc.shape[-1] in (96, 192, 384, 768)
        want = F.adaptive_avg_pool2d(nhwc.permute(0, 3, 1, 2), 2).flatten(1) if nhwc.shape[1] > 2 \
            else nhwc.permute(0, 3, 1, 2).flatten(1)
        torch.testing.assert_close(features[name].double(), want, rtol=1e-5, atol=1e-5)
        assert capture.layout[name]["reduction"].endswith("(channels-last map)")
