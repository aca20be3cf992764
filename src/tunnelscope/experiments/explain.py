"""Which design variables explain a transfer metric across a sweep (Harun et al. 2024, §3).

Harun et al. explain out-of-distribution transfer over hundreds of backbones with three
kinds of statistics on one results table (a row per trained model, columns for the design
variables and the metrics). This module computes them from a pandas table:

- :func:`group_means`: per variable and level, the mean of the target with a 95% Student t
  interval;
- :func:`paired_comparison`: rows that agree on every other design variable are paired, and
  each pair of levels gets a Wilcoxon signed-rank test and Cliff's δ with its magnitude;
- :func:`shap_slopes`: a gradient-boosted model of the target on the variables, SHAP values
  from a tree explainer summed back per variable, and per variable the slope of its SHAP
  values against its value (normalised to a maximum of 1);
- :func:`explain` bundles the three in an :class:`ExplainResult`, an experiment of kind
  ``explain`` (:mod:`tunnelscope.experiments.base`) that saves its tables, its figure
  (drawn by :mod:`tunnelscope.report.explain`) and ``config.json``, and loads back.

Definitions are in docs/explain.md. Needs no torch; SHAP needs the ``shap`` package.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from ..errors import ConfigError, InsufficientDataError, RunDirectoryError
from ..versions import package_versions
from .base import ExperimentResult

LEVEL = 0.95
INTERVAL_METHOD = "Student t interval of the mean: mean ± t(0.975, n−1)·std/√n (std with ddof=1)"
PAIRED_TEST = "Wilcoxon signed-rank test on paired differences, scipy.stats.wilcoxon (two-sided, zeros dropped)"
CLIFF_DEFINITION = "Cliff's delta = (#(b > a) − #(b < a)) / (n_a·n_b) over all pairs of the two levels' values"
# Romano et al. (2006) thresholds on |δ|, the ones Harun et al. use: below each bound, its label.
CLIFF_BUCKETS = ((0.147, "negligible"), (0.33, "small"), (0.474, "medium"))
MODEL_SETTINGS: dict[str, Any] = {"estimator": "sklearn.ensemble.GradientBoostingRegressor", "loss": "huber"}
MIN_SHAP_ROWS = 10  # fewer rows cannot support a boosted model, let alone its cross-validation
CV_FOLDS = 5
MAX_DEFAULT_LEVELS = 20
TABLE_FILES = {"group_means": "group_means.csv", "paired": "paired.csv", "slopes": "shap_slopes.csv"}


MAX_TARGET = 1e15  # a metric or design value beyond this is a unit or overflow problem; breaks the trees' sums

# ------------------------------------------------------------------------------------- input tables
def read_table(path: str | Path) -> pd.DataFrame:
    """Read a results table from a ``.csv`` or ``.parquet`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"table {path} does not exist; give the path of a .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            table = pd.read_csv(path, encoding="utf-8", on_bad_lines="error")
        except pd.errors.EmptyDataError:
            raise ConfigError(f"table {path} is empty; give a CSV with a header row and one row per run") from None
        except UnicodeDecodeError:
            raise ConfigError(f"table {path} is not UTF-8 text; save it as a UTF-8 CSV") from None
        except pd.errors.ParserError as exc:
            raise ConfigError(f"table {path} is not a well-formed CSV ({str(exc).strip().splitlines()[-1]}); every "
                              "row needs as many fields as the header") from None
        return table
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as exc:
            raise ConfigError(f"reading {path} needs pyarrow: pip install pyarrow ({exc})") from exc
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError; a truncated file an OSError
            raise ConfigError(f"table {path} is not a readable Parquet file ({str(exc).splitlines()[0][:120]})") \
                from None
    raise ConfigError(f"table {path} is neither .csv nor .parquet; convert it to one of them")


def _check_columns(table: pd.DataFrame, columns: Iterable[str], role: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{role} column(s) {missing} not in the table; its columns are {list(table.columns)}")


def _target_rows(table: pd.DataFrame, target: str, variables: Sequence[str]) -> pd.DataFrame:
    """The rows with a finite target, after checking that every named column exists."""
    _check_columns(table, [target], "target")
    _check_columns(table, variables, "variable")
    if target in variables:
        raise ConfigError(f"the target {target!r} is also listed as a variable; drop it from the variables")
    column = table[target]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ConfigError(f"target {target!r} has dtype {column.dtype}, not a number; choose a numeric metric column")
    rows = table[np.isfinite(column.to_numpy(dtype=float))]
    if rows.empty:
        raise InsufficientDataError(f"target {target!r} has no finite value; check the table")
    for name in variables:
        _check_variable(rows[name], name)
    if float(rows[target].abs().max()) > MAX_TARGET:
        raise ConfigError(f"target {target!r} holds values up to {float(rows[target].abs().max()):.3g}; the models "
                          f"behind the slopes cannot fit values beyond {MAX_TARGET:.0e}: rescale the column")
    if rows[target].nunique() < 2:
        raise InsufficientDataError(f"target {target!r} takes one value ({rows[target].iloc[0]!r}) in every row: there "
                                    "is nothing to explain (an R² would be meaningless); choose a metric that varies")
    return rows


def _check_variable(values: pd.Series, name: str) -> None:
    """Refuse a design column with a missing or infinite value (it cannot be placed in any group
    or tree) or numbers beyond what the models behind the slopes can fit (float32 overflowed)."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    bad = values.isna() | (values.isin([np.inf, -np.inf]) if numeric else False)
    if bool(bad.any()):
        raise ConfigError(f"column {name!r} is missing or infinite in {int(bad.sum())} of {len(values)} rows; fill "
                          "those values or drop the rows")
    if numeric and float(values.abs().max()) > MAX_TARGET:
        raise ConfigError(f"column {name!r} holds values up to {float(values.abs().max()):.3g}; the models behind the "
                          f"slopes cannot fit values beyond {MAX_TARGET:.0e}: rescale the column")


# ------------------------------------------------------------------------------------- group means
def group_means(table: pd.DataFrame, target: str, variables: Sequence[str], cluster: str | None = None
                ) -> pd.DataFrame:
    """Per variable and level: ``n`` rows, ``mean``, 95% Student t interval (``ci_low``,
    ``ci_high``; NaN for one unit) and ``std`` (ddof=1) of ``target``. Rows with a non-finite
    target are left out.

    ``cluster`` names a column whose equal values mark rows that are not independent (the OOD
    sets of one sweep cell share its model): each cluster's rows are averaged first, and the
    mean, interval and std are over those cluster means (``clusters`` of them). Without it each
    row is a unit (``clusters`` = ``n``)."""
    rows = _target_rows(table, target, [*variables, *([cluster] if cluster else [])])
    records = []
    for variable in variables:
        for level, group in rows.groupby(variable, sort=True):
            units = group.groupby(cluster)[target].mean() if cluster else group[target]
            records.append({"variable": variable, "level": level, "n": len(group), "clusters": len(units),
                            **_mean_interval(units.to_numpy(dtype=float))})
    return pd.DataFrame(records, columns=["variable", "level", "n", "clusters", "mean", "ci_low", "ci_high", "std"])


def _mean_interval(values: np.ndarray) -> dict[str, float]:
    """Mean, 95% Student t interval and std (ddof=1) of independent values."""
    n, mean = len(values), float(values.mean())
    if n < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "std": float("nan")}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / np.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std}


# ------------------------------------------------------------------------------- paired comparison
def cliffs_delta(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cliff's δ of ``b`` over ``a``: (#(b > a) − #(b < a)) / (n_a·n_b) over all value pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise InsufficientDataError("Cliff's delta needs at least one value in each group")
    return float(np.sign(b[None, :] - a[:, None]).mean())


def cliffs_magnitude(delta: float) -> str:
    """The magnitude label of |δ|: negligible < 0.147 ≤ small < 0.33 ≤ medium < 0.474 ≤ large."""
    for bound, label in CLIFF_BUCKETS:
        if abs(delta) < bound:
            return label
    return "large"


def paired_comparison(table: pd.DataFrame, target: str, variable: str, pair_on: Sequence[str],
                      levels: Sequence[Any] | None = None, cluster: str | None = None) -> pd.DataFrame:
    """Compare the levels of ``variable`` on rows paired by equal values in ``pair_on``.

    One row per pair of levels (a, b), a before b in ``levels`` (default: sorted levels, a
    baseline such as ``"none"`` first, so that ``b − a`` reads "with − without"):
    ``n_pairs``, ``mean_a``, ``mean_b``, ``mean_difference`` (b − a), Wilcoxon signed-rank
    ``wilcoxon_statistic`` and ``p_wilcoxon`` (NaN when every difference is 0), and
    ``cliffs_delta`` (positive: b higher) with ``magnitude`` over the paired rows' values.
    With ``cluster``, the rows of one cluster that agree on ``variable`` and ``pair_on`` (a
    sweep cell's OOD sets) are averaged into one before pairing.
    """
    pair_on = list(pair_on)
    if not pair_on:
        raise ConfigError("pair_on is empty; name the design columns that must be equal within a pair")
    if variable in pair_on:
        raise ConfigError(f"{variable!r} is both compared and paired on; remove it from pair_on")
    if cluster is not None and cluster in (variable, *pair_on):
        raise ConfigError(f"the cluster column {cluster!r} is also compared or paired on; drop it from those")
    rows = _target_rows(table, target, [variable, *pair_on, *([cluster] if cluster else [])])
    if cluster is not None:
        rows = rows.groupby([cluster, variable, *pair_on], sort=False)[target].mean().reset_index()
    chosen = _levels(rows, variable, levels)
    records = []
    for level_a, level_b in combinations(chosen, 2):
        paired = _pair_rows(rows, target, variable, pair_on, level_a, level_b)
        if paired.empty:
            continue
        records.append(_compare_pair(paired["a"].to_numpy(dtype=float), paired["b"].to_numpy(dtype=float),
                                     variable, level_a, level_b))
    if not records:
        raise ConfigError(f"no rows of {variable!r} levels {list(chosen)} agree on {pair_on}; "
                          "pair on fewer columns (--pair-on) or check the table")
    return pd.DataFrame(records)


BASELINE_LEVELS = ("none", "no", "off", "false", "without")  # compared first: "b − a" then reads "with − without"


def _ordered(levels: list[Any]) -> list[Any]:
    """``levels`` sorted, with a baseline level (:data:`BASELINE_LEVELS`) moved to the front."""
    ordered = sorted(levels)
    base = [level for level in ordered if str(level).lower() in BASELINE_LEVELS]
    return base + [level for level in ordered if level not in base]


def _levels(rows: pd.DataFrame, variable: str, levels: Sequence[Any] | None) -> list[Any]:
    present = _ordered(rows[variable].dropna().unique().tolist())
    if levels is None:
        chosen = present
    else:
        chosen = list(levels)
        unknown = [level for level in chosen if level not in present]
        if unknown:
            raise ConfigError(f"level(s) {unknown} of {variable!r} not in the table; it has {present}")
    if len(chosen) < 2:
        raise ConfigError(f"{variable!r} needs at least two levels to compare, got {chosen}")
    return chosen


def _pair_rows(rows: pd.DataFrame, target: str, variable: str, pair_on: list[str], level_a: Any,
               level_b: Any) -> pd.DataFrame:
    sides = []
    for level, name in ((level_a, "a"), (level_b, "b")):
        side = rows.loc[rows[variable] == level, [*pair_on, target]].rename(columns={target: name})
        if side.duplicated(subset=pair_on).any():
            raise ConfigError(f"several rows with {variable}={level!r} share the same {pair_on}; add the "
                              "columns that tell them apart (such as the seed) to pair_on")
        sides.append(side)
    return sides[0].merge(sides[1], on=pair_on, how="inner")


def _compare_pair(a: np.ndarray, b: np.ndarray, variable: str, level_a: Any, level_b: Any) -> dict[str, Any]:
    differences = b - a
    if np.any(differences != 0):
        test = stats.wilcoxon(differences)
        statistic, p_value = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_value = float("nan"), float("nan")
    delta = cliffs_delta(a, b)
    return {"variable": variable, "level_a": level_a, "level_b": level_b, "n_pairs": len(a),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_difference": float(differences.mean()),
            "wilcoxon_statistic": statistic, "p_wilcoxon": p_value, "cliffs_delta": delta,
            "magnitude": cliffs_magnitude(delta)}


# ------------------------------------------------------------------------------------- SHAP slopes
def _encode(rows: pd.DataFrame, variables: Sequence[str], categorical: Sequence[str]
            ) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Model inputs (one-hot for categorical, numbers otherwise), the input columns of each
    variable, each variable's value scaled to a maximum |value| of 1, and the encodings."""
    inputs: dict[str, np.ndarray] = {}
    columns: dict[str, list[str]] = {}
    scaled: dict[str, np.ndarray] = {}
    encodings: dict[str, dict[str, Any]] = {}
    for variable in variables:
        column = rows[variable]
        if column.isna().any():
            raise ConfigError(f"variable {variable!r} has missing values; fill or drop those rows first")
        levels = _ordered(column.unique().tolist())
        if len(levels) < 2:
            raise ConfigError(f"variable {variable!r} takes one value only ({levels[0]!r}); leave it out")
        if variable in categorical or not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            codes = column.map({level: code for code, level in enumerate(levels)}).to_numpy(dtype=float)
            kind = "categorical" if variable in categorical else "ordinal"
            encodings[variable] = {"kind": kind, "codes": {str(level): code for code, level in enumerate(levels)}}
        else:
            codes = column.to_numpy(dtype=float)
            kind = "numeric"
            encodings[variable] = {"kind": kind}
        scale = float(np.abs(codes).max())
        encodings[variable]["slope_axis"] = f"value / {scale:g}"
        scaled[variable] = codes / scale
        if kind == "categorical":
            names = [f"{variable}={level}" for level in levels]
            for name, level in zip(names, levels):
                inputs[name] = (column == level).to_numpy(dtype=float)
            columns[variable] = names
            encodings[variable]["one_hot_columns"] = names
        else:
            inputs[variable] = codes
            columns[variable] = [variable]
    return pd.DataFrame(inputs, index=rows.index), columns, scaled, encodings


def _load_shap() -> Any:
    try:
        with warnings.catch_warnings():  # shap's import calls matplotlib colormap setters that warn of deprecation
            warnings.filterwarnings("ignore", message=r"The set_\w+ function will be deprecated")
            import shap
    except ImportError as exc:
        raise ConfigError(f"shap_slopes needs the shap package: pip install shap ({exc})") from exc
    return shap


def shap_slopes(table: pd.DataFrame, target: str, variables: Sequence[str], categorical: Sequence[str] = (),
                l1_normalise: bool = False, random_state: int = 0, cluster: str | None = None
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """SHAP-slope analysis of ``target`` on ``variables`` (Harun et al. 2024).

    Fits ``GradientBoostingRegressor(random_state, loss='huber')`` on the variables
    (``categorical`` ones one-hot, non-numeric others as sorted levels 0..k−1 with a baseline such
    as ``"none"`` at 0, numbers as they are), takes ``shap.TreeExplainer`` values, sums one-hot
    columns back per variable, and fits per variable a line of its SHAP values on its value
    divided by its maximum |value|.
    Returns a table (``variable``, ``kind``, ``slope_raw``, ``slope`` — L1-normalised across
    variables when ``l1_normalise`` — and ``mean_abs_shap``) and a dict with the in-sample
    R², the held-out R² (folds keep each ``cluster`` whole when one is named, so that rows of one
    sweep cell are never both fitted and scored), the model settings, each variable's encoding
    and the package versions.
    """
    unknown = [c for c in categorical if c not in variables]
    if unknown:
        raise ConfigError(f"categorical column(s) {unknown} are not among the variables {list(variables)}")
    if not variables:
        raise ConfigError("no variables given; name the design columns that explain the target")
    shap = _load_shap()
    from sklearn.ensemble import GradientBoostingRegressor

    rows = _target_rows(table, target, [*variables, *([cluster] if cluster else [])])
    if len(rows) < MIN_SHAP_ROWS:
        raise InsufficientDataError(f"SHAP slopes of {target!r} need at least {MIN_SHAP_ROWS} rows with a finite "
                                    f"target; the table has {len(rows)}: add cells (seeds, OOD sets) to the sweep")
    inputs, columns, scaled, encodings = _encode(rows, variables, categorical)
    target_values = rows[target].to_numpy(dtype=float)
    model = GradientBoostingRegressor(random_state=random_state, loss="huber").fit(inputs, target_values)
    groups = rows[cluster].to_numpy() if cluster else None
    r2_cv, cv_kind = _cross_validated_r2(model, inputs, target_values, random_state, groups)
    values = pd.DataFrame(np.asarray(shap.TreeExplainer(model).shap_values(inputs), dtype=float),
                          columns=inputs.columns)
    records = []
    for variable in variables:
        per_variable = values[columns[variable]].sum(axis=1).to_numpy()
        slope = float(stats.linregress(scaled[variable], per_variable).slope)
        records.append({"variable": variable, "kind": encodings[variable]["kind"], "slope_raw": slope,
                        "mean_abs_shap": float(np.abs(per_variable).mean())})
    slopes = pd.DataFrame(records)
    total = float(slopes["slope_raw"].abs().sum())
    slopes["slope"] = slopes["slope_raw"] / total if l1_normalise and total > 0 else slopes["slope_raw"]
    info = {"r2": float(model.score(inputs, target_values)), "r2_kind": "in-sample (as Harun et al.)",
            "r2_cv": r2_cv, "r2_cv_kind": cv_kind,
            "n_rows": len(rows), "model": {**MODEL_SETTINGS, "random_state": random_state,
                                           **{k: model.get_params()[k] for k in ("n_estimators", "max_depth",
                                                                                  "learning_rate", "alpha")}},
            "explainer": "shap.TreeExplainer", "l1_normalise": l1_normalise, "encodings": encodings,
            "versions": {"scikit-learn": metadata.version("scikit-learn"), "shap": metadata.version("shap")}}
    return slopes[["variable", "kind", "slope_raw", "slope", "mean_abs_shap"]], info


def _cross_validated_r2(model: Any, inputs: pd.DataFrame, target: np.ndarray, random_state: int,
                        groups: np.ndarray | None = None) -> tuple[float, str]:
    """Mean held-out R² of ``model``'s settings refitted on folds (how far the in-sample R² is
    overfit), and how the folds were made: shuffled rows, or whole clusters when ``groups`` is given."""
    from sklearn.model_selection import GroupKFold, KFold, cross_val_score

    if groups is not None and len(set(groups)) >= 2:
        folds = min(CV_FOLDS, len(set(groups)))
        scores = cross_val_score(model, inputs, target, cv=GroupKFold(folds), groups=groups, scoring="r2")
        return float(np.mean(scores)), f"mean R² on held-out clusters, {folds}-fold GroupKFold (same model)"
    folds = min(CV_FOLDS, len(target))
    scores = cross_val_score(model, inputs, target, cv=KFold(folds, shuffle=True, random_state=random_state),
                             scoring="r2")
    return float(np.mean(scores)), f"mean R² on held-out rows, {folds}-fold shuffled KFold (same model)"


# ------------------------------------------------------------------------------------------ bundle
@dataclass
class ExplainResult(ExperimentResult):
    """Group means, paired comparisons (or None) and SHAP slopes of one target."""

    kind: ClassVar[str] = "explain"
    table_files: ClassVar[dict[str, str]] = TABLE_FILES

    target: str
    group_means: pd.DataFrame
    paired: pd.DataFrame | None
    slopes: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def figure(self) -> Figure:
        """Group means with 95% intervals per variable, and the SHAP slopes as bars (drawn by
        :mod:`tunnelscope.report.explain` from :meth:`tables` and ``config``)."""
        from ..report.explain import explain_figure

        return explain_figure(self.tables(), {**self.config, "target": self.target})

    def tables(self) -> dict[str, pd.DataFrame]:
        """``group_means``, ``slopes`` and, when a pair was compared, ``paired``."""
        frames = {"group_means": self.group_means, "paired": self.paired, "slopes": self.slopes}
        return {name: frame for name, frame in frames.items() if frame is not None}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> ExplainResult:
        """The result whose tables and config were saved."""
        missing = [TABLE_FILES[name] for name in ("group_means", "slopes") if name not in tables]
        if missing:
            raise RunDirectoryError(f"an explain result needs {', '.join(missing)}; run it again")
        return cls(config["target"], tables["group_means"], tables.get("paired"), tables["slopes"], dict(config))

    def text(self) -> str:
        """A short summary for the terminal."""
        lines = [f"target {self.target}: {self.config.get('n_rows', '?')} rows"]
        for row in self.group_means.itertuples():
            lines.append(f"  {row.variable}={row.level}: mean {row.mean:.4g} [{row.ci_low:.4g}, {row.ci_high:.4g}] "
                         f"(n={row.n})")
        if self.paired is not None:
            for row in self.paired.itertuples():
                lines.append(f"  {row.variable} {row.level_b} vs {row.level_a}: {row.n_pairs} pairs, mean difference "
                             f"{row.mean_difference:.4g}, Wilcoxon p {row.p_wilcoxon:.3g}, Cliff's delta "
                             f"{row.cliffs_delta:.3f} ({row.magnitude})")
        shap_info = self.config.get("shap", {})
        lines.append(f"  SHAP model R² {shap_info.get('r2', float('nan')):.3f} in-sample, "
                     f"{shap_info.get('r2_cv', float('nan')):.3f} held out ({shap_info.get('r2_cv_kind', '')}); "
                     "slopes by |slope|:")
        ordered = self.slopes.reindex(self.slopes["slope"].abs().sort_values(ascending=False).index)
        lines += [f"    {row.variable}: {row.slope:+.4g}" for row in ordered.itertuples()]
        return "\n".join(lines)


def default_variables(table: pd.DataFrame, target: str) -> list[str]:
    """Columns other than ``target`` with 2 to 20 distinct values: the design variables of a
    sweep table (metric columns, with many distinct values, are left out)."""
    return [c for c in table.columns
            if c != target and 2 <= table[c].nunique(dropna=True) <= MAX_DEFAULT_LEVELS]


def explain(table: pd.DataFrame, target: str, variables: Sequence[str] | None = None,  # noqa: PLR0913 (a public facade: readable keywords)
            categorical: Sequence[str] = (), pair: str | None = None, pair_on: Sequence[str] | None = None,
            l1_normalise: bool = False, random_state: int = 0, cluster: str | None = None) -> ExplainResult:
    """Group means, SHAP slopes and (when ``pair`` is given) a paired comparison of ``pair``'s
    levels on rows equal in ``pair_on`` (default: every other variable) for one target.
    ``cluster`` names the column of rows that are not independent (a sweep cell): group means
    average over clusters, paired rows are cluster means, and the held-out R² holds out whole
    clusters."""
    chosen = list(variables) if variables is not None else default_variables(table, target)
    if cluster is not None and variables is None:
        chosen = [v for v in chosen if v != cluster]
    if cluster is not None and cluster in chosen:
        raise ConfigError(f"the cluster column {cluster!r} is also a variable; drop it from the variables")
    if not chosen:
        raise ConfigError(f"no design variables found besides {target!r}; name them (--vars)")
    means = group_means(table, target, chosen, cluster)
    slopes, shap_info = shap_slopes(table, target, chosen, categorical, l1_normalise, random_state, cluster)
    paired, pair_columns = None, None
    if pair is not None:
        pair_columns = list(pair_on) if pair_on else [v for v in chosen if v != pair]
        paired = paired_comparison(table, target, pair, pair_columns, cluster=cluster)
    config = {"target": target, "variables": chosen, "variables_chosen": "given" if variables is not None else
              f"default: columns with 2..{MAX_DEFAULT_LEVELS} distinct values", "categorical": list(categorical),
              "pair": pair, "pair_on": pair_columns, "cluster": cluster, "n_rows": shap_info["n_rows"],
              "rows_left_out": len(table) - shap_info["n_rows"], "interval": f"{LEVEL:.0%} {INTERVAL_METHOD}"
              + (f", over the means of each {cluster!r}" if cluster else ", rows as independent units"),
              "paired_test": PAIRED_TEST, "cliffs_delta": CLIFF_DEFINITION,
              "cliffs_buckets": {label: bound for bound, label in CLIFF_BUCKETS}, "shap": shap_info,
              "versions": {**package_versions(), **shap_info["versions"]}}
    return ExplainResult(target, means, paired, slopes, config)
