"""Writers of a training monitor's measurements (:class:`~tunnelscope.experiments.monitor.Writer`).

Every writer takes the same numbers, :func:`scalars`: per layer, the test-split value of
each per-point metric (``probe_acc``, ``rank``, ``ncc_acc`` ...) of the ID data (``id``) and
each OOD set, CKA to the previous layer (``cka_prev``), and the tunnel start and the model's
accuracy, named ``METRIC/DATASET/layer_NN``. :class:`TableWriter` keeps the monitor's whole
tidy table in a file; :class:`TensorBoardWriter` adds a layer × step image of the probe
accuracy; :class:`WandbWriter` and :class:`MLflowWriter` log the scalars to a run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..io import atomic_write
from ..results import Results, id_name_of
from ..specs import safe_name
from ..summary import MODEL_ACCURACY, TUNNEL_START

CELL = 8  # pixels per (layer, step) cell of the TensorBoard heatmap image


def _dataset_label(name: str, id_name: str) -> str:
    """``id`` for the ID data, else the spec with what metric names cannot hold replaced."""
    return "id" if name == id_name else safe_name(name)


def _named(metric: str, rows: pd.DataFrame, id_name: str) -> dict[str, float]:
    """``METRIC/DATASET/layer_NN`` → value for every row."""
    names = rows["dataset"].astype(str).tolist()
    layers = rows["layer"].astype(int).tolist()
    values = rows["value"].astype(float).tolist()
    return {f"{metric}/{_dataset_label(name, id_name)}/layer_{layer:02d}": value
            for name, layer, value in zip(names, layers, values)}


def scalars(results: Results) -> dict[str, float]:
    """One measurement as named numbers (module docstring); NaN values are left out."""
    table = results.table
    id_name = id_name_of(table)
    rows = table[table.reference.isna()]
    out: dict[str, float] = {}
    per_point = rows[rows.other_point.isna()]
    for metric, group in per_point.groupby("metric", sort=False):
        split = "test" if (group.split == "test").any() else group.split.iloc[0]
        out |= _named(str(metric), group[group.split == split], id_name)
    out |= _named("cka_prev", rows[(rows.metric == "cka") & (rows.other_layer == rows.layer - 1)], id_name)
    for key, name in ((TUNNEL_START, "tunnel_start"), (MODEL_ACCURACY, "model_accuracy")):
        value = results.summary.get(key)
        if isinstance(value, (int, float)):
            out[name] = float(value)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def heatmap_image(history: pd.DataFrame, metric: str = "probe_acc") -> np.ndarray | None:
    """``(1, layers·CELL, steps·CELL)`` image in [0, 1] of ``metric`` on the ID test split, layer 0
    at the bottom and one column per measured step (None when the metric is not measured)."""
    id_name = id_name_of(history)
    rows = history[(history.metric == metric) & (history.dataset == id_name) & (history.split == "test")
                   & history.other_point.isna() & history.reference.isna()]
    if rows.empty:
        return None
    grid = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="first").sort_index()
    values = np.nan_to_num(grid.to_numpy(dtype=float)[::-1], nan=0.0).clip(0, 1)
    return np.kron(values, np.ones((CELL, CELL)))[None].astype(np.float32)


class TableWriter:
    """The monitor's whole table in ``path`` (``.parquet`` or ``.csv``), rewritten atomically
    after every measurement."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".parquet", ".csv"):
            raise ConfigError(f"a table writer writes .parquet or .csv, not {self.path.name!r}")

    def write(self, step: int, results: Results, history: pd.DataFrame) -> None:
        """Rewrite the file with ``history``."""
        if self.path.suffix == ".csv":
            atomic_write(self.path, lambda handle: handle.write(history.to_csv(index=False).encode()))
        else:
            atomic_write(self.path, lambda handle: history.to_parquet(handle, index=False))

    def close(self) -> None:
        """Nothing is held open."""


class TensorBoardWriter:
    """Scalars (:func:`scalars`, tags prefixed ``tunnelscope/``) and the layer × step image of
    the probe accuracy (``tunnelscope/probe_acc_layers_x_steps``) into a TensorBoard event
    file: a ``SummaryWriter`` of yours (``writer``) or a new one in ``log_dir``."""

    def __init__(self, log_dir: str | Path | None = None, writer: Any = None) -> None:
        if (log_dir is None) == (writer is None):
            raise ConfigError("give TensorBoardWriter exactly one of log_dir and writer")
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("TensorBoard is not installed: pip install 'tunnelscope[tensorboard]'") from None
            writer = SummaryWriter(log_dir=str(log_dir))
        self.writer, self.owned = writer, log_dir is not None

    def write(self, step: int, results: Results, history: pd.DataFrame) -> None:
        """Every scalar at ``step`` and the heatmap of every measurement so far."""
        for tag, value in scalars(results).items():
            self.writer.add_scalar(f"tunnelscope/{tag}", value, step)
        image = heatmap_image(history)
        if image is not None:
            self.writer.add_image("tunnelscope/probe_acc_layers_x_steps", image, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        """Close the event file when this writer opened it."""
        if self.owned:
            self.writer.close()


class WandbWriter:
    """Scalars (:func:`scalars`, keys prefixed ``tunnelscope/``) logged to a W&B run: ``run``,
    else the active ``wandb.run``. Offline mode (``WANDB_MODE=offline``) works as online."""

    def __init__(self, run: Any = None) -> None:
        if run is None:
            try:
                import wandb
            except ImportError:
                raise ConfigError("Weights & Biases is not installed: pip install 'tunnelscope[wandb]'") from None
            if wandb.run is None:
                raise ConfigError("no W&B run is active: call wandb.init(...) first or give run=")
            run = wandb.run
        self.run = run

    def write(self, step: int, results: Results, history: pd.DataFrame) -> None:
        """Log every scalar at ``step``."""
        self.run.log({f"tunnelscope/{k}": v for k, v in scalars(results).items()}, step=step)

    def close(self) -> None:
        """The run is the caller's to finish."""


class MLflowWriter:
    """Scalars (:func:`scalars`, keys prefixed ``tunnelscope/``) logged to the active MLflow run
    (or ``run_id``), with the step."""

    def __init__(self, run_id: str | None = None) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError("MLflow is not installed: pip install 'tunnelscope[mlflow]'") from None
        if run_id is None and mlflow.active_run() is None:
            raise ConfigError("no MLflow run is active: call mlflow.start_run() first or give run_id=")
        self.mlflow, self.run_id = mlflow, run_id

    def write(self, step: int, results: Results, history: pd.DataFrame) -> None:
        """Log every scalar at ``step``."""
        values = {f"tunnelscope/{k}": v for k, v in scalars(results).items()}
        if self.run_id is None:
            self.mlflow.log_metrics(values, step=step)
        else:
            now = int(time.time() * 1000)
            self.mlflow.MlflowClient().log_batch(self.run_id, metrics=[
                self.mlflow.entities.Metric(key, value, now, step) for key, value in values.items()])

    def close(self) -> None:
        """The run is the caller's to end."""


__all__ = ["MLflowWriter", "TableWriter", "TensorBoardWriter", "WandbWriter", "heatmap_image", "scalars"]
