"""Honest verdicts: degenerate input is refused or flagged, never marked valid."""

import math

import pytest
import torch

from tunnelscope import analyze, data, train
from tunnelscope.engine import analyze_layers
from tunnelscope.errors import InsufficientDataError
from tunnelscope.probes import ProbeConfig
from tunnelscope.verdict import curve_flags

DATA = "fashion-mnist[classes=0-4,per_class=200,test_per_class=60]"
FAST = dict(metrics="probe", resamples=50, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    result = train("mlp-4x32", DATA, epochs=2, out=tmp_path_factory.mktemp("mlp"), batch_size=64, progress=False)
    return result, data.load(DATA)


def _codes(results):
    return {f["code"] for f in results.summary["flags"]}


def _invalid(results, code):
    assert code in _codes(results) and results.summary["verdict_valid"] is False
    assert results.summary["verdict"].startswith("NOT A VALID VERDICT") and code in results.summary["verdict"]


def test_a_trained_model_gets_a_valid_verdict(run):
    result, ds = run
    res = analyze(result.final_checkpoint, ds, **FAST)
    assert res.summary["verdict_valid"] is True and res.summary["model_accuracy"] > 0.7
    assert not any(f["blocking"] for f in res.summary["flags"])


def test_one_class_is_refused_for_training_and_probes():
    with pytest.raises(InsufficientDataError, match="single class"):
        train("mlp-3x16", "digits[classes=3]", epochs=1, out="/nonexistent/never-written", progress=False)
    with pytest.raises(InsufficientDataError, match="single class"):
        analyze("mlp-3x16", "digits[classes=3]", **FAST)


def test_one_class_statistics_are_marked_invalid_not_valid():
    stats = analyze_layers("mlp-3x16", "digits[classes=3]", metrics="rank,nc1,cdnv", progress=False)
    collapse = stats.table[stats.table.metric.isin(["nc1", "cdnv"])]
    assert collapse.value.isna().all() and not collapse.valid.any()
    assert stats.table[stats.table.metric == "rank"].valid.all()


def test_probes_fitted_on_one_sample_are_refused(run):
    result, ds = run
    with pytest.raises(InsufficientDataError, match="training samples for 5 classes"):
        analyze(result.final_checkpoint, ds, max_train=1, **FAST)


def test_ten_samples_in_all_are_refused(run):
    result, ds = run
    with pytest.raises(InsufficientDataError, match="at least 5 per class"):
        analyze(result.final_checkpoint, ds, max_samples=10, **FAST)


def test_one_sample_statistics_are_refused_with_the_projects_error(run):
    result, ds = run
    with pytest.raises(InsufficientDataError, match="at least 2"):
        analyze_layers(result.final_checkpoint, ds, max_samples=1, progress=False)


def test_an_untrained_model_is_flagged(run, tmp_path):
    _, ds = run
    _invalid(analyze("mlp-4x32", ds, **FAST), "untrained")  # a spec without weights
    step0 = train("mlp-4x32", ds, epochs=1, out=tmp_path, batch_size=64, progress=False).checkpoints[0]
    assert step0.name == "step-0000000.pt"
    _invalid(analyze(step0, ds, **FAST), "untrained")


def test_a_near_chance_model_is_flagged(run):
    result, ds = run
    model = result.model
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.arange(5.0))  # always predicts class 4
    res = analyze(model, ds, **FAST)
    assert res.summary["model_accuracy"] == pytest.approx(0.2)
    _invalid(res, "near_chance")


def test_unconverged_probes_are_flagged(run):
    result, ds = run
    res = analyze(result.final_checkpoint, ds, probe=ProbeConfig(max_iter=2), **FAST)
    _invalid(res, "unconverged")
    converged = res.table[(res.table.metric == "probe_converged")]
    assert (converged.value == 0).all()
    assert not res.table[res.table.metric == "probe_acc"].valid.any()


