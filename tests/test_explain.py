"""Sweep-level statistics of Harun et al. 2024 (tunnelscope.experiments.explain), checked against scipy,
pandas, brute-force loops and planted effects."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from experiment_contract import check_contract
from optional import require
from tunnelscope.errors import ConfigError, InsufficientDataError
from tunnelscope.experiments.explain import (
    ExplainResult,
    cliffs_delta,
    cliffs_magnitude,
    explain,
    group_means,
    paired_comparison,
    read_table,
    shap_slopes,
)

require("shap")

NOISE = [f"noise{i}" for i in range(5)]


def planted_table(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Five noise variables and a planted linear effect of ``depth`` (2 per level, levels 0..3)."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({name: rng.integers(0, 4, rows) for name in NOISE})
    table["depth"] = rng.integers(0, 4, rows)
    table["score"] = 2.0 * table["depth"] + rng.normal(0, 0.1, rows)
    return table


def brute_force_cliff(a: list[float], b: list[float]) -> float:
    total = 0
    for x in a:
        for y in b:
            total += (y > x) - (y < x)
    return total / (len(a) * len(b))


# -------------------------------------------------------------------------------------- SHAP slopes
def test_planted_numeric_effect_gets_largest_slope() -> None:
    slopes, info = shap_slopes(planted_table(), "score", [*NOISE, "depth"])
    by_variable = slopes.set_index("variable")["slope"]
    assert by_variable.abs().idxmax() == "depth"
    assert info["r2"] > 0.8
    # SHAP of a linear effect b·x is b·(x − mean x); its slope on x / max x is b·max x = 2·3.
    assert by_variable["depth"] == pytest.approx(6.0, rel=0.1)
    assert by_variable[NOISE].abs().max() < 0.1 * by_variable["depth"]
    assert info["model"]["loss"] == "huber" and info["model"]["random_state"] == 0
    assert info["versions"]["shap"] != ""


def test_held_out_r2_separates_a_planted_effect_from_noise() -> None:
    _, planted = shap_slopes(planted_table(200), "score", [*NOISE, "depth"])
    noise = planted_table(200)
    noise["score"] = np.random.default_rng(7).normal(size=len(noise))
    _, pure_noise = shap_slopes(noise, "score", [*NOISE, "depth"])
    assert planted["r2_cv"] > 0.95
    # a boosted model fits noise in-sample, and held-out rows show it
    assert pure_noise["r2"] > 0.3 and pure_noise["r2_cv"] < 0.05


def test_shap_slopes_refuse_too_few_rows() -> None:
    with pytest.raises(InsufficientDataError, match="at least 10 rows"):
        shap_slopes(planted_table(9), "score", ["depth"])


def test_planted_categorical_effect_via_one_hot_sum() -> None:
    rng = np.random.default_rng(1)
    table = pd.DataFrame({name: rng.integers(0, 4, 300) for name in NOISE})
    table["arch"] = rng.choice(["resnet", "vgg", "vit"], 300)
    table["score"] = table["arch"].map({"resnet": 0.0, "vgg": 1.0, "vit": 2.0}) + rng.normal(0, 0.05, 300)
    slopes, info = shap_slopes(table, "score", [*NOISE, "arch"], categorical=["arch"])
    by_variable = slopes.set_index("variable")["slope"]
    assert by_variable.abs().idxmax() == "arch"
    # codes 0, 1, 2 scaled to 0, 0.5, 1 against an effect of 0, 1, 2: slope 2.
    assert by_variable["arch"] == pytest.approx(2.0, rel=0.1)
    assert info["encodings"]["arch"]["one_hot_columns"] == ["arch=resnet", "arch=vgg", "arch=vit"]
    assert info["r2"] > 0.8


def test_l1_normalised_slopes_and_ordinal_strings() -> None:
    table = planted_table(200)
    table["size"] = np.where(table["noise0"] > 1, "large", "small")
    slopes, info = shap_slopes(table, "score", [*NOISE, "depth", "size"], l1_normalise=True)
    assert slopes["slope"].abs().sum() == pytest.approx(1.0)
    np.testing.assert_allclose(slopes["slope"], slopes["slope_raw"] / slopes["slope_raw"].abs().sum())
    assert info["encodings"]["size"] == {"kind": "ordinal", "codes": {"large": 0, "small": 1},
                                         "slope_axis": "value / 1"}


def test_missing_shap_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "shap", None)
    with pytest.raises(ConfigError, match="pip install shap"):
        shap_slopes(planted_table(50), "score", ["depth"])


# -------------------------------------------------------------------------------------- group means
def test_group_means_match_pandas_and_scipy_t() -> None:
    table = planted_table(120, seed=3)
    means = group_means(table, "score", ["depth", "noise1"])
    for variable in ("depth", "noise1"):
        expected = table.groupby(variable)["score"]
        got = means[means["variable"] == variable].set_index("level")
        np.testing.assert_allclose(got["mean"], expected.mean())
        np.testing.assert_allclose(got["std"], expected.std())
        assert list(got["n"]) == list(expected.size())
        for level, values in expected:
            low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
            assert got.loc[level, "ci_low"] == pytest.approx(low)
            assert got.loc[level, "ci_high"] == pytest.approx(high)


# -------------------------------------------------------------------------------- paired comparison
def paired_table(shift: float, seeds: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    base = rng.normal(0.5, 0.01, seeds)
    return pd.DataFrame({"seed": np.tile(np.arange(seeds), 2), "augment": np.repeat([False, True], seeds),
                         "score": np.concatenate([base, base + shift])})


def test_constant_shift_on_paired_rows() -> None:
    result = paired_comparison(paired_table(0.3), "score", "augment", ["seed"]).iloc[0]
    assert (result["level_a"], result["level_b"], result["n_pairs"]) == (False, True, 10)
    assert result["mean_difference"] == pytest.approx(0.3)
    assert result["p_wilcoxon"] == pytest.approx(2 * 0.5**10)  # exact: all 10 signed ranks positive
    assert result["cliffs_delta"] == 1.0 and result["magnitude"] == "large"


def test_cliffs_delta_equals_brute_force_with_ties_and_overlap() -> None:
    table = paired_table(0.005)
    table.loc[3, "score"] = table.loc[13, "score"]  # a tie across the levels
    result = paired_comparison(table, "score", "augment", ["seed"]).iloc[0]
    a, b = table.loc[~table["augment"], "score"].tolist(), table.loc[table["augment"], "score"].tolist()
    assert result["cliffs_delta"] == pytest.approx(brute_force_cliff(a, b))
    assert -1 < result["cliffs_delta"] < 1
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 5, 17).tolist(), rng.integers(0, 5, 11).tolist()
    assert cliffs_delta(x, y) == pytest.approx(brute_force_cliff(x, y))


@pytest.mark.parametrize(("delta", "label"), [(0.0, "negligible"), (0.1469, "negligible"), (0.147, "small"),
                                              (-0.3299, "small"), (0.33, "medium"), (-0.4739, "medium"),
                                              (0.474, "large"), (-1.0, "large")])
def test_magnitude_buckets_at_thresholds(delta: float, label: str) -> None:
    assert cliffs_magnitude(delta) == label


def test_three_levels_give_three_pairs() -> None:
    table = pd.concat([paired_table(0.3).assign(width=w, score=lambda t, w=w: t["score"] + w) for w in (1, 2, 4)])
    result = paired_comparison(table, "score", "width", ["seed", "augment"])
    assert list(zip(result["level_a"], result["level_b"])) == [(1, 2), (1, 4), (2, 4)]
    np.testing.assert_allclose(result["mean_difference"], [1.0, 3.0, 2.0])


# --------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_config_errors(tmp_path) -> None:
    table = planted_table(60)
    with pytest.raises(ConfigError, match="not in the table"):
        group_means(table, "score", ["nope"])
    with pytest.raises(ConfigError, match="not in the table"):
        shap_slopes(table, "missing", ["depth"])
    with pytest.raises(ConfigError, match="not a number"):
        group_means(table.assign(label="x"), "label", ["depth"])
    no_pairs = paired_table(0.3)
    no_pairs.loc[no_pairs["augment"], "seed"] += 100
    with pytest.raises(ConfigError, match="no rows"):
        paired_comparison(no_pairs, "score", "augment", ["seed"])
    with pytest.raises(ConfigError, match="share the same"):
        paired_comparison(table, "score", "depth", ["noise0"])  # many rows per (depth, noise0)
    (tmp_path / "t.txt").write_text("a,b\n")
    with pytest.raises(ConfigError, match="neither .csv nor .parquet"):
        read_table(tmp_path / "t.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(tmp_path / "none.csv")


def test_read_table_csv_and_parquet(tmp_path) -> None:
    table = planted_table(20)
    table.to_csv(tmp_path / "t.csv", index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.csv"), table)
    table.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), table)


# -------------------------------------------------------------------------------------------- bundle
def test_explain_saves_tables_figure_and_config(tmp_path) -> None:
    table = planted_table(160)
    table["seed"] = np.arange(160) % 2
    table["augment"] = table["noise0"] % 2 == 1
    table["score"] = table["score"] + 0.5 * table["augment"]
    variables = ["depth", "noise1", "augment"]
    result = explain(table.drop_duplicates(["depth", "noise1", "augment", "seed"]), "score",
                     variables=variables, pair="augment", pair_on=["depth", "noise1", "seed"])
    assert result.paired is not None and result.paired.iloc[0]["mean_difference"] > 0.3
    paths = result.save(tmp_path / "out")
    names = {p.name for p in paths}
    assert {"group_means.csv", "paired.csv", "shap_slopes.csv", "explain.png", "explain.svg",
            "config.json"} <= names
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["variables"] == variables and config["shap"]["r2"] > 0.8
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "shap_slopes.csv"), result.slopes)
    text = result.text()
    assert "SHAP model R²" in text and "Cliff's delta" in text


def paired_result() -> ExplainResult:
    """Group means of numeric, boolean and string levels, a paired comparison and SHAP slopes."""
    table = planted_table(160)
    table["seed"] = np.arange(160) % 2
    table["augment"] = table["noise0"] % 2 == 1
    table["arch"] = np.where(table["noise2"] % 2 == 1, "wide", "deep")
    table["score"] = table["score"] + 0.5 * table["augment"]
    return explain(table.drop_duplicates(["depth", "noise1", "augment", "seed"]), "score",
                   variables=["depth", "noise1", "augment", "arch"], categorical=["arch"], pair="augment",
                   pair_on=["depth", "noise1", "seed"])


def test_explain_keeps_the_experiment_contract(tmp_path) -> None:
    result = paired_result()
    loaded = check_contract(result, tmp_path)
    assert isinstance(loaded, ExplainResult) and loaded.target == "score" and loaded.paired is not None
    unpaired = explain(planted_table(60), "score", variables=["depth", "noise0"])
    assert "paired" not in check_contract(unpaired, tmp_path / "unpaired").tables()


def test_the_figure_drawn_from_saved_tables_shows_the_computed_numbers(tmp_path) -> None:
    result = paired_result()
    result.save(tmp_path / "out")
    fig = ExplainResult.load(tmp_path / "out").figure()
    variables = list(dict.fromkeys(result.group_means["variable"]))
    for ax, variable in zip(fig.axes, variables):
        means = result.group_means[result.group_means["variable"] == variable]
        np.testing.assert_allclose(ax.lines[0].get_ydata(), means["mean"].to_numpy(dtype=float))
        assert ax.get_title() == variable
    bars = [patch.get_width() for patch in fig.axes[len(variables)].patches]
    np.testing.assert_allclose(bars, result.slopes["slope"].to_numpy())


@pytest.mark.parametrize("loaded", [False, True])
def test_figure_labels_numeric_levels_briefly(tmp_path, loaded: bool) -> None:
    table = planted_table(60)
    table["gamma"] = table["depth"] * 2.5473666 + 1.0  # float levels with long reprs
    result = explain(table, "score", variables=["depth", "gamma"])
    if loaded:  # levels of several variables share one CSV column and come back as text
        result.save(tmp_path / "out")
        result = ExplainResult.load(tmp_path / "out")
    fig = result.figure()
    labels = [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes[:2]]
    assert labels == [["0", "1", "2", "3"], ["1", "3.547", "6.095", "8.642"]]


def test_clustered_group_means_are_t_intervals_over_cluster_means() -> None:
    """Rows of one cluster (the OOD sets of one sweep cell) count once: unequal cluster sizes
    weight each cluster equally, and the interval has clusters − 1 degrees of freedom."""
    rng = np.random.default_rng(7)
    rows = []
    for cell in range(12):
        depth = (4, 8)[cell % 2]
        shift = rng.normal(0, 1.0)  # what the rows of one cell share
        for ood in range(1 + cell % 3):  # 1 to 3 rows per cell
            rows.append({"cell": f"c{cell}", "depth": depth, "ood": ood, "score": depth + shift + rng.normal(0, 0.1)})
    table = pd.DataFrame(rows)
    means = group_means(table, "score", ["depth"], cluster="cell").set_index("level")
    for depth, group in table.groupby("depth"):
        per_cell = group.groupby("cell")["score"].mean().to_numpy()
        low, high = stats.t.interval(0.95, len(per_cell) - 1, loc=per_cell.mean(), scale=stats.sem(per_cell))
        got = means.loc[depth]
        assert (got["n"], got["clusters"]) == (len(group), len(per_cell)) and len(per_cell) == 6
        assert got["mean"] == pytest.approx(per_cell.mean()) and got["std"] == pytest.approx(per_cell.std(ddof=1))
        assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert got["mean"] != pytest.approx(group["score"].mean())  # unequal sizes: not the row mean
    unclustered = group_means(table, "score", ["depth"]).set_index("level")
    assert (unclustered["clusters"] == unclustered["n"]).all()


def test_held_out_r2_with_clusters_never_scores_a_cluster_it_was_fitted_on() -> None:
    """Rows that copy their cell's value: shuffled folds see every cell in training and look
    perfect; folds of whole cells show that the variables predict nothing."""
    rng = np.random.default_rng(8)
    cells = pd.DataFrame({"cell": [f"c{i}" for i in range(30)], "depth": rng.choice([4, 8, 12], 30),
                          "width": rng.choice([64, 256], 30), "score": rng.normal(0, 1, 30)})
    table = cells.loc[cells.index.repeat(4)].assign(noise1=lambda t: rng.normal(0, 1, len(t)))
    table["cell_code"] = table["cell"].str[1:].astype(int)
    _, by_rows = shap_slopes(table, "score", ["depth", "width", "cell_code"])
    _, by_cells = shap_slopes(table, "score", ["depth", "width", "cell_code"], cluster="cell")
    assert by_rows["r2_cv"] > 0.9 and by_cells["r2_cv"] < 0.2
    assert "GroupKFold" in by_cells["r2_cv_kind"] and "KFold" in by_rows["r2_cv_kind"]
    with pytest.raises(ConfigError, match="cluster column"):
        explain(table, "score", variables=["depth", "cell"], cluster="cell")


def test_clustered_pairs_are_cell_means_and_unclustered_duplicates_are_refused() -> None:
    """Two OOD rows per cell: pairs on (depth, seed) have two rows a side unless each cell's rows
    are averaged first; then the Wilcoxon test runs on the differences of cell means."""
    rng = np.random.default_rng(9)
    rows = []
    for depth in (4, 8, 12):
        for seed in range(6):
            for aug in (0, 1):
                cell = f"d{depth}-s{seed}-a{aug}"
                for ood in ("x", "y"):
                    rows.append({"cell": cell, "depth": depth, "seed": seed, "aug": aug, "ood": ood,
                                 "score": 60 + 5 * aug + rng.normal(0, 2)})
    table = pd.DataFrame(rows)
    with pytest.raises(ConfigError, match="share the same"):
        paired_comparison(table, "score", "aug", ["depth", "seed"])
    got = paired_comparison(table, "score", "aug", ["depth", "seed"], cluster="cell").iloc[0]
    means = table.groupby(["depth", "seed", "aug"])["score"].mean().unstack("aug")
    differences = (means[1] - means[0]).to_numpy()
    assert got["n_pairs"] == 18 and got["mean_difference"] == pytest.approx(differences.mean())
    assert got["p_wilcoxon"] == pytest.approx(stats.wilcoxon(differences).pvalue)
