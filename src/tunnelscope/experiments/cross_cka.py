"""Minibatch CKA between the layers of two models read on the same batches (Nguyen et al. 2021).

:func:`cross_cka` runs :func:`tunnelscope.engine.cross_model.cross_model_cka` and returns a
:class:`CrossCKAResult`, an experiment of kind ``cross-cka``: its one table (``cross_cka.csv``,
model A's points as rows, model B's as columns), the figure drawn from it by
:mod:`tunnelscope.report.cross_cka` (``cross_cka.png``/``.svg``) and ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from .. import data as data_mod
from ..engine.cross_model import cross_model_cka
from ..engine.settings import AnalysisSettings, settings_from
from ..errors import RunDirectoryError
from ..io import jsonable
from ..report.cross_cka import cross_cka_figure, matrix_of
from .base import ExperimentResult

CKA_FILE = "cross_cka.csv"
NAME_KEYS = ("name_a", "name_b")  # the models' names: the CSV's first header cell, and the columns' name

ModelLike = nn.Module | str | Path


@dataclass
class CrossCKAResult(ExperimentResult):
    """``matrix``: CKA between every point of model A (rows, named ``config["name_a"]``) and of
    model B (columns, named ``config["name_b"]``); ``config``: the settings of the run."""

    kind: ClassVar[str] = "cross-cka"
    table_files: ClassVar[dict[str, str]] = {"cka": CKA_FILE}

    matrix: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, axis in zip(NAME_KEYS, (self.matrix.index, self.matrix.columns)):
            self.config.setdefault(key, axis.name)
        self.matrix.index.name, self.matrix.columns.name = (self.config[key] for key in NAME_KEYS)

    def tables(self) -> dict[str, pd.DataFrame]:
        """``cka``: one row per point of model A, its name in the first column (headed by model
        A's name), then one column per point of model B (the matrix as ``DataFrame.to_csv`` writes it)."""
        frame = self.matrix.copy()
        frame.columns = [str(c) for c in frame.columns]
        frame = frame.reset_index(names="__a__", allow_duplicates=True)
        frame.columns = [str(self.config["name_a"] or ""), *frame.columns[1:]]
        return {"cka": frame}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> CrossCKAResult:
        """The result whose table and config were saved."""
        if "cka" not in tables:
            raise RunDirectoryError(f"a cross-cka result needs its {CKA_FILE}; run it again")
        return cls(matrix_of(tables["cka"], config), dict(config))

    def best_matches(self) -> pd.DataFrame:
        """For each of model A's points, model B's most similar point and their CKA."""
        values = self.matrix.to_numpy(dtype=float)
        best = values.argmax(axis=1)
        return pd.DataFrame({"point_a": [str(a) for a in self.matrix.index],
                             "point_b": [str(self.matrix.columns[j]) for j in best],
                             "cka": values[range(len(best)), best]})

    def figure(self) -> Figure:
        """The matrix with each point at its relative depth (drawn by :mod:`tunnelscope.report.cross_cka`)."""
        return cross_cka_figure(self.tables(), self.config)


def _describe(model: ModelLike) -> str:
    return str(model) if isinstance(model, (str, Path)) else type(model).__name__


def cross_cka(model_a: ModelLike, model_b: ModelLike, data: data_mod.Dataset | str,  # noqa: PLR0913 (a public facade: readable keywords)
              points: str | Sequence[str] = "blocks", reduce: str = "pool2", split: str = "test",
              batch_size: int = 256, device: str | torch.device = "auto", max_samples: int | None = 10_000,
              seed: int = 0, precision: str = "float32", data_root: str | Path | None = None,
              progress: bool | None = None, cka_passes: int = 1,
              settings: AnalysisSettings | None = None) -> CrossCKAResult:
    """Minibatch CKA between every probe point of ``model_a`` and of ``model_b`` on the same
    batches (:func:`tunnelscope.engine.cross_model.cross_model_cka`, whose arguments these are;
    ``settings`` may give them whole), as a :class:`CrossCKAResult` whose config records the
    settings and both models."""
    chosen = settings_from(settings, locals())
    matrix = cross_model_cka(model_a, model_b, data, split=split, settings=chosen)
    config = jsonable({**matrix.attrs, "model_a": _describe(model_a), "model_b": _describe(model_b),
                       "points": chosen.points if isinstance(chosen.points, str) else list(chosen.points),
                       "seed": chosen.seed, "name_a": matrix.index.name, "name_b": matrix.columns.name})
    return CrossCKAResult(matrix, config)


__all__ = ["CKA_FILE", "CrossCKAResult", "cross_cka"]