def test_a_tunnel_from_the_first_layer_is_not_called_a_tunnel():
    flags = curve_flags([0.90, 0.91, 0.91, 0.92], input_accuracy=0.5)
    assert [f.code for f in flags] == ["first_layer"] and not flags[0].blocking
    from_input = curve_flags([0.90, 0.91, 0.92], input_accuracy=0.89)
    assert "solvable from the input" in from_input[0].message
    assert curve_flags([0.5, 0.8, 0.9, 0.92], input_accuracy=0.3) == []
    from tunnelscope.verdict import verdict

    text = verdict({"tunnel_start@0.95": 1, "points": 4, "flags": [flags[0].as_dict()]}, ["a", "b", "c", "d"])
    assert text.startswith("no tunnel evidence") and "starts at layer" not in text


def test_a_non_monotone_id_curve_is_flagged():
    flags = curve_flags([0.5, 0.9, 0.8, 0.92], input_accuracy=None)
    assert [f.code for f in flags] == ["non_monotone"] and "10.0 points" in flags[0].message
    assert curve_flags([0.5, 0.9, 0.89, 0.92], input_accuracy=None) == []  # a 1-point dip is noise


def test_thin_data_is_flagged(run):
    result, _ = run
    thin = data.load("fashion-mnist[classes=0-4,per_class=12,test_per_class=12]")
    res = analyze(result.final_checkpoint, thin, **FAST)
    assert "few_samples" in _codes(res)
    assert all(math.isfinite(v) for v in res.summary["tunnel_start@0.95_ci"])


def test_an_unreadable_model_output_is_flagged_but_precomputed_features_are_not():
    from tunnelscope.verdict import model_flags

    codes = [f.code for f in model_flags({}, float("nan"), 10)]
    assert codes == ["accuracy_unknown"]
    assert not model_flags({"precomputed_features": True}, float("nan"), 10)
    assert not model_flags({}, None, 10)  # not measured at all: nothing to say
    assert [f.code for f in model_flags({}, 0.11, 10)] == ["near_chance"]


def test_a_curve_too_short_for_pearson_is_flagged():
    flags = curve_flags([0.5, 0.9], input_accuracy=None)
    assert [f.code for f in flags] == ["short_curve"] and not flags[0].blocking
    assert "short_curve" not in [f.code for f in curve_flags([0.5, 0.9, 0.92], input_accuracy=None)]


def _signed(**extra) -> dict:
    """A summary whose signatures agree: plateau from layer 3 of 8 with 1 pp to come, the rank
    falling from layer 3 to half its maximum at layer 5, OOD peaking at layer 3."""
    base = {"tunnel_start@0.95": 3, "tunnel_start@0.95_ci": [3, 3], "points": 8, "id_gain_after_start": 0.01,
            "id_gain_after_start_ci": [0.004, 0.016], "id_gain_share": 0.1, "rank_collapse_layer": 5,
            "rank_decline_layer": 3,
            "best_transfer_layer": 3, "best_transfer_layer_ci": [2, 3], "mean_retained": 80.0,
            "mean_retained_ci": [78.0, 82.0], "strength": "medium", "flags": []}
    return {**base, **extra}


NAMES = [f"block{i}" for i in range(1, 9)]


def test_a_tunnel_is_claimed_when_the_signatures_agree_and_named_with_intervals():
    from tunnelscope.verdict import tunnel_claim, verdict

    summary = _signed()
    assert tunnel_claim(summary) == (True, "")
    text = verdict(summary, NAMES)
    assert text.startswith("the tunnel starts at layer 3 [3, 3] of 8 (ID accuracy within 5% of its final value "
                           "from layer 3 [3, 3], +1.0 pp [0.4, 1.6] after it, rank falling from layer 3 to half "
                           "its maximum at layer 5, OOD accuracy peaking at layer 3 [2, 3])")
    assert summary["tunnel_claimed"] is True


@pytest.mark.parametrize("change, reason", [
    ({"id_gain_share": 0.35}, "still closes 35% of the error left at layer 3"),
    ({"rank_collapse_layer": 7, "rank_decline_layer": 6}, "the rank starts to fall at layer 6, not near layer 3"),
    ({"rank_collapse_layer": 7, "rank_decline_layer": None}, "the rank starts to fall at layer 7"),  # an old run
    ({"rank_collapse_layer": None, "rank_decline_layer": None}, "the rank does not collapse"),
    ({"best_transfer_layer": 6}, "OOD accuracy peaks at layer 6, after the collapse"),
])
def test_signatures_that_disagree_say_what_is_seen(change, reason):
    from tunnelscope.verdict import tunnel_claim, verdict

    summary = _signed(**change)
    claimed, why = tunnel_claim(summary)
    assert not claimed and reason in why
    text = verdict(summary, NAMES)
    assert text.startswith("no clear tunnel: ID accuracy within 5%") and reason in text


