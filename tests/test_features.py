"""The per-batch feature container shared by capture and metrics."""

import torch

from tunnelscope.features import Features, joint_features, point_views


def _batch() -> Features:
    g = torch.Generator().manual_seed(0)
    return Features({"a": torch.randn(7, 3, generator=g) * 1e3, "b": torch.rand(7, 5, generator=g) + 1e-7})


def test_the_float64_joint_built_from_the_float32_one_equals_converting_each_point():
    features = _batch()
    narrow = features.joint(torch.float32)
    wide = features.joint(torch.float64)  # made from the float32 joint already cached
    expected = torch.cat([x.double() for x in features.values()], dim=1)
    assert wide.dtype == torch.float64 and torch.equal(wide, expected)
    assert narrow.dtype == torch.float32 and torch.equal(narrow.double(), expected)
    views = point_views(features, torch.float64)
    assert all(torch.equal(views[k], x.double()) for k, x in features.items())


def test_a_float64_point_is_not_rounded_through_the_float32_joint():
    features = Features({"a": torch.tensor([[1 + 1e-12, 2.0]], dtype=torch.float64), "b": torch.ones(1, 2)})
    features.joint(torch.float32)
    assert features.joint(torch.float64)[0, 0].item() == 1 + 1e-12


def test_a_run_of_points_is_a_slice_of_the_shared_joint_matrix():
    feats = Features({"input": torch.randn(4, 5), "a": torch.randn(4, 3), "b": torch.randn(4, 2)})
    joint, bounds = joint_features(feats, ["a", "b"], torch.float32)
    assert torch.equal(joint, torch.cat([feats["a"], feats["b"]], 1)) and bounds == [(0, 3), (3, 5)]
    assert joint.data_ptr() == feats.joint(torch.float32)[:, 5:].data_ptr()  # a view: no second copy
    apart, _ = joint_features(feats, ["input", "b"], torch.float32)  # not a run: built on its own
    assert torch.equal(apart, torch.cat([feats["input"], feats["b"]], 1))
