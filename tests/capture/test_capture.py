import pytest
import torch
import torch.nn.functional as F
from torch import nn

from references import hooked_outputs
from tunnelscope import models
from tunnelscope.capture import Capture, Reduction
from tunnelscope.errors import SpecError


def _conv_model():
    return models.build("vggm11-w0.25", 10, (3, 32, 32)).eval()


@pytest.mark.parametrize("reduce", ["pool2", "gap", "pool4", "flatten"])
def test_conv_reductions_match_manual(reduce):
    model, x = _conv_model(), torch.randn(3, 3, 32, 32)
    cap = Capture(model, "blocks", reduce=reduce, max_dim=10**6)
    with torch.no_grad():
        feats = cap(x)
    raw = hooked_outputs(model, cap.names, x)
    for name in cap.names:
        r = raw[name]
        if reduce == "gap":
            want = r.mean((2, 3))
        elif reduce == "flatten" or r.shape[-1] <= int(reduce[-1]):
            want = r.flatten(1)
        else:
            want = F.adaptive_avg_pool2d(r, int(reduce[-1])).flatten(1)
        torch.testing.assert_close(feats[name], want)
        assert cap.layout[name]["dims"] == want.shape[1]


def test_pool2_flattens_maps_already_small():
    model = _conv_model()
    cap = Capture(model, "blocks")
    with torch.no_grad():
        cap(torch.randn(2, 3, 32, 32))
    last = cap.layout[cap.names[-1]]
    assert last["raw_shape"][1:] == [2, 2] and last["dims"] == 4 * last["raw_shape"][0]


def test_projection_is_seeded_and_wide_layers_are_subsampled():
    model, x = _conv_model(), torch.randn(4, 3, 32, 32)
    a = Capture(model, "blocks", reduce="project:32", seed=1)
    b = Capture(model, "blocks", reduce="project:32", seed=1)
    c = Capture(model, "blocks", reduce="project:32", seed=2)
    with torch.no_grad():
        fa, fb, fc = a(x), b(x), c(x)
    name = a.names[0]
    assert fa[name].shape == (4, 32) and torch.equal(fa[name], fb[name]) and not torch.equal(fa[name], fc[name])
    capped = Capture(model, "blocks", reduce="flatten", max_dim=100)
    with torch.no_grad():
        f = capped(x)
    assert all(v.shape[1] <= 100 for v in f.values())
    assert "subset of 100" in capped.layout[capped.names[0]]["reduction"]


def test_forward_stops_after_the_deepest_point():
    model = models.build("mlp-6x16", 3, (1, 8, 8)).eval()
    ran = []
    model.classifier.register_forward_hook(lambda *a: ran.append("classifier"))
    model.blocks[4].register_forward_hook(lambda *a: ran.append("last block"))
    cap = Capture(model, ["blocks.1", "blocks.2"])
    with torch.no_grad():
        feats = cap(torch.randn(2, 1, 8, 8))
    assert list(feats) == ["blocks.1", "blocks.2"] and ran == []
    with torch.no_grad():
        Capture(model, "blocks")(torch.randn(2, 1, 8, 8))
    assert ran == ["last block"]


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.layer = nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        t = self.layer(torch.cat([self.class_token.expand(len(x), -1, -1) + 100, x], 1))
        return self.head(t[:, 0])


def test_token_sequences_average_patch_tokens_without_the_class_token():
    model = _Tokens()
    x = torch.randn(2, 5, 4)
    feats = Capture(model, ["layer"])(x)
    torch.testing.assert_close(feats["layer"], x.mean(1))


def test_bad_reduction():
    for bad in ("pool0", "mean", "project:", "project:-3"):
        with pytest.raises(SpecError, match="valid: pool2"):
            Reduction.parse(bad)


def test_features_do_not_alias_outputs_rewritten_in_place():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 3)).eval()
    x = torch.randn(32, 8)
    with torch.no_grad():
        feats = Capture(model, ["0", "2"])(x)
        assert feats["0"].min() < 0
        torch.testing.assert_close(feats["0"], model[0](x))


def test_projection_is_capped_like_any_wide_layer():
    model = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2))
    cap = Capture(model, ["0"], reduce="project:50", max_dim=20)
    with torch.no_grad():
        assert cap(torch.randn(3, 4))["0"].shape == (3, 20)
    assert "subset of 20" in cap.layout["0"]["reduction"]


class _RNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_three_dimensional_outputs_are_tokens_or_1d_maps():
    rnn = _RNN()
    x = torch.randn(5, 7, 4)
    with torch.no_grad():
        torch.testing.assert_close(Capture(rnn, ["rnn"])(x)["rnn"], rnn.rnn(x)[0].mean(1))
    conv = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(120, 2))
    s = torch.randn(2, 1, 40)
    cap = Capture(conv, ["0"])
    with torch.no_grad():
        torch.testing.assert_close(cap(s)["0"], F.adaptive_avg_pool1d(conv[0](s), 2).flatten(1))
    assert cap.layout["0"]["dims"] == 6
