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
