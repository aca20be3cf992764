"""Inputs that could only give a meaningless number are refused in one line, not answered."""

from __future__ import annotations

import pytest

from tunnelscope.errors import ConfigError


def test_agreement_of_a_model_with_itself_is_refused(trained_mlp):
    from tunnelscope.experiments.agreement import compare_predictions

    result, ds = trained_mlp
    with pytest.raises(ConfigError, match="given more than once: agreement between a model and itself"):
        compare_predictions([result.final_checkpoint, str(result.final_checkpoint)], ds, progress=False)
    with pytest.raises(ConfigError, match="mlp-3x16 is given more than once"):
        compare_predictions(["mlp-3x16", "mlp-3x16"], ds, progress=False)


def test_an_unknown_heatmap_metric_is_refused_before_any_analysis(trained_mlp, tmp_path):
    from tunnelscope.experiments.dynamics import analyze_run

    result, _ = trained_mlp
    with pytest.raises(ConfigError, match="no metric 'bogus' to draw as a heatmap; valid: cdnv"):
        analyze_run(result.out, heatmaps=["rank", "bogus"], out=tmp_path / "dyn")
    assert not (tmp_path / "dyn").exists()


def test_explaining_a_constant_target_is_refused():
    import pandas as pd

    from tunnelscope.errors import InsufficientDataError
    from tunnelscope.experiments.explain import explain

    table = pd.DataFrame({"retained": [80.0] * 12, "aug": ["none", "crop"] * 6})
    with pytest.raises(InsufficientDataError, match="takes one value .* in every row: there is nothing to explain"):
        explain(table, "retained", ["aug"])


def test_continual_learning_on_the_same_task_twice_is_refused(tmp_path):
    from tunnelscope.experiments.continual import _load_tasks

    with pytest.raises(ConfigError, match="are the same data"):
        _load_tasks("digits[classes=0-4]", "digits[classes=0-4]", None)
    first, second = _load_tasks("digits[classes=0-4]", "digits[classes=5-9]", None)
    assert first.num_classes == second.num_classes == 5


def test_cross_model_cka_from_a_handful_of_samples_is_refused():
    from tunnelscope.engine import cross_model_cka
    from tunnelscope.errors import InsufficientDataError

    with pytest.raises(InsufficientDataError, match="CKA from 5 samples of digits .* at least 50"):
        cross_model_cka("mlp-3x16", "mlp-4x16", "digits", max_samples=5, batch_size=4, progress=False, device="cpu")


def test_nan_inputs_are_refused_and_a_nan_model_gives_invalid_rows_not_a_crash():
    import numpy as np
    import torch

    import tunnelscope as ts
    from tunnelscope.engine import analyze_layers
    from tunnelscope.errors import ShapeError

    x = np.random.default_rng(0).normal(size=(300, 8)).astype("float32")
    y = np.arange(300) % 3
    x[5, 2] = np.nan
    with pytest.raises(ConfigError, match="holds 1 NaN or infinite input value"):
        ts.analyze("mlp-3x16", (x, y), progress=False, device="cpu")
    net = ts.models.build("mlp-3x16", 3, (8,))
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("nan")
    x[5, 2] = 0.0
    with pytest.raises(ConfigError, match=r"non-finite weights \(blocks.0.0.weight: 1 of 128 values\)"):
        analyze_layers(net, (x, y), metrics="rank", progress=False, device="cpu")
    with torch.no_grad():  # finite weights whose activations overflow: rows marked invalid, with a warning
        for p in net.parameters():
            p.fill_(1e30)
    with pytest.warns(UserWarning, match="NaN/Inf activations"):
        r = analyze_layers(net, (x, y), metrics="rank,ncc,ridge", progress=False, device="cpu")
    layers = r.table[r.table.point != "input"]
    assert not layers.valid.any() and layers.value.isna().all()

    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 100

        def __getitem__(self, i):
            return torch.zeros(8 if i % 2 else 9), i % 2

    with pytest.raises(ShapeError, match=r"items have inputs of different shapes \(but got \[9\] at entry 0"):
        ts.analyze("mlp-3x16", Ragged(), metrics="rank", progress=False, device="cpu")


def test_a_file_that_is_not_a_pytorch_file_is_named_so(tmp_path):
    from tunnelscope.checkpoint import read_checkpoint
    from tunnelscope.errors import CheckpointError

    (tmp_path / "ck.json").write_text('{"a": 1}')
    with pytest.raises(CheckpointError, match=r"is not a PyTorch file \(it starts with b'\{\"a\"'"):
        read_checkpoint(tmp_path / "ck.json")


def test_a_checkpoint_from_another_run_inside_a_run_directory_is_refused(tmp_path):
    """Copied in under an unused step number, another run's checkpoint (same model, other seed) was
    analysed by dynamics and measured by intervene movement as a step of this run."""
    import shutil

    from tunnelscope import train
    from tunnelscope.errors import CheckpointError
    from tunnelscope.experiments.dynamics import analyze_run
    from tunnelscope.experiments.interventions import weight_movement
    from tunnelscope.rundir import checkpoints

    ours = train("mlp-3x16", "digits", epochs=1, out=tmp_path / "ours", progress=False, seed=0)
    theirs = train("mlp-3x16", "digits", epochs=1, out=tmp_path / "theirs", progress=False, seed=1)
    steps = checkpoints(ours.out)
    assert 3 not in steps  # a free step number between the early checkpoints
    shutil.copy(theirs.final_checkpoint, ours.out / "checkpoints" / "step-0000003.pt")
    with pytest.raises(CheckpointError, match=r"step-0000003.pt is not a checkpoint of this run: its seed 1 "
                                              r"\(the run's: 0\)"):
        weight_movement(ours.out)
    with pytest.raises(CheckpointError, match=r"step-0000003.pt is not a checkpoint of this run: its seed 1"):
        analyze_run(ours.out, steps=[3], metrics="rank", max_samples=200, progress=False, device="cpu")
