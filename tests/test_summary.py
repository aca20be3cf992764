"""The summary's keys are declared once (tunnelscope.summary) and the code writes only those."""

from tunnelscope.summary import (
    MEAN_RETAINED_CI,
    REFERENCE_KEYS,
    TAUS,
    TUNNEL_LENGTH,
    TUNNEL_START,
    TUNNEL_START_CI,
    Summary,
    ci_key,
    length_key,
    start_key,
)
from tunnelscope.tunnel import summarize
from tunnelscope.uncertainty import tunnel_intervals


def test_constants_agree_with_the_key_functions():
    assert TUNNEL_START == start_key() == start_key(TAUS[0]) and TUNNEL_LENGTH == length_key()
    assert TUNNEL_START_CI == ci_key(TUNNEL_START) and MEAN_RETAINED_CI == ci_key("mean_retained")
    assert set(REFERENCE_KEYS) <= set(Summary.__annotations__)


def test_every_key_the_tunnel_metrics_write_is_declared():
    import numpy as np

    out = summarize([0.5, 0.8, 0.9, 0.9], 5, {"ood": ([0.4, 0.6, 0.5, 0.4], 5)})
    id_samples, ood_samples = np.tile([0.5, 0.8, 0.9, 0.9], (20, 1)), np.tile([0.4, 0.6, 0.5, 0.4], (20, 1))
    cis = tunnel_intervals(id_samples, 5, {"ood": (ood_samples, 5)})
    keys = set(out) | {ci_key(k) for k in cis if k != "ood"}
    assert keys <= set(Summary.__annotations__), keys - set(Summary.__annotations__)


def test_as_summary_refuses_an_undeclared_key_and_keeps_declared_ones():

    import pytest

    from tunnelscope.summary import as_summary

    assert as_summary({TUNNEL_START: 3, "verdict": "x"}) == {TUNNEL_START: 3, "verdict": "x"}
    with pytest.raises(KeyError, match="tunnel_strat"):
        as_summary({"tunnel_strat@0.95": 3})


def test_every_engine_entry_point_returns_the_one_results_container():
    import typing

    from tunnelscope.engine import analyze, analyze_layers, probe_layers
    from tunnelscope.results import Results

    for fn in (analyze, analyze_layers, probe_layers):
        assert typing.get_type_hints(fn)["return"] is Results, fn.__name__
    assert typing.get_type_hints(Results)["summary"] is Summary


def test_a_summary_read_back_is_checked_into_its_nested_rows():
    import re

    import pytest

    from tunnelscope.summary import check_summary

    good = {"mean_retained_ci": [80.0, None], "flags": [{"code": "c", "message": "m", "blocking": False}],
            "probe_c_sensitivity": [{"C": 0.1, "strength": None}], "ood": [{"name": "x", "pearson": None}]}
    check_summary(good, "s.json")
    damaged = [("mean_retained_ci", [80.0]), ("flags", [{"code": "c", "message": "m"}]),
               ("probe_c_sensitivity", [{"strength": "weak"}]), ("probe_c_sensitivity", [{"C": None}]),
               ("probe_c_sensitivity", [None]), ("ood", [{"name": "x", "best_point": "3"}]),
               ("ood", [{"name": "x", "retained_ci": [1.0, 2.0, 3.0]}]), ("ood_datasets", ["a", None])]
    for key, value in damaged:
        with pytest.raises(ValueError, match=f"s.json: {re.escape(key)}[^ ]* is .*, not .*; the file was changed"):
            check_summary({**good, key: value}, "s.json")
