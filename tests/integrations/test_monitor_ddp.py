"""A monitor inside a DistributedDataParallel loop under ``torchrun`` (2 processes, gloo, CPU),
with its default probe set (256 samples, fewer than a batch per process): every process records
the same measurements, only the first one writes, and a measurement equals a one-process offline
analysis of the model at that step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

import tunnelscope as ts
from tunnelscope import data
from tunnelscope.experiments.monitor import Monitor

sys.path.insert(0, str(Path(__file__).parent))
from monitor_ddp_worker import POINTS, SNAPSHOT_STEP, net

WORKER = Path(__file__).parent / "monitor_ddp_worker.py"


def _rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = table.drop(columns=["step", "epoch"], errors="ignore").copy()
    for column in ("point", "other_point", "reference", "dataset", "split", "metric", "model"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), "").astype(str)
    rows["other_layer"] = rows["other_layer"].astype(float).fillna(-1.0)
    return rows.sort_values(["dataset", "split", "metric", "layer", "other_layer", "reference"]).reset_index(drop=True)


def test_a_monitor_under_ddp_measures_alike_on_every_process_and_as_one_process_would(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(WORKER), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    tables = [pd.read_parquet(tmp_path / f"table-{rank}.parquet") for rank in (0, 1)]
    assert tables[0]["step"].unique().tolist() == [0, 1, 2, 4, 8]
    pd.testing.assert_frame_equal(tables[0], tables[1])  # DDP keeps the replicas equal: so are the measurements
    assert (tmp_path / "written-by-rank-0.parquet").is_file()
    assert not (tmp_path / "written-by-rank-1.parquet").exists()  # writers on the first process only
    model = net()
    model.load_state_dict(torch.load(tmp_path / "snapshot.pt", weights_only=True))
    ds = data.load("digits[classes=0-4]")
    monitor = Monitor(model, ds, points=POINTS, every=4)  # the settings of the worker's monitor
    offline = ts.analyze(model, ds, metrics=monitor.metrics, settings=monitor.settings)
    measured = tables[0][tables[0].step == SNAPSHOT_STEP]
    # each process measured by itself: one process's analysis (this one runs on more threads)
    pd.testing.assert_frame_equal(_rows(measured), _rows(offline.table.reindex(columns=measured.columns[2:])),
                                  check_exact=False, rtol=1e-6, atol=1e-9)
