"""The contract every experiment's result keeps: a kind, a config, named tables; saved and loaded one way.

An experiment directory holds one CSV per table (``table_files``), the figures drawn for its
kind (``report.experiments``: ``NAME.png`` and ``NAME.svg``) and, written last, ``config.json``
naming the kind: a directory without it holds a partial experiment and does not load.

Adding an experiment: subclass :class:`ExperimentResult`, set ``kind`` and ``table_files``,
implement :meth:`~ExperimentResult.tables` and :meth:`~ExperimentResult.from_tables`, and
register its figures with :func:`tunnelscope.report.experiments.experiment_figure`
(docs/architecture.md has a worked example).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import pandas as pd

from ..errors import RunDirectoryError
from ..io import write_json, write_text
from ..report.experiments import draw_experiment, figure_names
from ..report.figures import save_figures
from ..report.html import experiment_page
from ..rundir import CONFIG_FILE, KIND_KEY, REPORT_FILE, claim, kind_of, whole_or_nothing


class ExperimentResult(ABC):
    """A result that saves itself as tables, figures and ``config.json``, and loads back.

    Subclasses set ``kind`` (the name written into ``config.json`` and the key of its
    figures) and ``table_files`` (table name → CSV file name), and hold ``config``:
    everything that changes a number."""

    kind: ClassVar[str]
    table_files: ClassVar[dict[str, str]]
    config: dict[str, Any]

    @abstractmethod
    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table the result saves, by name (the keys of ``table_files``); a table that
        does not apply to this result may be left out."""

    @classmethod
    @abstractmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> Self:
        """The result that :meth:`tables` and ``config`` were written from."""

    def figure_tables(self) -> dict[str, pd.DataFrame]:
        """The tables its figures are drawn from: :meth:`tables`, unless a result keeps a table
        its figures need outside the CSV tables (dynamics' layer table)."""
        return self.tables()

    def saved_config(self) -> dict[str, Any]:
        """``config`` as written to ``config.json``: the kind first, then the config."""
        return {KIND_KEY: self.kind, **{k: v for k, v in self.config.items() if k != KIND_KEY}}

    def save(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """Claim ``out`` for this kind, write every table (CSV), the kind's figures and, last,
        ``config.json``, each atomically; return the written paths. A directory holding another
        kind's run is refused; one holding this kind's unless ``overwrite``."""
        tables, config = self.tables(), self.saved_config()
        # drawn first: a figure that cannot be drawn leaves nothing written
        figures = draw_experiment(self.kind, self.figure_tables(), config)
        with whole_or_nothing(out):  # a full disk or an error leaves no partial result
            folder = claim(out, self.kind, overwrite, files=tuple(self.table_files.values()))
            paths = [_write_csv(folder / self.table_files[name], frame) for name, frame in tables.items()]
            return paths + finish(folder, figures, figure_names(self.kind), folder / CONFIG_FILE, config)

    @classmethod
    def load(cls, out: str | Path) -> Self:
        """Read a result written by :meth:`save`; refuses a partial directory (no ``config.json``)
        and one of another kind."""
        folder = Path(out)
        config = read_config(folder, cls.kind)
        tables = {name: pd.read_csv(folder / file) for name, file in cls.table_files.items()
                  if (folder / file).is_file()}
        config.pop(KIND_KEY, None)
        return cls.from_tables(tables, config)


def finish(folder: Path, figures: Mapping[str, Any], stale: Sequence[str], config_path: Path,
           config: dict[str, Any]) -> list[Path]:
    """The end of every experiment's save: the figures (PNG and SVG) written after the ``stale``
    ones of an earlier run are removed, ``report.html`` (the figures and the config), then the
    config, which marks the directory complete; returns the written paths."""
    paths: list[Path] = []
    pngs = save_figures(dict(figures), folder, replace=stale)
    for png in pngs:
        paths += [png, png.with_suffix(".svg")]
    page = experiment_page(str(config.get(KIND_KEY, "experiment")), {p.stem: p for p in pngs}, config)
    return [*paths, write_text(folder / REPORT_FILE, page), write_json(config_path, config)]


def read_config(folder: Path, kind: str) -> dict[str, Any]:
    """The ``config.json`` of a finished experiment of ``kind`` in ``folder``; refuses what is not one."""
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise RunDirectoryError(f"{folder} does not exist or is not a folder; give the --out of a {kind} experiment")
    if not path.is_file():
        raise RunDirectoryError(f"{folder} holds a partial {kind} experiment or none ({CONFIG_FILE}, written last, "
                                "is missing): run it again")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirectoryError(f"{path} cannot be read ({exc}); run the experiment again") from None
    recorded = config.get(KIND_KEY) if isinstance(config, dict) else None
    if recorded is not None and recorded != kind:
        raise RunDirectoryError(f"{folder} holds a {recorded} experiment, not a {kind} one")
    return config


def result_class(kind: str) -> type[ExperimentResult]:
    """The :class:`ExperimentResult` subclass of ``kind``, from the module named after it
    (``cross-cka``: :mod:`tunnelscope.experiments.cross_cka`)."""
    import importlib

    try:
        module = importlib.import_module(f"{__package__}.{kind.replace('-', '_')}")
    except ModuleNotFoundError:
        raise RunDirectoryError(f"no experiment of kind {kind!r} is known to this version of tunnelscope") from None
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, ExperimentResult) and getattr(value, "kind", None) == kind:
            return value
    raise RunDirectoryError(f"no experiment of kind {kind!r} is known to this version of tunnelscope")


def refresh_experiment(folder: str | Path) -> list[Path]:
    """Redraw a finished experiment's figures and ``report.html`` from its saved tables and
    config (the tables are written back unchanged); returns the written paths."""
    kind = kind_of(folder)
    if kind is None or kind in ("analysis", "training", "unknown"):
        raise RunDirectoryError(f"{folder} holds no finished experiment ({CONFIG_FILE} names none)")
    return result_class(kind).load(folder).save(folder, overwrite=True)


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_text(path, frame.to_csv(index=False))


__all__ = ["ExperimentResult", "finish", "read_config", "refresh_experiment", "result_class"]
