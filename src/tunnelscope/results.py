"""``Results``: one analysis as a tidy table, a summary and a config, saved to and loaded
from a run directory.

The run directory (file names in :mod:`tunnelscope.rundir`) holds ``results.parquet``
(one row per dataset × split × point × metric, plus ``other_point`` for pairwise
metrics), ``config.json`` and ``summary.json``; :func:`tunnelscope.report.save_run` adds
``figures/`` and ``report.html``. ``summary.json`` is written last and removed first when
a run is replaced, so a directory without it holds a partial run. This module knows
nothing of figures or reports: the report reads :class:`Results`, not the other way round.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pandas as pd

from .errors import MissingRowsError, RunDirectoryError
from .io import atomic_write, write_json
from .readback import check_run_files
from .rundir import CONFIG_FILE, FIGURES_DIR, REPORT_FILE, RESULTS_FILE, SUMMARY_FILE, check_free, kind_of  # noqa: F401  (FIGURES_DIR, REPORT_FILE: re-exported for one release)
from .summary import (
    C_SENSITIVITY,
    MEAN_RETAINED,
    MEAN_RETAINED_CI,
    POINTS,
    TUNNEL_START,
    TUNNEL_START_CI,
    VERDICT,
    VERDICT_VALID,
    Summary,
)

COLUMNS = ["model", "dataset", "split", "point", "layer", "depth", "metric", "value", "other_point",
                    "other_layer", "valid"]
COLUMNS = ["model", "dataset", "split", "point", "layer", "depth", "metric", "value", "ci_lo", "ci_hi",
           "other_point", "other_layer", "valid", "reference"]


ID_ALIAS = "id"  # how callers (and runs saved before November 2026) name the ID data
DATASET_SEP = "@"  # wide tables: an OOD set's column is "metric@dataset"; the ID data's is "metric"


def column_name(metric: str, dataset: str | None = None) -> str:
    """A wide table's column of ``metric`` on ``dataset`` (None: the ID data): ``probe_acc``,
    ``probe_acc@digits[size=28]``. ASCII, no spaces: usable in pandas ``query`` with backticks."""
    return metric if dataset is None else f"{metric}{DATASET_SEP}{dataset}"


def column_dataset(column: str) -> str | None:
    """The OOD set a wide-table column is about, or None for the ID data."""
    return column.split(DATASET_SEP, 1)[1] if DATASET_SEP in column else None


def column_metric(column: str) -> str:
    """The metric a wide-table column holds (``probe_acc@digits`` → ``probe_acc``)."""
    return column.split(DATASET_SEP, 1)[0]


def lower(column: str) -> str:
    """The column of ``column``'s lower 95% interval bound (``column_lo``)."""
    return f"{column}_lo"


def upper(column: str) -> str:
    """The column of ``column``'s upper 95% interval bound (``column_hi``)."""
    return f"{column}_hi"
ResultsError = RunDirectoryError  # the name this error had before it moved to errors.py


