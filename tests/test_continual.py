"""The continual-learning experiment: swap bookkeeping, accuracies against an independent
loop, probe accuracies against scikit-learn, the forgetting table, refusals and files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from experiment_contract import check_contract
from tunnelscope import data
from tunnelscope.checkpoint import read_checkpoint
from tunnelscope.errors import ConfigError, RunDirectoryError
from tunnelscope.experiments.continual import (
    ContinualResult,
    Head,
    classifier_head,
    combine,
    continual,
    fine_tune_tunnel,
    fit,
    partition,
    swap_states,
)
from tunnelscope.models import build
from tunnelscope.report.experiments import draw_experiment
from tunnelscope.train import Recipe, train
from tunnelscope.tunnel import tunnel_start

MODEL = "mlp-4x32"  # three probe points: blocks.0, blocks.1, blocks.2
TASK1 = "fashion-mnist[classes=0-4,per_class=60,test_per_class=20]"
TASK2 = "fashion-mnist[classes=5-9,per_class=60,test_per_class=20]"
BATCH = 32


@pytest.fixture(scope="module")
def tasks() -> tuple[data.Dataset, data.Dataset]:
    return data.load(TASK1), data.load(TASK2)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> ContinualResult:
    """The default protocol: one classifier head per task."""
    out = tmp_path_factory.mktemp("continual")
    return continual(MODEL, TASK1, TASK2, epochs=1, finetune_epochs=1, out=out, device="cpu", progress=False,
                     batch_size=BATCH)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> ContinualResult:
    """One classifier head for both tasks."""
    out = tmp_path_factory.mktemp("continual-shared")
    return continual(MODEL, TASK1, TASK2, epochs=1, finetune_epochs=1, out=out, device="cpu", progress=False,
                     batch_size=BATCH, heads="shared")


HEAD_KEYS = ("classifier.weight", "classifier.bias")  # the MLP's logits layer, written out by hand


def _scored(state: dict[str, torch.Tensor], head_from: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``state`` with the MLP's head tensors taken from ``head_from`` (None: its own)."""
    return {k: (head_from if head_from is not None and k in HEAD_KEYS else state)[k] for k in state}


