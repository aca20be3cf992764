"""``timm:`` and ``hf:`` model specs: library models sized to the data, built offline, probed
under the library's own module names."""

from __future__ import annotations

import copy
import json
import pickle
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from optional import require

timm = require("timm")
transformers = require("transformers")

from references import hooked_outputs, numerical_rank  # noqa: E402
from tunnelscope import analyze, data, models  # noqa: E402
from tunnelscope.capture import Capture  # noqa: E402
from tunnelscope.errors import CheckpointError, ConfigError, ShapeError, SpecError  # noqa: E402
from tunnelscope.models.base import ZooModel  # noqa: E402

TIMM_VIT = "timm:vit_tiny_patch16_224-p8-d2-w64"  # ViT-Ti layout cut to 2 blocks of width 64 (1 head), 8 px patches
HF_VIT = "hf:vit-p8-d2-w64"  # the same architecture in transformers
SHAPE = (3, 32, 32)
DATA = "digits[size=32,channels=3,per_class=20,test_per_class=10]"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache folder of the test's own (empty unless the test fills it)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _cache_config(cache, repo: str, config) -> None:
    """Lay ``config`` out in ``cache`` as huggingface_hub stores a downloaded model's files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    config.save_pretrained(folder / "snapshots" / revision)


def _plain_vit(library: str, num_classes: int = 10) -> torch.nn.Module:
    """The library's own model that TIMM_VIT / HF_VIT name, built without tunnelscope."""
    if library == "timm":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=32,
                                 patch_size=8, depth=2, embed_dim=64, num_heads=1)
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=64,
                                    num_attention_heads=1, intermediate_size=256, num_labels=num_classes)
    return transformers.AutoModelForImageClassification.from_config(config)


def _vit_parameters(d: int, tokens: int, blocks: int, classes: int, patch: int, channels: int = 3) -> int:
    """Parameters of a pre-norm ViT (MLP ratio 4, qkv biases, class token, final norm, linear head)."""
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    return (channels * patch * patch * d + d) + d + tokens * d + blocks * per_block + 2 * d + (d * classes + classes)


# ---------------------------------------------------------------------------------------- ViTs: points and names
@pytest.mark.parametrize("spec, library, blocks", [
    (TIMM_VIT, "timm", ["blocks.0", "blocks.1"]),
    (HF_VIT, "hf", ["vit.layers.0", "vit.layers.1"]),
])
def test_tiny_vits_have_one_block_point_per_transformer_block_under_the_librarys_names(spec, library, blocks):
    model = models.build(spec, 10, SHAPE)  # build() runs the dry pass: its points are ordered and checked
    plain = _plain_vit(library)
    assert isinstance(model, ZooModel) and isinstance(model, type(plain))
    assert models.probe_points(model, "blocks") == blocks
    block_list = model.get_submodule(blocks[0].rsplit(".", 1)[0])
    assert len(block_list) == 2 and [model.get_submodule(n) for n in blocks] == list(block_list)
    assert list(model.state_dict()) == list(plain.state_dict())  # the library's names: no wrapper prefix
    assert "conv" not in model.probe_sets  # a ViT's only convolution is its patch embedding
    # 2 blocks of width 64 on 4x4 patches of 8 px + the class token, counted by hand
    assert models.count_parameters(model) == _vit_parameters(64, 16 + 1, 2, 10, 8)
    assert model.describe()["probe_points"]["blocks"] == blocks and model.describe()["spec"] == spec
    # the same weights give the library's own logits (hf: the logits tensor, not an output object)
    model.load_state_dict(plain.state_dict())
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        expected = plain.eval()(x)
        expected = expected if library == "timm" else expected.logits
        out = model.eval()(x)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 10)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(copy.deepcopy(model)(x), expected)  # as the untrained reference copies it


