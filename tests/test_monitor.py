"""The training monitor: it does not disturb training (bit-identical weights), its
measurements equal an offline analysis of the model saved at that step, under a plain loop,
Lightning and the Hugging Face Trainer; its writers' files read back with each library's own
reader; the schedule, the stability step and the budget."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tunnelscope as ts
from cli_helpers import run_cli
from optional import require
from tunnelscope import data
from tunnelscope.errors import ConfigError, MonitorBudgetError
from tunnelscope.experiments.dynamics import DynamicsResult
from tunnelscope.experiments.monitor import Monitor, due, stable_step
from tunnelscope.summary import TUNNEL_START

DATA = "digits[classes=0-4]"
POINTS = ["blocks.0", "blocks.1", "blocks.2"]


@pytest.fixture(scope="module")
def dataset() -> data.Dataset:
    return data.load(DATA)


class Net(nn.Module):
    """Batch norm and dropout: what a careless measurement would disturb (running statistics,
    the random stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(n_in, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2)) for n_in in (64, 32, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _train(dataset, monitor_kwargs: dict | None, epochs: int = 10, snapshot_at: int | None = None):
    """A plain loop (SGD with momentum, seeded shuffles); with ``monitor_kwargs`` a monitor
    watches it. Returns the model, the monitor and a copy of the model taken at ``snapshot_at``."""
    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    monitor = Monitor(net, dataset, points=POINTS, **monitor_kwargs) if monitor_kwargs is not None else None
    shuffle = torch.Generator().manual_seed(1)
    snapshot, step = None, 0
    for epoch in range(epochs):
        batches = list(dataset.train.batches(32, shuffle=True, generator=shuffle, drop_last=True))
        for x, y in (monitor.watch(batches, epoch) if monitor else batches):
            if snapshot_at is not None and step == snapshot_at:
                snapshot = copy.deepcopy(net)  # the model the monitor measured at this step
            net.train()
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
            step += 1
    return net, monitor, snapshot


def _offline(model: nn.Module, dataset, monitor: Monitor) -> ts.Results:
    """An offline analysis of ``model`` with the monitor's settings (probe set, metrics, reduction)."""
    return ts.analyze(model, dataset, metrics=monitor.metrics, settings=monitor.settings)


def _rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows in one order, missing names and numbers written the same way in both tables."""
    rows = table.drop(columns=["step", "epoch"], errors="ignore").copy()
    for column in ("point", "other_point", "reference", "dataset", "split", "metric", "model"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), "").astype(str)
    rows["other_layer"] = rows["other_layer"].astype(float).fillna(-1.0)
    keys = ["dataset", "split", "metric", "layer", "other_layer", "reference"]
    return rows.sort_values(keys).reset_index(drop=True)


@pytest.fixture(scope="module")
def watched(dataset):
    return _train(dataset, {"every": 20}, snapshot_at=40)


def test_the_schedule_is_every_k_steps_and_powers_of_two_before_k():
    assert [s for s in range(61) if due(s, 20, True)] == [0, 1, 2, 4, 8, 16, 20, 40, 60]
    assert [s for s in range(61) if due(s, 20, False)] == [0, 20, 40, 60]


def test_training_with_a_monitor_gives_bit_identical_weights(dataset, watched):
    plain, _, _ = _train(dataset, None)
    net, monitor, _ = watched
    expected = plain.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in net.state_dict().items())  # BN statistics too
    # 10 epochs of 22 full batches of 32: 220 steps
    assert monitor.steps["step"].tolist() == [0, 1, 2, 4, 8, 16, *range(20, 221, 20)]
    np.testing.assert_allclose(monitor.steps["epoch"].iloc[-1], 10.0)
    assert net.training  # the loop's mode, as the loop left it


def test_a_measurement_equals_an_offline_analysis_of_the_model_at_that_step(dataset, watched):
    _, monitor, snapshot = watched
    offline = _offline(snapshot, dataset, monitor)
    measured = monitor.table[monitor.table.step == 40]
    pd.testing.assert_frame_equal(_rows(measured), _rows(offline.table.reindex(columns=measured.columns[2:])),
                                  check_exact=False, rtol=1e-6, atol=1e-9)
    assert monitor.summaries[40][TUNNEL_START] == offline.summary[TUNNEL_START]


def test_the_result_saves_as_a_dynamics_analysis_with_the_stable_step_marked(dataset, watched, tmp_path, capsys):
    _, monitor, _ = watched
    result = monitor.save(tmp_path / "monitored")
    (tmp_path / "monitored" / "figures" / "heatmaps.png").unlink()
    code, out, err = run_cli(["report", tmp_path / "monitored", "--json"], capsys)  # redrawn from the saved tables
    assert code == 0, err
    assert json.loads(out)["figures"] == 2 and (tmp_path / "monitored" / "figures" / "heatmaps.png").is_file()
    loaded = DynamicsResult.load(tmp_path / "monitored")
    assert loaded.step_list == monitor.steps["step"].tolist()
    stable, why = stable_step(monitor.steps)
    assert stable is not None  # this MLP's start settles: the mark below is checked, not skipped
    assert loaded.config["tunnel_stable_step"] == stable and loaded.config["tunnel_stable"] == why
    assert (tmp_path / "monitored" / "figures" / "heatmaps.png").stat().st_size > 0
    from tunnelscope.report.experiments import draw_experiment

    figure = draw_experiment("dynamics", result.figure_tables(), result.saved_config())["figures/heatmaps"]
    marks = [line for line in figure.axes[0].get_lines() if "stable from step" in line.get_label()]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == stable


def test_the_stable_step_is_where_the_start_stays_within_one_layer_of_its_last_value():
    def steps(starts):
        return pd.DataFrame({"step": range(0, 10 * len(starts), 10), TUNNEL_START: starts})

    assert stable_step(steps([5, 5, 3, 2, 2, 3]))[0] == 20
    assert stable_step(steps([1, 1, 1]))[0] == 0
    assert stable_step(steps([1, 5, 1, 5]))[0] is None  # it moved at the last step: not seen to stay
    assert stable_step(steps([2, np.nan, 2, 2]))[0] == 20  # an undefined start breaks the run
    assert "undefined" in stable_step(steps([2, 2, np.nan]))[1]
    assert stable_step(steps([3]))[0] is None  # one measurement: nothing was seen to stay


def test_a_schedule_over_the_budget_is_refused_in_one_line(dataset):
    with pytest.raises(MonitorBudgetError, match=r"budget 0.0001%\); measure every \d+ steps or more") as caught:
        _train(dataset, {"every": 1, "budget": 1e-6})
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="every must be >= 1"):
        Monitor(Net(), dataset, every=0)
    with pytest.raises(ConfigError, match="budget is a share"):
        Monitor(Net(), dataset, budget=-1)


def _wandb_history(run_file) -> dict[str, list[tuple[int, float]]]:
    """The history records of an offline W&B run file: its LevelDB-style log (32 KiB blocks of
    chunks with a 7-byte header) of ``Record`` messages, parsed with W&B's own protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    out: dict[str, list[tuple[int, float]]] = {}
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(raw):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack("<HB", raw[position + 4:position + 7])
        chunk = raw[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                step = record.history.step.num
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if key.startswith("tunnelscope/"):
                        out.setdefault(key, []).append((step, json.loads(item.value_json)))
    return out


def test_the_writers_files_read_back_with_each_librarys_reader(dataset, tmp_path, monkeypatch):
    mlflow, wandb = require("mlflow"), require("wandb")
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunnelscope.integrations.writers import MLflowWriter, TableWriter, TensorBoardWriter, WandbWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store (maintained, not developed)
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    run = wandb.init(mode="offline", dir=str(tmp_path), project="tunnelscope-test")
    with mlflow.start_run() as mlflow_run:
        writers = [TableWriter(tmp_path / "monitor.parquet"), TensorBoardWriter(tmp_path / "tb"), WandbWriter(run),
                   MLflowWriter()]
        _, monitor, _ = _train(dataset, {"every": 20, "writers": writers}, epochs=1)
        monitor.close()
    run.finish()
    pd.testing.assert_frame_equal(_rows(pd.read_parquet(tmp_path / "monitor.parquet")), _rows(monitor.table),
                                  check_dtype=False)
    table = monitor.table
    rows = table[(table.metric == "probe_acc") & (table.split == "test") & (table.layer == 2)]
    expected = list(zip(rows.step.astype(int), rows.value))
    key = "tunnelscope/probe_acc/id/layer_02"

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})  # keep every event
    events.Reload()
    tb = [(e.step, e.value) for e in events.Scalars(key)]
    assert [s for s, _ in tb] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in tb], [v for _, v in expected], rtol=1e-6)
    assert len(events.Images("tunnelscope/probe_acc_layers_x_steps")) == len(expected)

    history = sorted(mlflow.MlflowClient().get_metric_history(mlflow_run.info.run_id, key), key=lambda m: m.step)
    assert [m.step for m in history] == [s for s, _ in expected]
    np.testing.assert_allclose([m.value for m in history], [v for _, v in expected], rtol=1e-12)

    run_file = next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = _wandb_history(run_file)[key]
    assert [s for s, _ in logged] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-12)