def _state(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def _net(state: dict[str, torch.Tensor]) -> nn.Module:
    net = build(MODEL, 5, (1, 28, 28))
    net.load_state_dict(state)
    return net.eval()


def _plain_accuracy(state: dict[str, torch.Tensor], split) -> float:
    """Accuracy by hand: the whole test split in one batch, argmax of the logits."""
    x, y = next(split.batches(len(split)))
    with torch.no_grad():
        return float((_net(state)(x).argmax(1) == y).double().mean())


def _extractor_by_prefix(keys, layer: int) -> set[str]:
    """The keys of an MLP's first ``layer`` blocks, written out independently of the partition."""
    return {k for k in keys if any(k.startswith(f"blocks.{i}.") for i in range(layer))}


def _example(ds: data.Dataset) -> torch.Tensor:
    return next(ds.test.batches(2))[0]


# ----------------------------------------------------------------------------- swap bookkeeping
def test_partition_covers_every_tensor_once_and_is_the_modules_up_to_the_split(run, tasks):
    m1 = _net(_state(run.m1_checkpoint))
    split = partition(m1, "blocks.1", _example(tasks[0]))
    keys = list(m1.state_dict())
    assert list(split.keys) == keys
    assert sorted(split.extractor + split.tunnel) == sorted(keys) and not set(split.extractor) & set(split.tunnel)
    assert set(split.extractor) == _extractor_by_prefix(keys, 2)
    assert "blocks.1.1.running_mean" in split.extractor and "classifier.weight" in split.tunnel
    assert set(split.extractor_modules) == {"blocks.0", "blocks.0.0", "blocks.0.1", "blocks.0.2",
                                            "blocks.1", "blocks.1.0", "blocks.1.1", "blocks.1.2"}
    assert split.straddling == () and split.unused == ()


def test_swaps_give_back_each_model_exactly(run, tasks):
    m1, m2 = _state(run.m1_checkpoint), _state(run.m2_checkpoint)
    split = partition(_net(m1), "blocks.1", _example(tasks[0]))
    states = swap_states(m1, m2, split)
    for name, source in (("E1+T1", m1), ("E2+T2", m2)):
        assert list(states[name]) == list(source)
        assert all(torch.equal(states[name][k], source[k]) for k in source), name
    back = combine(states["E2+T1"], m2, split)  # E2+T1 with its tunnel taken from M2 again
    assert all(torch.equal(back[k], m2[k]) for k in m2)
    extractor = _extractor_by_prefix(m1, 2)
    mixed = states["E1+T2"]
    assert all(torch.equal(mixed[k], (m1 if k in extractor else m2)[k]) for k in m1)
    assert any(not torch.equal(m1[k], m2[k]) for k in extractor)  # task 2 moved the extractor: a real swap


@pytest.mark.parametrize("variant", ["run", "shared"])
def test_swap_accuracies_equal_a_plain_loop(variant, request, tasks):
    """Per-task heads: task t is scored through M_t's head whatever the combination; shared: the
    combination's own head (the tunnel's) serves both tasks."""
    result = request.getfixturevalue(variant)
    m1, m2 = _state(result.m1_checkpoint), _state(result.m2_checkpoint)
    extractor = _extractor_by_prefix(m1, result.split_layer)
    models = {"1": m1, "2": m2}
    for name in ("E1+T1", "E1+T2", "E2+T1", "E2+T2"):
        e, t = models[name[1]], models[name[4]]
        state = {k: (e if k in extractor else t)[k] for k in m1}
        for column, task, own in zip(("task1_acc", "task2_acc"), tasks, (m1, m2)):
            scored = _scored(state, own if variant == "run" else None)
            assert result.swaps.loc[name, column] == pytest.approx(_plain_accuracy(scored, task.test),
                                                                   abs=1e-12), name
    accuracy = result.config["model_accuracy"]
    assert result.swaps.loc["E1+T1", "task1_acc"] == pytest.approx(accuracy["M1 task 1"])
    assert result.swaps.loc["E2+T2", "task2_acc"] == pytest.approx(accuracy["M2 task 2"])


def test_per_task_heads_train_a_fresh_head_on_task_2_and_keep_m1s(run, tasks):
    """M2 equals an independent reproduction: M1's weights with a head freshly initialised under
    the recorded seed, trained on task 2 by ``fit``; M1's head stays what task 1 left."""
    m1, m2 = _state(run.m1_checkpoint), _state(run.m2_checkpoint)
    assert run.config["head"]["keys"] == list(HEAD_KEYS) and run.config["head"]["module"] == "classifier"
    torch.manual_seed(run.config["seed"] + 0x7461736B32)
    fresh = build(MODEL, 5, (1, 28, 28)).state_dict()
    net = _net(_scored(m1, fresh))
    fit(net, tasks[1], 1, Recipe.resolve("sgd", 1), batch_size=BATCH, seed=0, device=torch.device("cpu"),
        progress=False)
    assert all(torch.equal(v, m2[k]) for k, v in net.state_dict().items())
    assert not torch.equal(m2["classifier.weight"], m1["classifier.weight"])
    # forgetting through the network's own heads: M2 on task 1 is M2's body read by M1's head
    assert run.config["model_accuracy"]["M2 task 1"] == pytest.approx(
        _plain_accuracy(_scored(m2, m1), tasks[0].test), abs=1e-12)


def test_fine_tuning_moves_only_the_tunnel_and_reproduces_the_reported_accuracy(run, tasks):
    m1, m2 = _state(run.m1_checkpoint), _state(run.m2_checkpoint)
    net = build(MODEL, 5, (1, 28, 28))
    split = partition(net, run.split_point, _example(tasks[0]))
    net.load_state_dict(swap_states(m1, m2, split)["E2+T1"])
    fine_tune_tunnel(net, split, tasks[0], 1, Recipe.resolve("sgd", 1), batch_size=BATCH, seed=0,
                     device=torch.device("cpu"), progress=False)
    tuned = {k: v.detach().clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(tuned[k], m2[k]) for k in split.extractor)  # E2, batch-norm statistics included
    assert any(not torch.equal(tuned[k], m1[k]) for k in split.tunnel)
    # task 1 through the fine-tuned head (M1's head, trained again), task 2 through M2's head
    for column, task, head in zip(("task1_acc", "task2_acc"), tasks, (None, m2)):
        assert run.swaps.loc["E2+T1 fine-tuned", column] == pytest.approx(
            _plain_accuracy(_scored(tuned, head), task.test), abs=1e-12)


# ----------------------------------------------------------------------------- probes and forgetting
def _features(state, ds_split, layer: int) -> np.ndarray:
    """Block ``layer``'s output, by running the MLP's first blocks by hand (eval mode)."""
    net = _net(state)
    x, _ = next(ds_split.batches(len(ds_split)))
    with torch.no_grad():
        return net.blocks[:layer](x.flatten(1)).double().numpy()


def _sklearn_probe(state, task: data.Dataset, layer: int) -> float:
    """scikit-learn's L2 logistic regression (C = 1) on standardised features: the probes' objective."""
    scaler = StandardScaler().fit(_features(state, task.train, layer))
    clf = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-6)
    clf.fit(scaler.transform(_features(state, task.train, layer)), task.train.labels.numpy())
    return float(clf.score(scaler.transform(_features(state, task.test, layer)), task.test.labels.numpy()))