@pytest.mark.parametrize("spec", [TIMM_VIT, HF_VIT, "timm:vit_tiny_patch16_224-p8-d3-w64", "hf:vit-p16-d3-w128"])
def test_vit_blocks_are_token_sequences_read_without_the_class_token(spec):
    model = models.build(spec, 10, SHAPE).eval()
    names = models.probe_points(model, "blocks")
    depth = int(spec.split("-d")[1].split("-")[0])
    assert len(names) == depth and model.class_token is model.get_parameter(model.class_token_name)
    x = torch.randn(4, *SHAPE)
    outs = hooked_outputs(model, names, x)
    patch = int(spec.split("-p")[1].split("-")[0])
    width = int(spec.split("-w")[1])
    assert all(o.shape == (4, 1 + (32 // patch) ** 2, width) for o in outs.values())
    features = Capture(model, "blocks")(x)
    for name in names:
        patch_mean = outs[name].double().numpy()[:, 1:].mean(axis=1)
        np.testing.assert_allclose(features[name].double().numpy(), patch_mean, atol=1e-5)
        assert not np.allclose(features[name].numpy(), outs[name].numpy().mean(axis=1), atol=1e-5)


@pytest.mark.parametrize("spec", [TIMM_VIT, HF_VIT])
def test_hub_models_pickle_into_a_process_that_never_built_one(spec, monkeypatch):
    from tunnelscope.models import hub

    model = models.build(spec, 10, SHAPE).eval()
    blob = pickle.dumps(model)
    monkeypatch.setattr(hub, "_CLASSES", {})  # as in a fresh process: the class is rebuilt from its name
    loaded = pickle.loads(blob)
    assert type(loaded) is not type(model) and type(loaded).__mro__[1:] == type(model).__mro__[1:]
    assert loaded.spec == spec and loaded.probe_sets == model.probe_sets
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


# ---------------------------------------------------------------------------------------- a full analysis
@pytest.fixture(scope="module")
def digits32() -> data.Dataset:
    return data.load(DATA)


@pytest.mark.parametrize("spec", [TIMM_VIT, HF_VIT])
def test_analysis_of_a_tiny_vit_has_one_rank_row_per_block(spec, digits32):
    results = analyze(spec, digits32, metrics="rank", points="blocks", device="cpu", progress=False,
                      include_input=False, resamples=0, seed=1)
    net = models.build(spec, digits32.num_classes, digits32.input_shape, seed=1).eval()  # analyze's random init
    blocks = models.probe_points(net, "blocks")
    assert len(blocks) == 2 and results.summary["points"] == 2
    table = results.table
    for split in ("train", "test"):
        rows = table[(table.metric == "rank") & (table.split == split)]
        assert rows["point"].tolist() == blocks  # one row per transformer block, in order
        assert rows["value"].between(1, 64).all()
    # the test split's rank against numpy on the blocks' outputs, read by the test's own hooks
    x = torch.cat([xb for xb, _ in digits32.test.batches(256)])
    outs = hooked_outputs(net, blocks, x)
    rows = table[(table.metric == "rank") & (table.split == "test")].set_index("point")
    for name in blocks:
        assert rows.loc[name, "value"] == numerical_rank(outs[name].double().numpy()[:, 1:].mean(axis=1))


# ---------------------------------------------------------------------------------------- weights from a file
def test_timm_weights_saved_by_timm_load_by_name(tmp_path):
    plain = _plain_vit("timm")
    path = tmp_path / "vit.pt"
    torch.save(plain.state_dict(), path)
    model = models.build(TIMM_VIT, 10, SHAPE, weights=path).eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain.eval()(x))


def test_hf_weights_load_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    plain = _plain_vit("hf")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    model = models.build(HF_VIT, 10, SHAPE, weights=path).eval()
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain.eval()(pixel_values=x).logits)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable .safetensors"):
        models.build(HF_VIT, 10, SHAPE, weights=tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        models.build(HF_VIT, 7, SHAPE, weights=path)  # a 10-class head for 7 classes


# ---------------------------------------------------------------------------------------- CNNs
def test_timm_resnet_and_convnext_blocks_and_conv_sets():
    resnet = models.build("timm:resnet18", 5, (1, 28, 28))  # one channel: timm's in_chans
    assert resnet.conv1.in_channels == 1 and resnet.fc.out_features == 5
    assert models.probe_points(resnet, "blocks") == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    conv = models.probe_points(resnet, "conv")
    assert len(conv) == 1 + 16 and not any("downsample" in n for n in conv)  # 1x1 shortcut convs left out
    convnext = models.build("timm:convnext_atto", 5, SHAPE)
    depths = [len(stage.blocks) for stage in convnext.stages]
    assert depths == [2, 2, 6, 2]
    assert models.probe_points(convnext, "blocks") == [f"stages.{s}.blocks.{b}" for s in range(4)
                                                       for b in range(depths[s])]
    outs = hooked_outputs(convnext.eval(), models.probe_points(convnext, "blocks"), torch.randn(2, *SHAPE))
    assert [o.shape[1] for o in outs.values()] == [40] * 2 + [80] * 2 + [160] * 6 + [320] * 2  # channels first


def test_hf_convnext_alias_blocks_are_stage_layers_with_channels_first_outputs():
    model = models.build("hf:convnext-d1-w16", 5, SHAPE).eval()
    blocks = models.probe_points(model, "blocks")
    assert blocks == [f"convnext.encoder.stages.{s}.layers.0" for s in range(4)]
    outs = hooked_outputs(model, blocks, torch.randn(2, *SHAPE))
    assert [tuple(o.shape) for o in outs.values()] == [(2, 16 * 2**s, 8 // 2**s, 8 // 2**s) for s in range(4)]
    assert not hasattr(model, "class_token")
    assert all(isinstance(model.get_submodule(n), torch.nn.Conv2d) for n in models.probe_points(model, "conv"))


# ---------------------------------------------------------------------------------------- Hugging Face configs
def test_hf_model_id_builds_from_the_cached_config_sized_to_the_data(empty_hf_cache):
    config = transformers.ViTConfig(image_size=224, num_hidden_layers=3, hidden_size=64, num_attention_heads=1,
                                    intermediate_size=128, num_labels=1000)
    _cache_config(empty_hf_cache, "tiny-org/tiny-vit", config)
    models.check_spec("hf:tiny-org/tiny-vit")
    model = models.build("hf:tiny-org/tiny-vit", 7, (1, 32, 32))
    assert (model.config.image_size, model.config.num_channels, model.config.num_labels) == (32, 1, 7)
    assert models.probe_points(model, "blocks") == ["vit.layers.0", "vit.layers.1", "vit.layers.2"]
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_hf_model_id_from_a_local_directory(tmp_path):
    transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64]).save_pretrained(tmp_path / "cnx")
    model = models.build(f"hf:{tmp_path / 'cnx'}", 3, SHAPE)
    assert len(models.probe_points(model, "blocks")) == 4 and model.config.num_labels == 3


# ---------------------------------------------------------------------------------------- pretrained, on request only
def test_timm_pretrained_weights_are_asked_of_timm_only_on_request(monkeypatch):
    calls = []
    create = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return create(name, pretrained=False, **kwargs)  # no network in tests: the weights are not fetched

    monkeypatch.setattr(timm, "create_model", spy)
    models.build("timm:resnet18", 3, SHAPE)
    models.build("timm:resnet18.a1_in1k", 3, SHAPE, weights="pretrained")
    assert list(dict.fromkeys(calls)) == [("resnet18", False), ("resnet18.a1_in1k", True)]  # img_size: a retry
    with pytest.raises(ConfigError, match="weights='pretrained' is for timm:, hf: specs only"):
        models.build("vit-t-d1", 3, SHAPE, weights="pretrained")
    with pytest.raises(SpecError, match="alias with no pretrained weights"):
        models.build("hf:vit-d1", 3, SHAPE, weights="pretrained")


def test_hf_pretrained_keeps_the_pretrained_size_and_interpolates_positions(empty_hf_cache, monkeypatch):
    config = transformers.ViTConfig(image_size=64, patch_size=8, num_hidden_layers=1, hidden_size=64,
                                    num_attention_heads=1, intermediate_size=128, num_labels=1000)
    _cache_config(empty_hf_cache, "tiny-org/tiny-vit", config)
    auto = transformers.AutoModelForImageClassification
    calls = []

    def fake_from_pretrained(name, config=None, **kwargs):
        calls.append((name, kwargs.get("ignore_mismatched_sizes")))
        return auto.from_config(config)  # no network in tests: random weights stand in for the hub's

    monkeypatch.setattr(auto, "from_pretrained", fake_from_pretrained)
    model = models.build("hf:tiny-org/tiny-vit", 4, SHAPE, weights="pretrained")  # 32 px data, 64 px positions
    assert calls == [("tiny-org/tiny-vit", True)]
    assert model.config.image_size == 64 and model.hf_forward_kwargs == {"interpolate_pos_encoding": True}
    with torch.no_grad():
        assert model.eval()(torch.randn(2, *SHAPE)).shape == (2, 4)
    with pytest.raises(SpecError, match=r"takes 3-channel images; add \[channels=3\]"):
        models.build("hf:tiny-org/tiny-vit", 4, (1, 32, 32), weights="pretrained")


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec, message, checked", [
    ("timm:resnet_eighteen", r"unknown timm model 'resnet_eighteen' in .*; e\.g\. .*resnet.*see timm", True),
    ("timm:resnet18-d2", r"takes no -dL option \(depth\)", False),  # known only when timm builds it
    ("timm:vit_tiny_patch16_224-w100", "multiple of 64", True),
    ("hf:vitx", r"unknown hf: alias 'vitx'.*aliases: vit, convnext", True),
    ("hf:vit-d0", "depth 0", True),
    ("hf:nobody/no-such-model", r"not in the local Hugging Face cache; download it once with network.*hf:vit", True),
])
def test_bad_hub_specs_are_one_line_spec_errors(spec, message, checked, empty_hf_cache):
    if checked:
        with pytest.raises(SpecError, match=message) as error:
            models.check_spec(spec)
        assert "\n" not in str(error.value)
    else:
        models.check_spec(spec)
    with pytest.raises(SpecError, match=message) as error:
        models.build(spec, 10, SHAPE)
    assert "\n" not in str(error.value)


