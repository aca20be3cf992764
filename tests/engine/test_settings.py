"""One settings object: constraints declared as data, one validator, facades mapped in one place,
metric options in the spec grammar."""

from __future__ import annotations

import pandas as pd
import pytest

from tunnelscope import analyze, data
from tunnelscope.engine import analyze_layers
from tunnelscope.engine.settings import (
    CONSTRAINTS,
    DEFAULTS,
    FIELDS,
    AnalysisSettings,
    metric_options,
    settings_from,
    split_request,
    with_metric_options,
)
from tunnelscope.errors import ConfigError, SpecError

BAD = {"points": 3, "reduce": 2, "max_dim": 0, "include_input": "yes", "input_cache": 1, "batch_size": 0, "device": 1,
       "max_samples": 0, "max_train": -1, "max_test": 1.5, "seed": -1, "probe": "lbfgs", "resamples": -1,
       "ncc_eps": 1.5, "cka_passes": 0, "cka_random": -1, "ridge": 0.0, "precision": "float16", "data_root": 5,
       "progress": "no"}


def test_every_field_has_a_declared_constraint_and_a_case_here():
    assert set(CONSTRAINTS) == FIELDS == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_broken_constraint_is_one_line_naming_the_setting(name):
    with pytest.raises(ConfigError) as err:
        AnalysisSettings(**{name: BAD[name]})
    message = str(err.value)
    assert message.startswith(f"{name} ") and "\n" not in message and repr(BAD[name]) in message
    AnalysisSettings(**{name: DEFAULTS[name]})  # the default itself is valid


def test_keywords_left_at_their_defaults_do_not_override_given_settings():
    given = AnalysisSettings(batch_size=64, seed=3)
    assert settings_from(given, {"batch_size": 256, "seed": 0, "model": "ignored"}) == given
    assert settings_from(given, {"seed": 5}).seed == 5
    assert settings_from(None, {"points": ["a", "b"]}).points == ("a", "b")
    with pytest.raises(ConfigError, match="unknown analysis setting"):
        given.replace(batch=3)


def test_metric_options_in_the_spec_grammar_are_declared_by_their_metric():
    assert split_request("probe, ncc[eps=0.05],cka[passes=10]") == ["probe", "ncc[eps=0.05]", "cka[passes=10]"]
    names, options = metric_options("probe,ncc[eps=0.05],cka[passes=10],ridge[alpha=0.5]")
    assert names == ["probe", "ncc", "cka", "ridge"]
    assert options == {"ncc_eps": 0.05, "cka_passes": 10, "ridge": 0.5}
    assert metric_options("default") == ("default", {})
    with pytest.raises(ConfigError, match="'rank' has no option 'eps'; its options: none"):
        metric_options("rank[eps=1]")
    with pytest.raises(ConfigError, match="must be an integer"):
        metric_options("cka[passes=two]")
    with pytest.raises(SpecError, match="separate metrics by commas"):
        split_request("ncc[eps=0.1]cka")
    with pytest.raises(ConfigError, match="given twice"):
        with_metric_options(AnalysisSettings(ncc_eps=0.2), {"ncc_eps": 0.3})
    with pytest.raises(ConfigError, match="ncc_eps must be <= 1"):
        with_metric_options(AnalysisSettings(), {"ncc_eps": 3.0})


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits[per_class=40,test_per_class=20]")


def test_a_metric_option_equals_the_setting_and_is_recorded(digits):
    by_option = analyze_layers("mlp-3x32", digits, metrics="ncc[eps=0.3]", progress=False)
    by_keyword = analyze_layers("mlp-3x32", digits, metrics="ncc", ncc_eps=0.3, progress=False)
    pd.testing.assert_frame_equal(by_option.table, by_keyword.table)
    assert by_option.config["ncc_eps"] == 0.3 and by_option.summary["ncc_eps"] == 0.3


def test_analyze_with_settings_whole_equals_analyze_with_keywords(digits):
    keywords = dict(metrics="probe,rank", max_samples=120, resamples=20, batch_size=64, seed=2, progress=False)
    settings = AnalysisSettings(max_samples=120, resamples=20, batch_size=64, seed=2, progress=False)
    a = analyze("mlp-3x32", digits, **keywords)
    b = analyze("mlp-3x32", digits, metrics="probe,rank", settings=settings)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.config["seed"] == b.config["seed"] == 2 and b.config["model"]["init_seed"] == 2