def test_forgetting_table_is_one_row_per_point_with_independent_probe_accuracies(run, tasks):
    table = run.forgetting
    assert list(table.columns) == ["layer", "point", "acc_M1", "acc_M2", "forgetting"]
    assert table["layer"].tolist() == [1, 2, 3] and table["point"].tolist() == ["blocks.0", "blocks.1", "blocks.2"]
    np.testing.assert_allclose(table["forgetting"], table["acc_M1"] - table["acc_M2"], rtol=0, atol=1e-15)
    one_sample = 1 / len(tasks[0].test) + 1e-9  # a near-tie may fall either way between two solvers
    m1, m2 = _state(run.m1_checkpoint), _state(run.m2_checkpoint)
    for row in table.itertuples():
        assert abs(row.acc_M1 - _sklearn_probe(m1, tasks[0], row.layer)) <= one_sample
        assert abs(row.acc_M2 - _sklearn_probe(m2, tasks[0], row.layer)) <= one_sample
    head = run.swaps.loc["E2 + linear head"]
    assert head["task1_acc"] == table.loc[run.split_layer - 1, "acc_M2"]
    assert abs(head["task2_acc"] - _sklearn_probe(m2, tasks[1], run.split_layer)) <= one_sample


def test_default_split_is_m1s_tunnel_start(run):
    assert run.split_source == "tunnel_start"
    assert run.split_layer == tunnel_start(run.forgetting["acc_M1"].to_numpy())
    assert run.split_point == run.forgetting.loc[run.split_layer - 1, "point"]
    assert run.config["split"]["layer"] == run.split_layer and run.config["split"]["source"] == "tunnel_start"


# ----------------------------------------------------------------------------- training loop
def test_fit_reproduces_train_exactly(tmp_path, tasks):
    result = train("mlp-3x16", tasks[0], epochs=1, out=tmp_path, batch_size=BATCH, seed=3, progress=False,
                   early_checkpoints=False)
    torch.manual_seed(3)  # what train does before it builds the model
    net = build("mlp-3x16", 5, (1, 28, 28))
    history = fit(net, tasks[0], 1, Recipe.resolve("sgd", 1), batch_size=BATCH, seed=3, device=torch.device("cpu"),
                  progress=False)
    expected = result.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    assert history[-1]["test_acc"] == result.test_accuracy


# ----------------------------------------------------------------------------- generic modules
class _Tokened(nn.Module):
    """A root-level parameter used before the first layer, like a transformer's class token."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(4))
        self.first, self.second, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.spare = nn.Linear(4, 4)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x + self.offset)))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer, self.middle = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.middle(self.layer(x)))


class _Sliced(nn.Module):
    """Logits cut from a wider last layer: its last weighted module is not a head of 2 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.wide = nn.Linear(4, 4), nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(self.body(x))[:, :2]


def test_the_classifier_head_is_the_last_weighted_module_that_outputs_the_logits():
    assert classifier_head(_Tokened(), torch.zeros(2, 4), 2) == Head("head", ("head.weight", "head.bias"))
    with pytest.raises(ConfigError, match=r"'wide', outputs \(2, 6\), not 2 logits"):
        classifier_head(_Sliced(), torch.zeros(2, 4), 2)


def test_partition_of_other_modules():
    split = partition(_Tokened(), "first", torch.zeros(2, 4))
    assert set(split.extractor) == {"offset", "first.weight", "first.bias"} and split.straddling == ("offset",)
    assert set(split.unused) == {"spare.weight", "spare.bias"} and set(split.unused) <= set(split.tunnel)
    with pytest.raises(ConfigError, match="both before and after"):
        partition(_Shared(), "middle", torch.zeros(2, 4))


# ----------------------------------------------------------------------------- refusals and files
def test_mismatched_tasks_are_refused_before_training(tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match="classes"):
        continual(MODEL, TASK1, "fashion-mnist[classes=5-7,per_class=60,test_per_class=20]", out=out,
                  device="cpu", progress=False)
    with pytest.raises(ConfigError, match="inputs"):
        continual(MODEL, TASK1, "digits[classes=0-4]", out=out, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="split_at=4 is out of range"):
        continual(MODEL, TASK1, TASK2, split_at=4, out=out, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="unknown training option"):
        continual(MODEL, TASK1, TASK2, out=out, device="cpu", progress=False, momentum=0.5)
    with pytest.raises(ConfigError, match="heads must be one of per-task, shared"):
        continual(MODEL, TASK1, TASK2, out=out, device="cpu", progress=False, heads="one")
    with pytest.raises(ConfigError, match="'classifier' is or follows the classifier head 'classifier'"):
        continual(MODEL, TASK1, TASK2, out=out, device="cpu", progress=False, points=["blocks.0", "classifier"])
    assert not out.exists()