def test_without_rank_no_tunnel_is_claimed_and_the_verdict_says_to_measure_it():
    from tunnelscope.verdict import verdict

    summary = _signed()
    del summary["rank_collapse_layer"]
    assert "rank was not measured (add rank to the metrics)" in verdict(summary, NAMES)


def test_a_tunnel_from_the_first_layer_is_claimed_when_its_signatures_agree():
    """Masarczyk et al.'s MLP on Fashion-MNIST 0-4: the input is already 87% linearly separable, so
    ID accuracy is within 5% from layer 1, the rank falls from layer 1 and OOD accuracy peaks there:
    a tunnel with a one-layer extractor, not "no tunnel evidence"."""
    from tunnelscope.verdict import Flag, verdict

    first = Flag("first_layer", "a probe on the raw input already reaches 0.871", False).as_dict()
    summary = _signed(**{"tunnel_start@0.95": 1, "tunnel_start@0.95_ci": [1, 1], "rank_decline_layer": 1,
                         "rank_collapse_layer": 4, "best_transfer_layer": 1, "best_transfer_layer_ci": [1, 1],
                         "points": 11, "flags": [first]})
    text = verdict(summary, [f"blocks.{i}" for i in range(11)])
    assert text.startswith("the tunnel starts at layer 1 [1, 1] of 11") and "linearly solvable early" in text
    unsigned = _signed(**{"tunnel_start@0.95": 1, "rank_decline_layer": 5, "rank_collapse_layer": 6, "points": 11,
                          "flags": [first]})
    assert verdict(unsigned, [f"blocks.{i}" for i in range(11)]).startswith("no tunnel evidence")


def test_the_rank_decline_starts_at_the_last_layer_near_the_maximum_before_the_collapse():
    from tunnelscope.tunnel import rank_decline_layer

    assert rank_decline_layer([95, 83, 55, 38, 28, 25, 21, 20, 20, 22]) == 1  # the fixture's MLP-12: falls at once
    assert rank_decline_layer([22, 56, 93, 94, 114, 59, 23, 11]) == 5  # the demo's VGG: rises, then falls
    assert rank_decline_layer([100, 98, 95, 60, 40]) == 3  # a shoulder at 95% of the maximum
    assert rank_decline_layer([64, 64, 50, 40]) is None  # no collapse, no decline


def test_rank_collapse_is_where_the_rank_stays_at_or_below_half_its_maximum():
    from tunnelscope.tunnel import rank_collapse_layer

    assert rank_collapse_layer([10, 60, 64, 60, 30, 8, 8, 8]) == 5
    assert rank_collapse_layer([64, 20, 60, 10]) == 4  # a rebound above half resets it
    assert rank_collapse_layer([64, 64, 50, 40]) is None  # never at or below half
    assert rank_collapse_layer([64, 32, 32]) == 2  # half exactly counts


def test_a_dip_below_tau_after_the_start_blocks_the_verdict():
    """The issue's non-monotone curve: 'starts at layer 2' was given as valid."""
    from tunnelscope.verdict import curve_flags

    curve = [0.613, 0.880, 0.563, 0.855, 0.870]
    upper = [0.64, 0.90, 0.59, 0.88, 0.89]
    flags = {f.code: f for f in curve_flags(curve, None, upper=upper)}
    assert flags["dip_after_start"].blocking and "layer(s) 3 after reaching it at layer 2" in flags[
        "dip_after_start"].message
    wide = [0.64, 0.90, 0.83, 0.88, 0.89]  # the dip's interval reaches τ·final: not beyond its interval
    assert "dip_after_start" not in {f.code for f in curve_flags(curve, None, upper=wide)}
