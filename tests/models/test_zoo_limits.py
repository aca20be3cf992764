"""Sizes a spec or a checkpoint can ask a model to have are checked before anything is allocated."""

from __future__ import annotations

import pytest

from tunnelscope import models
from tunnelscope.checkpoint import save_checkpoint
from tunnelscope.errors import CheckpointError, ConfigError
from tunnelscope.models.resolve import load_model


@pytest.mark.parametrize("classes, shape, message", [
    (10**9, (1, 8, 8), "num_classes 1,000,000,000 is above 1,000,000"),
    (10, (1, 8, 10**9), "each dimension must be between 1 and 65,536"),
    (10, (), "each dimension"),
])
def test_impossible_sizes_are_refused(classes, shape, message):
    with pytest.raises(ConfigError, match=message):
        models.build("mlp-3x16", classes, shape)


def test_a_checkpoint_claiming_a_billion_classes_is_refused(tmp_path):
    net = models.build("mlp-3x16", 10, (1, 8, 8))
    path = tmp_path / "forged.pt"
    save_checkpoint(path, net, {"model_spec": "mlp-3x16", "num_classes": 10**9, "input_shape": [1, 8, 8],
                                "data_spec": "digits", "step": 1})
    with pytest.raises(CheckpointError, match="above 1,000,000"):
        load_model(path)