def test_save_writes_the_tables_the_figure_and_the_config(run, tmp_path):
    out = run.m1_checkpoint.parents[2]  # continual() saved there
    for name in ("swaps.csv", "forgetting.csv", "config.json", "continual.png", "continual.svg"):
        assert (out / name).stat().st_size > 0, name
    pd.testing.assert_frame_equal(pd.read_csv(out / "swaps.csv", index_col="combination"), run.swaps)
    pd.testing.assert_frame_equal(pd.read_csv(out / "forgetting.csv"), run.forgetting)
    config = json.loads((out / "config.json").read_text())
    assert config["task1"] == TASK1 and config["split"]["point"] == run.split_point
    assert config["checkpoints"]["M2"] == str(run.m2_checkpoint) and "torch" in config["versions"]
    assert list(run.swaps.index) == ["E1+T1", "E1+T2", "E2+T1", "E2+T2", "E2+T1 fine-tuned", "E2 + linear head"]
    assert config["kind"] == "continual"
    elsewhere = tmp_path / "copy"
    paths = run.save(elsewhere)
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(p.name for p in paths) == sorted(
        ["config.json", "continual.png", "continual.svg", "forgetting.csv", "report.html", "swaps.csv"])
    with pytest.raises(RunDirectoryError, match="already holds"):
        continual(MODEL, TASK1, TASK2, epochs=1, out=out, device="cpu", progress=False, batch_size=BATCH)


def test_swaps_csv_keeps_its_text_and_a_partial_experiment_is_refused(run, tmp_path):
    out = run.m1_checkpoint.parents[2]
    assert (out / "swaps.csv").read_text() == run.swaps.to_csv(index_label="combination")  # as before the contract
    partial = tmp_path / "partial"
    (partial / "m1").mkdir(parents=True)
    (partial / "m1" / "run.json").write_text("{}")  # an experiment that stopped after training M1
    with pytest.raises(RunDirectoryError, match=r"partial \(m1/run.json\)"):
        continual(MODEL, TASK1, TASK2, epochs=1, out=partial, device="cpu", progress=False, batch_size=BATCH)


def test_the_result_keeps_the_contract_and_loads_back(run, tmp_path):
    loaded = check_contract(run, tmp_path)
    assert isinstance(loaded, ContinualResult)
    pd.testing.assert_frame_equal(loaded.swaps, run.swaps)
    pd.testing.assert_frame_equal(loaded.forgetting, run.forgetting)
    assert (loaded.split_layer, loaded.split_point, loaded.split_source, loaded.split_reason) == (
        run.split_layer, run.split_point, run.split_source, run.split_reason)
    assert (loaded.m1_checkpoint, loaded.m2_checkpoint) == (run.m1_checkpoint, run.m2_checkpoint)
    assert loaded.partition is None and loaded.config["probe_points"] == run.config["probe_points"]


def test_the_figure_drawn_from_saved_tables_shows_the_computed_numbers(run):
    loaded = ContinualResult.load(run.m1_checkpoint.parents[2])
    fig = draw_experiment("continual", loaded.tables(), loaded.saved_config())["continual"]
    bars, curves = fig.axes[0], fig.axes[1]
    heights = [p.get_height() for p in bars.patches]
    n = len(run.swaps)
    np.testing.assert_allclose(heights[:n], np.nan_to_num(run.swaps["task1_acc"].to_numpy()), rtol=0, atol=0)
    np.testing.assert_allclose(heights[n:], np.nan_to_num(run.swaps["task2_acc"].to_numpy()), rtol=0, atol=0)
    assert [t.get_text() for t in bars.get_xticklabels()] == list(run.swaps.index)
    m1, m2, split = curves.get_lines()[:3]
    np.testing.assert_array_equal(m1.get_ydata(), run.forgetting["acc_M1"].to_numpy())
    np.testing.assert_array_equal(m2.get_ydata(), run.forgetting["acc_M2"].to_numpy())
    assert list(split.get_xdata()) == [run.split_layer, run.split_layer]
    assert f"layer {run.split_layer} ({run.split_point})" in split.get_label()