def test_hub_specs_take_images_that_fit():
    with pytest.raises(ShapeError, match="takes images"):
        models.build("timm:resnet18", 10, (40,))
    for spec in ("timm:vit_tiny_patch16_224-d1-w64", "hf:vit-d1-w64"):  # 16 px patches of 8 px images
        with pytest.raises(ShapeError, match=r"cannot take inputs of shape \(3, 8, 8\).*\[size=S\]"):
            models.build(spec, 10, (3, 8, 8))


@pytest.mark.parametrize("module, spec, extra", [
    ("timm", "timm:resnet18", "timm"), ("transformers", "hf:vit", "hf"),
])
def test_a_missing_optional_package_says_how_to_install_it(module, spec, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    for call in (lambda: models.check_spec(spec), lambda: models.build(spec, 10, SHAPE)):
        with pytest.raises(SpecError, match=rf"needs? the optional package {module}: "
                                            rf"pip install 'tunnelscope\[{extra}\]'") as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("spec, kind", [
    ("timm:vit_tiny_patch16_224-d2", "ViT"), ("timm:deit_tiny_patch16_224", "ViT"), ("timm:resnet18", "CNN"),
    ("timm:convnext_atto", "CNN"), ("hf:vit-d2", "ViT"), ("hf:convnext", "CNN"),
    ("hf:google/vit-base-patch16-224", "ViT"), ("hf:facebook/convnext-tiny-224", "CNN"),
])
def test_spec_kind_reads_the_architecture_from_the_name(spec, kind):
    import re

    from tunnelscope.models import FAMILIES
    from tunnelscope.models.hub import spec_kind

    family = next(f for f in FAMILIES if re.fullmatch(f.pattern, spec))
    assert spec_kind(family.name, re.fullmatch(family.pattern, spec).groupdict()) == kind


@pytest.mark.parametrize("spec", ["timm:vit_tiny_patch16_224-p8-d3-w64", "hf:vit-p8-d3-w64"])
def test_cli_points_blocks_gives_one_point_per_transformer_block(spec, tmp_path, capsys):
    from cli_helpers import run_cli

    code, out, err = run_cli(["analyze", "--model", spec, "--data", "digits[size=32,channels=3,per_class=20,"
                              "test_per_class=10]", "--points", "blocks", "--metrics", "rank", "--out",
                              str(tmp_path / "run"), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    points = table[(table.metric == "rank") & (table.layer > 0)].point.unique().tolist()
    assert summary["points"] == 3 and len(points) == 3  # -d3: three transformer blocks


@pytest.mark.parametrize("spec, prefix", [
    ("timm:deit_tiny_distilled_patch16_224-p8-d2-w64", 2),  # class + distillation token
    ("timm:vit_medium_patch16_reg4_gap_256-p8-d2-w64", 4),  # 4 register tokens, no class token
])
def test_token_means_leave_out_every_prefix_token(spec, prefix):
    from tunnelscope.models.base import prefix_tokens

    model = models.build(spec, 10, SHAPE).eval()
    assert prefix_tokens(model) == prefix
    names = models.probe_points(model, "blocks")
    x = torch.randn(3, *SHAPE)
    outs = hooked_outputs(model, names, x)
    capture = Capture(model, "blocks")
    features = capture(x)
    for name in names:
        assert outs[name].shape[1] == prefix + (32 // 8) ** 2
        patch_mean = outs[name].double().numpy()[:, prefix:].mean(axis=1)
        np.testing.assert_allclose(features[name].double().numpy(), patch_mean, atol=1e-5)
        assert capture.layout[name]["reduction"] == f"token mean ({prefix} prefix tokens excluded)"


def test_prefix_tokens_are_counted_from_token_parameters_without_timms_count():
    from tunnelscope.models.base import prefix_tokens

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
            self.register_tokens = torch.nn.Parameter(torch.zeros(1, 3, 8))
            self.proj = torch.nn.Linear(8, 8)

    assert prefix_tokens(Tokens()) == 4 and prefix_tokens(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize("name, blocks, classes", [
    ("efficientnet_b0", 16, {"DepthwiseSeparableConv", "InvertedResidual"}),
    ("ghostnet_100", 16, {"GhostBottleneck"}),
    ("poolformer_s12", 12, {"MetaFormerBlock"}),  # takes no img_size: built without it
])
def test_other_timm_families_get_their_outermost_blocks(name, blocks, classes):
    model = models.build(f"timm:{name}", 5, (3, 64, 64)).eval()
    names = model.probe_sets["blocks"]
    assert len(names) == blocks and {type(model.get_submodule(n)).__name__ for n in names} == classes
    assert not any(a != b and b.startswith(f"{a}.") for a in names for b in names)  # none inside another
    features = Capture(model, "blocks")(torch.randn(2, 3, 64, 64))
    assert list(features) == names and all(f.shape[0] == 2 and torch.isfinite(f).all() for f in features.values())


def test_timm_swin_blocks_are_channels_last_maps_pooled_over_space():
    model = models.build("timm:swin_tiny_patch4_window7_224", 5, (3, 64, 64)).eval()
    names = models.probe_points(model, "blocks")
    assert len(names) == 12 and model.channels_last_points == frozenset(names)
    x = torch.randn(2, 3, 64, 64)
    outs = hooked_outputs(model, names, x)
    features = Capture(model, "blocks")(x)
    for name in names:
        nchw = outs[name].permute(0, 3, 1, 2)
        want = F.adaptive_avg_pool2d(nchw, 2).flatten(1) if nchw.shape[-1] > 2 else nchw.flatten(1)
        torch.testing.assert_close(features[name], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- model objects
def test_an_hf_model_object_is_scored_on_its_logits_and_flagged_near_chance(digits32):
    plain = _plain_vit("hf", digits32.num_classes).eval()  # random init, returns an output object with .logits
    results = analyze(plain, digits32, metrics="probe,rank", points="vit.layers.*", device="cpu",
                      progress=False, resamples=0, max_samples=200)
    accuracy = results.summary["model_accuracy"]
    with torch.no_grad():
        xs, ys = zip(*digits32.test.batches(256))
        expected = float((plain(torch.cat(xs)).logits.argmax(1) == torch.cat(ys)).double().mean())
    assert accuracy == pytest.approx(expected)
    codes = {f["code"] for f in results.summary["flags"]}
    assert "near_chance" in codes and not results.summary["verdict_valid"]