@dataclass
class Results:
    """An analysis: ``table`` (tidy pandas), ``summary`` (the tunnel in numbers and words),
    ``config`` (everything that changes a number)."""

    table: pd.DataFrame
    summary: Summary
    config: dict = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:  # one spelling of "none" (None), in memory and after loading
        table = self.table
        for column in ("ci_lo", "ci_hi"):  # runs saved before intervals existed
            if column not in table:
                table = table.assign(**{column: float("nan")})
        if "reference" not in table:
            table = table.assign(reference=None)
        other, ref = table["other_point"].astype(object), table["reference"].astype(object)
        self.table = table.assign(other_point=other.where(other.notna(), None),
                                  other_layer=table["other_layer"].astype(float),
                                  ci_lo=table["ci_lo"].astype(float), ci_hi=table["ci_hi"].astype(float),
                                  reference=ref.where(ref.notna(), None))

    # ------------------------------------------------------------------ notebooks
    def headline(self) -> list[tuple[str, str]]:
        """The few facts a reader wants first, as ``(label, text)`` pairs: model, data, points,
        metrics, the tunnel's start and mean % retained with their intervals, and the verdict."""
        s = self.summary
        metrics = sorted(set(self.table.metric[self._is(None)]))
        facts = [("model", str(s.get("model", self.config.get("model", "?")))),
                 ("data", str(s.get("data", self.config.get("data", "?")))),
                 ("points", f"{len(self.points)} ({', '.join(_shorten(self.points))})"),
                 ("datasets", ", ".join(self.datasets)),
                 ("metrics", ", ".join(metrics))]
        if s.get(TUNNEL_START) is not None:
            facts.append(("tunnel start", f"{s[TUNNEL_START]}{_interval(s.get(TUNNEL_START_CI))} of {s.get(POINTS)}"))
        if s.get(MEAN_RETAINED) is not None:
            facts.append(("mean % OOD retained", f"{s[MEAN_RETAINED]:.1f}{_interval(s.get(MEAN_RETAINED_CI), '.1f')}"))
        if s.get(VERDICT):
            facts.append(("verdict", ("" if s.get(VERDICT_VALID, True) else "[not valid] ") + str(s[VERDICT])))
        if self.path is not None:
            facts.append(("saved in", str(self.path)))
        return facts

    def __repr__(self) -> str:
        return "Results(\n" + "".join(f"  {label}: {text}\n" for label, text in self.headline()) + ")"

    def _repr_html_(self) -> str:
        """A notebook's view: the headline, then the per-point table of the test split."""
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(label)}</th><td style='text-align:left'>"
                       f"{html.escape(text)}</td></tr>" for label, text in self.headline())
        try:
            layers = self.layer_table().to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
        except (KeyError, ValueError):  # no per-point test metrics (e.g. a pairwise-only run)
            layers = ""
        return f"<div><strong>tunnelscope Results</strong><table>{rows}</table>{layers}</div>"

    # ------------------------------------------------------------------ access
    @property
    def points(self) -> list[str]:
        """Probe point names in layer order (layer 0, the input, not included)."""
        return list(self.config.get("points") or
                    self.table[self.table.layer > 0].drop_duplicates("point").sort_values("layer")["point"].tolist())

    @property
    def input_point(self) -> str | None:
        """The name of layer 0 (the input) when the run read it."""
        name = self.config.get("input_point")
        return name if name and bool((self.table.point == name).any()) else None

    @property
    def id_dataset(self) -> str:
        """The name the table gives the ID data: its spec (or its name when given as an object);
        ``"id"`` in runs saved before November 2026. ``"id"`` is accepted as an alias by
        :meth:`curve`, :meth:`interval` and :meth:`dataset_name`."""
        name = self.config.get("id_dataset")
        return str(name) if name is not None else ID_ALIAS

    @property
    def datasets(self) -> list[str]:
        """The ID data first, then the OOD sets, in the order they were analysed."""
        seen = list(dict.fromkeys(self.table["dataset"]))
        return sorted(seen, key=lambda d: (d != self.id_dataset, seen.index(d)))

    def dataset_name(self, dataset: str) -> str:
        """``dataset`` as the table names it (``"id"`` means the ID data)."""
        return self.id_dataset if dataset == ID_ALIAS else dataset

    @property
    def references(self) -> list[str]:
        """Reference analyses stored beside the model's (e.g. ``"untrained"``)."""
        return [r for r in dict.fromkeys(self.table["reference"]) if r is not None]

    def has(self, metric: str, reference: str | None = None) -> bool:
        """Whether the table holds ``metric`` (for the model, or for a reference)."""
        t = self.table
        return bool(((t.metric == metric) & self._is(reference)).any())

    def _is(self, reference: str | None) -> pd.Series:
        ref = self.table.reference
        return ref.isna() if reference is None else ref == reference

    def _rows(self, metric: str, dataset: str, split: str, reference: str | None) -> pd.DataFrame:
        t = self.table
        dataset = self.dataset_name(dataset)
        rows = t[(t.metric == metric) & (t.dataset == dataset) & (t.split == split) & t.other_point.isna()
                 & self._is(reference)]
        if rows.empty:
            self._missing(f"no {metric!r} for dataset {dataset!r} split {split!r}"
                          f"{f' reference {reference!r}' if reference else ''}; metrics here: "
                          f"{sorted(t.metric.unique())}")
        return rows.sort_values("layer")

    def _missing(self, what: str) -> NoReturn:
        """Raise ``KeyError(what)``; for a run read from a directory, a one-line
        :class:`MissingRowsError` naming its table (its summary needs rows that are not there)."""
        if self.path is None:
            raise KeyError(what)
        raise MissingRowsError(f"{self.path / RESULTS_FILE}: {what}; rows were removed, the file was changed by hand "
                               "or damaged")

    def curve(self, metric: str, dataset: str = "id", split: str = "test", reference: str | None = None,
              with_input: bool = True) -> pd.Series:
        """A per-point metric as a Series indexed by point, in layer order (layer 0 first when read,
        unless ``with_input`` is false). ``reference="untrained"`` reads the reference analysis."""
        rows = self._rows(metric, dataset, split, reference)
        if not with_input:
            rows = rows[rows.layer > 0]
        return rows.set_index("point")["value"]

    def interval(self, metric: str, dataset: str = "id", split: str = "test",
                 reference: str | None = None) -> pd.DataFrame:
        """``layer``, ``value``, ``ci_lo``, ``ci_hi`` per point (intervals are NaN where none was computed)."""
        rows = self._rows(metric, dataset, split, reference)
        return rows.set_index("point")[["layer", "value", "ci_lo", "ci_hi"]]

    def matrix(self, metric: str = "cka", split: str = "test") -> pd.DataFrame:
        """A pairwise metric as a points × points frame (layer 0 first when read)."""
        t = self.table
        rows = t[(t.metric == metric) & (t.split == split) & t.other_point.notna() & self._is(None)]
        if rows.empty:
            self._missing(f"no pairwise metric {metric!r} on split {split!r}")
        order = [p for p in [self.input_point, *self.points] if p in set(rows.point)]
        return rows.pivot(index="point", columns="other_point", values="value").loc[order, order]

    def c_sensitivity(self) -> pd.DataFrame:
        """The headline under each ``C`` of the default probe's grid, one row per ``C`` (columns
        ``C``, ``points_choosing``, ``id_final``, the tunnel start, mean % retained, strength,
        best transfer layer); empty when the probes' ``C`` was fixed."""
        return pd.DataFrame(self.summary.get(C_SENSITIVITY) or [])

    def layer_table(self, split: str = "test", intervals: bool = False) -> pd.DataFrame:
        """One row per point (layer 0 first when read), one column per per-point metric (OOD columns
        named ``metric@dataset``, :func:`column_name`); ``intervals`` adds ``column_lo`` /
        ``column_hi`` where they exist."""
        t = self.table[(self.table.split == split) & self.table.other_point.isna() & self._is(None)]
        label = t.metric.where(t.dataset == self.id_dataset, t.metric + DATASET_SEP + t.dataset)
        t = t.assign(column=label)
        wide = t.set_index(["layer", "point", "column"])["value"].unstack("column")
        if intervals:
            bounded = t[t.ci_lo.notna()]
            for bound in ("ci_lo", "ci_hi"):
                part = bounded.set_index(["layer", "point", "column"])[bound].unstack("column")
                part.columns = [lower(c) if bound == "ci_lo" else upper(c) for c in part.columns]
                wide = wide.join(part)
        wide.columns.name = None
        return wide.sort_index().reset_index()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the data of a run directory: table, config and, last, the summary.

        The figures and the HTML report are drawn by :func:`tunnelscope.report.save_run`,
        which writes all of it (``tunnelscope analyze --out`` does)."""
        out = Path(directory)
        self.begin(out, overwrite)
        self.finish(out)
        return out

    def begin(self, directory: Path, overwrite: bool) -> None:
        """Check the directory is free (or may be overwritten) and write the table and config;
        until :meth:`finish`, the directory reads as a partial run."""
        if check_free(directory, overwrite):
            (directory / SUMMARY_FILE).unlink(missing_ok=True)
        directory.mkdir(parents=True, exist_ok=True)
        table = self.table.reindex(columns=COLUMNS + [c for c in self.table.columns if c not in COLUMNS])
        atomic_write(directory / RESULTS_FILE, lambda h: table.to_parquet(h, index=False))
        write_json(directory / CONFIG_FILE, self.config)
        self.path = directory

    def finish(self, directory: Path) -> None:
        """Write the summary, which marks the run directory complete."""
        write_json(directory / SUMMARY_FILE, self.summary)

    @classmethod
    def load(cls, directory: str | Path) -> Results:
        """Read a run directory written by :meth:`save`."""
        d = Path(directory)
        if not d.is_dir():
            raise RunDirectoryError(f"{d} is not a directory; give a run directory written by 'tunnelscope analyze'")
        missing = [f for f in (RESULTS_FILE, CONFIG_FILE, SUMMARY_FILE) if not (d / f).is_file()]
        if missing and kind_of(d) == "training":
            raise RunDirectoryError(f"{d} is a training run, not an analysis; analyse one of its checkpoints with "
                                    f"'tunnelscope analyze --checkpoint {d}/checkpoints/step-NNNNNNN.pt --out DIR', or "
                                    f"all of them with 'tunnelscope dynamics {d}'")
        if missing:
            raise RunDirectoryError(f"{d} holds no complete analysis (missing {', '.join(missing)}); "
                               "re-run 'tunnelscope analyze --out' on it with --overwrite")
        try:
            table = pd.read_parquet(d / RESULTS_FILE)
            summary = json.loads((d / SUMMARY_FILE).read_text())
            config = json.loads((d / CONFIG_FILE).read_text())
        except Exception as exc:  # pyarrow and json raise many types for a damaged file
            raise RunDirectoryError(f"cannot read the results in {d}: {type(exc).__name__}: {exc}") from None
        check_run_files(d, table, summary, config)
        return cls(table, summary, config, d)


def id_name_of(table: pd.DataFrame) -> str:
    """The ID data's name in an engine-built table (one run's, or several checkpoints' concatenated):
    ``"id"`` in runs saved before November 2026, else the dataset of the first row, since the
    engine writes the ID rows of every analysis first."""
    names = table["dataset"]
    if names.empty or bool((names == ID_ALIAS).any()):
        return ID_ALIAS
    return str(names.iloc[0])


def _shorten(names: list[str], keep: int = 3) -> list[str]:
    """The first and last names of a long list, with an ellipsis between."""
    return names if len(names) <= 2 * keep else [*names[:keep], "…", *names[-keep:]]


def _interval(bounds: object, fmt: str = "g") -> str:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or None in bounds:
        return ""
    return f" [{bounds[0]:{fmt}}, {bounds[1]:{fmt}}]"


__all__ = ["COLUMNS", "DATASET_SEP", "ID_ALIAS", "Results", "ResultsError", "check_free", "column_dataset",
           "column_metric", "column_name", "id_name_of", "lower", "upper"]
