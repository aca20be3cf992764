"""Per-example and per-class comparison of models (tunnelscope.experiments.agreement), against references
computed here: our own prediction loop, numpy, scikit-learn, scipy, and hand-derived numbers
on models whose predictions are planted."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import cohen_kappa_score, recall_score
from torch import nn

from experiment_contract import check_contract
from tunnelscope import data, train
from tunnelscope.data import Dataset, TensorSplit
from tunnelscope.errors import ConfigError, RunDirectoryError, ShapeError
from tunnelscope.experiments.agreement import (
    AgreementResult,
    compare_predictions,
    exact_sign_test,
    kappa_from_counts,
    sample_indices,
    seed_statistics,
    wilson_interval,
)
from tunnelscope.models import load_model

DIGITS = "digits[per_class=40,test_per_class=20]"


# ---------------------------------------------------------------- planted models


class PlantedLogits(nn.Module):
    """Returns fixed logits per example: the input is the example's id, read through an embedding
    whose row ``i`` is a large one-hot of ``predictions[i]``."""

    def __init__(self, predictions: list[int], num_classes: int) -> None:
        super().__init__()
        self.table = nn.Embedding(len(predictions), num_classes)
        with torch.no_grad():
            self.table.weight.zero_()
            self.table.weight[torch.arange(len(predictions)), torch.tensor(predictions)] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x[:, 0].round().long())


def id_dataset(targets: list[int], num_classes: int) -> Dataset:
    """A dataset whose inputs are the example ids 0..N-1 (unnormalised), on both splits."""
    ids = torch.arange(len(targets), dtype=torch.float32)[:, None]
    split = TensorSplit(ids, torch.tensor(targets), scale=1.0, mean=(0.0,), std=(1.0,))
    return Dataset("planted", split, split, num_classes, (1,), [f"c{k}" for k in range(num_classes)])


def planted(targets: list[int], correct: list[bool], num_classes: int, wrong_shift: list[int] | None = None
            ) -> PlantedLogits:
    """A model right where ``correct`` says, else predicting ``target + shift`` (shift 1 by default)."""
    shifts = wrong_shift or [1] * len(targets)
    preds = [t if ok else (t + s) % num_classes for t, ok, s in zip(targets, correct, shifts)]
    return PlantedLogits(preds, num_classes)


# 12 examples, 3 classes. Correctness of A and B: 5 both right, 3 only A, 1 only B, 3 neither;
# of the 3 both-wrong examples, A and B predict the same wrong class on 2.
PAIR_TARGETS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
PAIR_A = [True] * 5 + [True] * 3 + [False] * 1 + [False] * 3
PAIR_B = [True] * 5 + [False] * 3 + [True] * 1 + [False] * 3
PAIR_B_SHIFT = [1] * 11 + [2]  # the last both-wrong example: A says t+1, B says t+2


def test_planted_pair_gives_hand_computed_numbers():
    ds = id_dataset(PAIR_TARGETS, 3)
    models = [planted(PAIR_TARGETS, PAIR_A, 3), planted(PAIR_TARGETS, PAIR_B, 3, PAIR_B_SHIFT)]
    result = compare_predictions(models, ds, labels=["A", "B"], device="cpu", progress=False)
    row = result.pairs.iloc[0]
    # agreement: 5 both right + 2 same wrong class; overlap: 3 both wrong of 7 with an error
    assert row["agreement"] == pytest.approx(float(Fraction(7, 12)))
    assert (row["both_wrong"], row["either_wrong"]) == (3, 7)
    assert row["error_overlap"] == pytest.approx(float(Fraction(3, 7)))
    # p_o = 8/12, p_A = 8/12, p_B = 6/12, p_e = 1/2: kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert row["kappa"] == pytest.approx(1 / 3)
    # exact McNemar on 3 vs 1 discordant pairs: 2 * (C(4,0) + C(4,1)) / 2^4 = 10/16
    assert row["p_mcnemar"] == pytest.approx(10 / 16)
    assert result.models["accuracy"].tolist() == pytest.approx([8 / 12, 6 / 12])


def test_a_model_compared_with_itself_agrees_fully():
    targets = [0, 1, 2, 0, 1, 2, 0, 1]
    net = planted(targets, [True, False, True, True, False, True, False, True], 3)
    result = compare_predictions([net, net], id_dataset(targets, 3), labels=["m", "m again"], device="cpu",
                                 progress=False)
    row = result.pairs.iloc[0]
    assert 0 < result.models["accuracy"].iloc[0] < 1
    assert (row["agreement"], row["kappa"], row["error_overlap"], row["p_mcnemar"]) == (1.0, 1.0, 1.0, 1.0)
    np.testing.assert_array_equal(result.agreement_matrix().to_numpy(), np.ones((2, 2)))


# ---------------------------------------------------------------- groups on planted models

# 20 examples: class 0 is ids 0-9, class 1 ids 10-19. Which ids each model gets right:
GROUP_TARGETS = [0] * 10 + [1] * 10
GROUP_RIGHT = {
    "A1": set(range(0, 8)) | set(range(10, 16)),   # class 0: 0.8, class 1: 0.6
    "A2": set(range(0, 6)) | set(range(10, 14)),   # 0.6, 0.4
    "B1": set(range(0, 3)) | set(range(10, 15)),   # 0.3, 0.5
    "B2": set(range(0, 5)) | set(range(15, 20)),   # 0.5, 0.5
}


@pytest.fixture(scope="module")
def grouped() -> AgreementResult:
    models = [planted(GROUP_TARGETS, [i in GROUP_RIGHT[m] for i in range(20)], 2) for m in GROUP_RIGHT]
    return compare_predictions(models, id_dataset(GROUP_TARGETS, 2), labels=list(GROUP_RIGHT),
                               groups=["A", "A", "B", "B"], device="cpu", progress=False)


def sign_test_p(wins: int, losses: int) -> float:
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_group_table_compares_architectures_with_seeds(grouped):
    table = grouped.group_classes
    assert len(table) == 2 and set(table[["group_a", "group_b"]].itertuples(index=False)) == {("A", "B")}
    c0, c1 = table.iloc[0], table.iloc[1]
    # class 0: A seeds 0.8, 0.6; B seeds 0.3, 0.5
    assert c0["accuracy_a"] == pytest.approx(0.7) and c0["accuracy_b"] == pytest.approx(0.4)
    assert c0["diff"] == pytest.approx(0.3)
    assert c0["between_abs"] == pytest.approx((0.5 + 0.3 + 0.3 + 0.1) / 4)
    assert c0["within_abs"] == pytest.approx((0.2 + 0.2) / 2)
    assert c0["seed_sd"] == pytest.approx(math.sqrt((4 * 0.1**2) / 2))
    reference = stats.ttest_ind([0.8, 0.6], [0.3, 0.5], equal_var=True)
    assert c0["p_seeds"] == pytest.approx(reference.pvalue)
    assert c0["seed_band"] == pytest.approx(stats.t.ppf(0.975, 2) * c0["seed_sd"] * math.sqrt(1 / 2 + 1 / 2))
    # per example, group A's fraction right minus B's: + on ids 3, 4, 5, 6, 7; 0 elsewhere in class 0
    assert c0["p_examples"] == pytest.approx(sign_test_p(5, 0))
    # class 1: A 0.6, 0.4; B 0.5, 0.5 -> no difference, seeds differ by 0.1 on average
    assert c1["diff"] == pytest.approx(0.0, abs=1e-12)
    assert c1["between_abs"] == pytest.approx(0.1) and c1["within_abs"] == pytest.approx(0.1)
    assert c1["between_over_within"] == pytest.approx(1.0)
    assert c1["p_examples"] == pytest.approx(sign_test_p(1, 1))  # id 14 favours B, id 15 favours A
    expected_bh = stats.false_discovery_control([c0["p_examples"], c1["p_examples"]])
    np.testing.assert_allclose(table["p_examples_bh"], expected_bh)


def test_group_summary_and_example_lists(grouped):
    row = grouped.group_pairs.iloc[0]
    assert row["accuracy_a"] == pytest.approx((14 + 10) / 40) and row["accuracy_b"] == pytest.approx((8 + 10) / 40)
    assert row["class_between_abs"] == pytest.approx((0.3 + 0.1) / 2)
    assert row["class_within_abs"] == pytest.approx((0.2 + 0.1) / 2)
    assert row["classes_outside_seed_band"] == 0  # 0.3 < t(2) * 0.141: two seeds cannot show it
    reference = stats.ttest_ind([14 / 20, 10 / 20], [8 / 20, 10 / 20], equal_var=True)
    assert row["p_seeds"] == pytest.approx(reference.pvalue)
    nobody = sorted(set(range(20)) - set().union(*GROUP_RIGHT.values()))
    assert grouped.hard_for_all().tolist() == nobody == [8, 9]
    only_a = [i for i in range(20) if {i} <= GROUP_RIGHT["A1"] & GROUP_RIGHT["A2"]
              and not {i} & (GROUP_RIGHT["B1"] | GROUP_RIGHT["B2"])]
    assert grouped.hard_only_for("B").tolist() == only_a == [5]
    assert grouped.hard_only_for("A").tolist() == []
    examples = grouped.examples
    assert examples["correct[A]"].tolist() == [sum(i in GROUP_RIGHT[m] for m in ("A1", "A2")) for i in range(20)]
    with pytest.raises(ConfigError, match="unknown group"):
        grouped.hard_only_for("C")


def test_sampled_examples_keep_their_split_indices():
    targets = [k % 3 for k in range(30)]
    plan = [(t + (k % 4 == 0)) % 3 for k, t in enumerate(targets)]
    net = PlantedLogits(plan, 3)
    ds = id_dataset(targets, 3)
    result = compare_predictions([net, net], ds, labels=["a", "b"], max_samples=11, seed=5, device="cpu",
                                 progress=False, batch_size=4)
    chosen, n = data.sample_split(ds.test, 11, 5)
    assert n == 11 and len(result.indices) == 11
    np.testing.assert_array_equal(result.indices, chosen.x[:, 0].long().numpy())  # the same draw as analyze's
    np.testing.assert_array_equal(result.predictions[0], np.array(plan)[result.indices])
    np.testing.assert_array_equal(result.targets, np.array(targets)[result.indices])
    assert sample_indices(30, None, 0).tolist() == list(range(30))


# ---------------------------------------------------------------- trained models


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[list, Dataset]:
    """Three tiny MLPs, 2 epochs on 400 digits: two seeds of mlp-3x32 and one mlp-4x32."""
    ds = data.load(DIGITS)
    root = tmp_path_factory.mktemp("agreement")
    runs = [train(spec, ds, epochs=2, out=root / f"{spec}-{seed}", seed=seed, batch_size=32, progress=False,
                  early_checkpoints=False, device="cpu")
            for spec, seed in (("mlp-3x32", 0), ("mlp-3x32", 1), ("mlp-4x32", 0))]
    return [r.checkpoints[-1] for r in runs], ds


def own_predictions(checkpoint, ds: Dataset) -> np.ndarray:
    """Predicted classes by a loop written here: load, eval, batches of 7, argmax."""
    net, _ = load_model(checkpoint)
    net.eval()
    with torch.no_grad():
        return np.concatenate([net(x).argmax(1).numpy() for x, _ in ds.test.batches(7)])


def test_pair_table_matches_numpy_and_scikit_learn(trained):
    checkpoints, ds = trained
    result = compare_predictions(checkpoints, ds, device="cpu", progress=False)
    assert result.labels == ["mlp-3x32 s0", "mlp-3x32 s1", "mlp-4x32 s0"]
    assert result.groups == ["mlp-3x32", "mlp-3x32", "mlp-4x32"]
    y = ds.test.labels.numpy()
    preds = [own_predictions(c, ds) for c in checkpoints]
    np.testing.assert_array_equal(result.predictions, np.stack(preds))
    for k, p in enumerate(preds):
        assert result.models["accuracy"].iloc[k] == pytest.approx(np.mean(p == y))
    assert len(result.pairs) == 3
    for row in result.pairs.itertuples():
        a, b = preds[result.labels.index(row.model_a)], preds[result.labels.index(row.model_b)]
        right_a, right_b = a == y, b == y
        assert 0 < right_a.mean() < 1 and 0 < right_b.mean() < 1
        assert row.agreement == pytest.approx(np.mean(a == b))
        assert row.error_overlap == pytest.approx(np.sum(~right_a & ~right_b) / np.sum(~right_a | ~right_b))
        assert row.kappa == pytest.approx(cohen_kappa_score(right_a, right_b))
        assert row.same_group == (row.group_a == row.group_b)


def test_per_class_accuracies_weight_up_to_the_overall_accuracy(trained):
    checkpoints, ds = trained
    result = compare_predictions(checkpoints[:2], ds, max_samples=150, seed=3, device="cpu", progress=False)
    classes = result.classes
    y = result.targets
    for k, label in enumerate(result.labels):
        rows = classes[classes["model"] == label]
        weighted = float((rows["n"] / rows["n"].sum() * rows["accuracy"]).sum())
        assert weighted == pytest.approx(result.models["accuracy"].iloc[k])
        recall = recall_score(y, result.predictions[k], labels=list(range(10)), average=None, zero_division=np.nan)
        np.testing.assert_allclose(rows["accuracy"].to_numpy(), recall)
        assert rows["n"].tolist() == np.bincount(y, minlength=10).tolist()


def test_save_writes_tables_figure_and_config_and_loads_back(trained, tmp_path):
    checkpoints, ds = trained
    result = compare_predictions(checkpoints, ds, groups=["small", "small", "deeper"], device="cpu", progress=False)
    paths = result.save(tmp_path / "agree")
    names = {p.name for p in paths}
    assert {"models.csv", "pairs.csv", "classes.csv", "group_pairs.csv", "group_classes.csv", "examples.csv",
            "predictions.csv", "agreement.png", "agreement.svg", "report.html", "config.json"} == names
    assert (tmp_path / "agree" / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / "agree" / "config.json").read_text())
    assert config["samples"] == 200 and config["groups"] == ["small", "small", "deeper"]
    assert "wilson" in config["interval"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "agree" / "pairs.csv"), result.pairs, check_dtype=False)
    loaded = AgreementResult.load(tmp_path / "agree")
    np.testing.assert_array_equal(loaded.predictions, result.predictions)
    pd.testing.assert_frame_equal(loaded.group_classes, result.group_classes)
    assert not list((tmp_path / "agree").glob(".*.tmp"))
    with pytest.raises(RunDirectoryError):
        AgreementResult.load(tmp_path / "nothing here")
    check_contract(result, tmp_path)


def test_the_figure_drawn_from_saved_tables_shows_the_computed_numbers(trained):
    from tunnelscope.report.agreement import agreement_matrix

    checkpoints, ds = trained
    result = compare_predictions(checkpoints, ds, groups=["small", "small", "deeper"], device="cpu", progress=False)
    np.testing.assert_allclose(agreement_matrix(result.pairs, result.labels).to_numpy(),
                               result.agreement_matrix().to_numpy())
    fig = result.figure(("deeper", "small"))  # the reverse of the table's order: the bars flip sign
    bars = [p.get_height() for p in fig.axes[1].patches][len(result.class_names):]  # after the seed band
    rows = result.group_classes.sort_values("class")
    np.testing.assert_allclose(bars, -rows["diff"].to_numpy())


# ---------------------------------------------------------------- the statistics on their own


def test_kappa_and_sign_test_match_references():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(50) < rng.random(), rng.random(50) < rng.random()
        both, only_a, only_b = (a & b).sum(), (a & ~b).sum(), (~a & b).sum()
        kappa = float(kappa_from_counts(both, only_a, only_b, 50 - both - only_a - only_b))
        reference = cohen_kappa_score(a, b)
        assert (np.isnan(kappa) and np.isnan(reference)) or kappa == pytest.approx(reference)
        assert exact_sign_test(only_a, only_b) == pytest.approx(sign_test_p(int(only_a), int(only_b)))
    assert exact_sign_test(0, 0) == 1.0


def test_wilson_interval_matches_its_formula():
    z = stats.norm.ppf(0.975)
    for k, n in ((0, 10), (7, 10), (181, 200), (50, 50)):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))


def test_seed_statistics_match_a_t_test_with_unequal_seed_counts():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 6)), rng.random((2, 6))
    out = seed_statistics(a, b)
    for c in range(6):
        assert out["p_seeds"][c] == pytest.approx(stats.ttest_ind(a[:, c], b[:, c], equal_var=True).pvalue)
        assert (abs(out["diff"][c]) > out["seed_band"][c]) == (out["p_seeds"][c] < 0.05)
    within = [abs(a[0] - a[1]), abs(a[0] - a[2]), abs(a[1] - a[2]), abs(b[0] - b[1])]
    np.testing.assert_allclose(out["within_abs"], np.mean(within, axis=0))
    one_each = seed_statistics(a[:1], b[:1])
    assert np.isnan(one_each["within_abs"]).all() and np.isnan(one_each["p_seeds"]).all()


# ---------------------------------------------------------------- refused input


def test_bad_input_is_refused_with_one_line():
    targets = [0, 1, 0, 1]
    ds = id_dataset(targets, 2)
    net = planted(targets, [True] * 4, 2)
    with pytest.raises(ConfigError, match="at least two models"):
        compare_predictions([net], ds, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="3 groups for 2 models"):
        compare_predictions([net, net], ds, groups=["a", "b", "c"], device="cpu", progress=False)
    with pytest.raises(ConfigError, match="labels must differ"):
        compare_predictions([net, net], ds, labels=["x", "x"], device="cpu", progress=False)
    with pytest.raises(ConfigError, match="split"):
        compare_predictions([net, net], ds, split="val", device="cpu", progress=False)
    with pytest.raises(ShapeError, match="logits of shape"):
        compare_predictions([net, PlantedLogits([0, 1, 2, 0], 3)], ds, device="cpu", progress=False)