def test_mlflow_writer_logs_to_a_run_given_by_id_without_an_active_run(dataset, tmp_path, monkeypatch):
    mlflow = require("mlflow")
    from tunnelscope.errors import ConfigError
    from tunnelscope.integrations.writers import MLflowWriter

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    assert mlflow.active_run() is None
    with pytest.raises(ConfigError, match="no MLflow run is active"):
        MLflowWriter()
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("tunnelscope-test")).info.run_id
    _, monitor, _ = _train(dataset, {"every": 20, "writers": [MLflowWriter(run_id=run_id)]}, epochs=1)
    monitor.close()
    table = monitor.table
    rows = table[(table.metric == "probe_acc") & (table.split == "test") & (table.layer == 2)]
    history = sorted(client.get_metric_history(run_id, "tunnelscope/probe_acc/id/layer_02"), key=lambda m: m.step)
    assert len(history) >= 2 and [m.step for m in history] == rows.step.astype(int).tolist()
    np.testing.assert_allclose([m.value for m in history], rows.value.to_numpy(), rtol=1e-12)


def test_lightning_callback_measures_what_an_offline_analysis_gives(dataset, tmp_path):
    lightning = require("lightning")
    from tunnelscope.integrations.lightning import MonitorCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Snapshot(lightning.Callback):
        def __init__(self) -> None:
            self.model = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 40:
                self.model = copy.deepcopy(pl_module.net)

    x, y = next(dataset.train.batches(len(dataset.train)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    module = Module()
    monitor = Monitor(module.net, dataset, points=POINTS, every=20)
    snapshot = Snapshot()
    trainer = lightning.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[MonitorCallback(monitor, out=tmp_path / "lightning"), snapshot])
    trainer.fit(module, loader)
    assert monitor.steps["step"].tolist() == [0, 1, 2, 4, 8, 16, *range(20, 201, 20)]
    offline = _offline(snapshot.model, dataset, monitor)
    measured = monitor.table[monitor.table.step == 40]
    pd.testing.assert_frame_equal(_rows(measured), _rows(offline.table.reindex(columns=measured.columns[2:])),
                                  check_exact=False, rtol=1e-6, atol=1e-9)
    assert DynamicsResult.load(tmp_path / "lightning").step_list == monitor.steps["step"].tolist()


def test_hugging_face_trainer_callback_on_a_random_init_vit(dataset, tmp_path):
    transformers = require("transformers")
    require("accelerate")  # the Trainer's
    from tunnelscope.integrations.hf import MonitorTrainerCallback

    class Logits(nn.Module):
        """The tensor-to-logits view of the Trainer's model (same parameters) that a monitor analyses."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(pixel_values=x).logits

    class Images(torch.utils.data.Dataset):
        def __init__(self, x, y) -> None:
            self.x, self.y = x, y

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i):
            return {"pixel_values": self.x[i], "labels": self.y[i]}

    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=3,
                                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    model = transformers.ViTForImageClassification(config)
    view = Logits(model)
    monitor = Monitor(view, dataset, points=["m.vit.layers.?"], every=20)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=200,
                                          per_device_train_batch_size=32, learning_rate=1e-3, report_to=[],
                                          use_cpu=True, save_strategy="no", logging_strategy="no", seed=0,
                                          disable_tqdm=True, dataloader_num_workers=0)
    x, y = next(dataset.train.batches(len(dataset.train)))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Images(x, y),
                                   callbacks=[MonitorTrainerCallback(monitor, out=tmp_path / "monitored")])
    trainer.train()
    assert monitor.steps["step"].tolist() == [0, 1, 2, 4, 8, 16, *range(20, 201, 20)]
    tx, ty = next(dataset.test.batches(len(dataset.test)))
    with torch.no_grad():
        accuracy = float((view.eval()(tx).argmax(1) == ty).double().mean())  # the model after the last step
    assert monitor.summaries[200]["model_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    offline = _offline(view, dataset, monitor)
    measured = monitor.table[monitor.table.step == 200]
    pd.testing.assert_frame_equal(_rows(measured), _rows(offline.table.reindex(columns=measured.columns[2:])),
                                  check_exact=False, rtol=1e-6, atol=1e-9)
