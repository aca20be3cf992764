"""Interventions on trained networks, each checked against an independent computation:
weight movement against numpy on the raw checkpoint files, resets against hand-assembled
state dicts, block deletion against forward hooks that zero the residual branch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from experiment_contract import check_contract
from tunnelscope import data, train
from tunnelscope.checkpoint import save_checkpoint
from tunnelscope.errors import CheckpointError, ConfigError, RunDirectoryError
from tunnelscope.experiments.interventions import (
    HEAD,
    OTHER,
    InterventionResult,
    delete_blocks,
    layer_map,
    reset_layers,
    reset_model,
    save_intervention,
    weight_movement,
    without_blocks,
)
from tunnelscope.models import build, load_model
from tunnelscope.report.experiments import draw_experiment
from tunnelscope.report.interventions import interventions_figure

MLP_DATA = "fashion-mnist[classes=0-4,per_class=60,test_per_class=30]"
RESNET_DATA = "digits[per_class=20,test_per_class=10]"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """mlp-4x32 (3 hidden blocks + classifier), 1 epoch of 6 steps, checkpoints at 0, 1, 2, 4, 6."""
    ds = data.load(MLP_DATA)
    out = tmp_path_factory.mktemp("mlp-run")
    return train("mlp-4x32", ds, epochs=1, out=out, batch_size=50, progress=False, device="cpu"), ds


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """The smallest zoo ResNet on 8x8 digits, 1 epoch: only its final checkpoint is kept."""
    ds = data.load(RESNET_DATA)
    out = tmp_path_factory.mktemp("resnet-run")
    result = train("resnet18-w0.0625", ds, epochs=1, out=out, batch_size=40, progress=False, device="cpu",
                   early_checkpoints=False, lr=0.05)
    return result.final_checkpoint, ds


def raw_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@torch.no_grad()
def own_accuracy(model: nn.Module, split) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in split.batches(512))
    return correct / len(split)


@torch.no_grad()
def own_logits(model: nn.Module, split) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x) for x, _ in split.batches(512)])


# ----------------------------------------------------------------------------- weight movement
MLP_GROUPS = {"blocks.0": 1, "blocks.1": 2, "blocks.2": 3, HEAD: 4}
MLP_PREFIX = {"blocks.0": "blocks.0.", "blocks.1": "blocks.1.", "blocks.2": "blocks.2.", HEAD: "classifier."}


def test_weight_movement_equals_numpy_on_the_checkpoint_files(mlp_run):
    result, ds = mlp_run
    table = weight_movement(result.out)
    files = sorted(result.out.glob("checkpoints/step-*.pt"))
    states = [raw_state(p) for p in files]
    parameter_names = {n for n, _ in build("mlp-4x32", ds.num_classes, ds.input_shape).named_parameters()}

    def flat(state, point):
        names = sorted(n for n in parameter_names if n.startswith(MLP_PREFIX[point]))
        return np.concatenate([state[n].numpy().astype(np.float64).ravel() for n in names])

    assert sorted(table.step.unique()) == [int(p.stem.split("-")[1]) for p in files] == [0, 1, 2, 4, 6]
    assert dict(zip(table.point, table.layer)) == MLP_GROUPS
    for i, state in enumerate(states):
        for point in MLP_GROUPS:
            row = table[(table.step == table.step.unique()[i]) & (table.point == point)].iloc[0]
            w0, wt = flat(states[0], point), flat(state, point)
            assert row.parameters == wt.size
            assert row.absolute == pytest.approx(np.linalg.norm(wt - w0), rel=1e-12, abs=1e-15)
            assert row.relative == pytest.approx(np.linalg.norm(wt - w0) / np.linalg.norm(w0), rel=1e-12, abs=1e-15)
            if i == 0:
                assert row.relative == 0 and row.absolute == 0 and np.isnan(row.step_relative)
            else:
                prev = flat(states[i - 1], point)
                assert row.step_relative == pytest.approx(np.linalg.norm(wt - prev) / np.linalg.norm(prev), rel=1e-12)
    assert (table[table.step == 6].relative > 0).all()


def test_weight_movement_needs_the_initialisation(mlp_run, tmp_path):
    result, _ = mlp_run
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(result.final_checkpoint, tmp_path / "checkpoints" / result.final_checkpoint.name)
    with pytest.raises(CheckpointError, match="initialisation"):
        weight_movement(tmp_path)
    with pytest.raises(CheckpointError, match="step-0000000"):
        reset_layers(tmp_path, mlp_run[1], device="cpu")


def test_layers_own_their_modules_and_the_head_is_what_runs_after_them(mlp_run, resnet_run):
    result, _ = mlp_run
    mlp, _ = load_model(result.final_checkpoint)
    layers = layer_map(mlp)
    assert layers.points == ("blocks.0", "blocks.1", "blocks.2")
    assert set(layers.owned[HEAD]) == {"classifier.weight", "classifier.bias"} and not layers.owned[OTHER]
    assert "blocks.1.1.running_mean" in layers.names(["blocks.1"])
    assert "blocks.1.1.running_mean" not in layers.names(["blocks.1"], buffers=False)
    conv = layer_map(mlp, "conv")  # Linear layers only: BatchNorms between them belong to no layer ...
    assert "blocks.0.1.weight" in conv.owned[OTHER] and "blocks.1.1.running_var" in conv.owned[OTHER]
    # ... and the head is everything from the last point to the logits
    assert {n.rsplit(".", 1)[0] for n in conv.owned[HEAD]} == {"blocks.2.1", "classifier"}
    resnet, _ = load_model(resnet_run[0])
    layers = layer_map(resnet)
    assert layers.points[0] == "stem" and layers.index("layer1.0") == 2 and layers.index(HEAD) == 10
    assert set(layers.owned[HEAD]) == {"fc.weight", "fc.bias"} and not layers.owned[OTHER]
    with pytest.raises(ConfigError, match="nested"):
        layer_map(mlp, ["blocks.1", "blocks.1.0"])


# ----------------------------------------------------------------------------- resets
def test_resetting_everything_gives_the_initial_model_and_nothing_the_trained_one(mlp_run):
    result, ds = mlp_run
    initial, _ = load_model(result.checkpoints[0])
    trained, _ = load_model(result.final_checkpoint)
    init_acc, trained_acc = own_accuracy(initial, ds.test), own_accuracy(trained, ds.test)
    assert init_acc != trained_acc  # otherwise the test could not tell them apart
    forward = reset_layers(result.out, ds, device="cpu", include_head=True)
    assert list(forward.k) == [1, 2, 3] and forward.attrs["depth"] == 3
    assert forward.accuracy.iloc[0] == init_acc and (forward.init_accuracy == init_acc).all()
    assert (forward.untouched_accuracy == trained_acc).all()
    nothing = reset_layers(result.out, ds, from_layers=[0], direction="1..k", device="cpu")
    assert nothing.accuracy.iloc[0] == trained_acc and nothing.layers_reset.iloc[0] == "none"
    head_off = reset_layers(result.out, ds, from_layers=[4], include_head=False, device="cpu")
    assert head_off.accuracy.iloc[0] == trained_acc


def test_a_partial_reset_equals_a_hand_assembled_state(mlp_run):
    result, ds = mlp_run
    init, trained_state = raw_state(result.checkpoints[0]), raw_state(result.final_checkpoint)
    expected = {}
    for rows, prefixes in ((("k..L", 2, True), ("blocks.1.", "blocks.2.", "classifier.")),
                           (("k..L", 3, False), ("blocks.2.",)), (("1..k", 2, True), ("blocks.0.", "blocks.1."))):
        model, _ = load_model(result.final_checkpoint)
        model.load_state_dict({k: init[k] if k.startswith(prefixes) else v for k, v in trained_state.items()})
        expected[rows] = own_accuracy(model, ds.test)
    for (direction, k, head), accuracy in expected.items():
        table = reset_layers(result.final_checkpoint, ds, from_layers=[k], direction=direction, include_head=head,
                             device="cpu")
        assert table.accuracy.iloc[0] == accuracy, (direction, k, head)
    assert len(set(expected.values())) > 1


def test_the_reset_model_holds_step_0_values_in_reset_layers_and_trained_ones_elsewhere(mlp_run):
    result, _ = mlp_run
    init, trained_state = raw_state(result.checkpoints[0]), raw_state(result.final_checkpoint)
    model, _ = load_model(result.final_checkpoint)
    layers = layer_map(model)
    for buffers in (True, False):
        reset = reset_model(model, init, layers.names(["blocks.1", "blocks.2", HEAD], buffers=buffers)).state_dict()
        for name, value in reset.items():
            from_init = name.startswith(("blocks.1.", "blocks.2.", "classifier.")) and (
                buffers or not ("running_" in name or "num_batches" in name))
            assert torch.equal(value, (init if from_init else trained_state)[name]), (name, buffers)
    changed = [n for n in trained_state if trained_state[n].is_floating_point()
               and not torch.equal(trained_state[n], init[n])]
    assert any(n.startswith("blocks.1.") for n in changed) and any(n.startswith("blocks.0.") for n in changed)
    assert torch.equal(model.state_dict()["classifier.weight"], trained_state["classifier.weight"])  # untouched


def test_reset_settings_are_checked_and_recorded(mlp_run):
    result, ds = mlp_run
    with pytest.raises(ConfigError, match="out of range"):
        reset_layers(result.out, ds, from_layers=[5], device="cpu")
    with pytest.raises(ConfigError, match="direction"):
        reset_layers(result.out, ds, direction="L..k", device="cpu")
    with pytest.raises(ConfigError, match="max_samples"):
        reset_layers(result.out, ds, max_samples=0, device="cpu")
    table = reset_layers(result.out, ds, from_layers=[2], max_samples=50, seed=3, device="cpu")
    assert table.attrs["samples"] == 50 and table.attrs["seed"] == 3
    assert float(table.accuracy.iloc[0] * 50).is_integer()


# ----------------------------------------------------------------------------- block deletion
def zeroed_branch(model: nn.Module, blocks: list[str]) -> list:
    """Forward hooks that replace each block's last BatchNorm output (its residual branch) by zeros."""
    return [model.get_submodule(f"{b}.bn2").register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
            for b in blocks]


def test_deleting_blocks_equals_zeroing_their_residual_branch(resnet_run):
    path, ds = resnet_run
    table = delete_blocks(path, ds, ranges=[(2, 5), "layer3.0:layer4.1"], device="cpu")
    assert list(table.deleted) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1",
                                   "layer1.0..layer2.1", "layer3.0..layer4.1"]  # projections left alone by default
    assert list(table.kept) == [""] * 5 + ["layer2.0", "layer3.0 layer4.0"] and list(table.blocks)[-2:] == [3, 2]
    assert list(table.first_layer) == [2, 3, 5, 7, 9, 2, 6] and list(table.last_layer) == [2, 3, 5, 7, 9, 5, 9]
    reference, _ = load_model(path)
    untouched = own_logits(reference, ds.test)
    assert (table.untouched_accuracy == own_accuracy(reference, ds.test)).all()
    for deleted, blocks in [("layer1.1", ["layer1.1"]), ("layer3.1", ["layer3.1"]),
                            ("layer1.0..layer2.1", ["layer1.0", "layer1.1", "layer2.1"]),
                            ("layer3.0..layer4.1", ["layer3.1", "layer4.1"])]:
        handles = zeroed_branch(reference, blocks)
        expected_logits, expected = own_logits(reference, ds.test), own_accuracy(reference, ds.test)
        for handle in handles:
            handle.remove()
        assert table.set_index("deleted").accuracy[deleted] == expected
        logits = own_logits(without_blocks(reference, blocks), ds.test)
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
        assert not torch.allclose(logits, untouched, atol=1e-3)  # the deletion did change the output


def test_projection_blocks_keep_their_projection_when_asked(resnet_run):
    path, ds = resnet_run
    with pytest.raises(ConfigError, match="projection"):
        delete_blocks(path, ds, blocks=["layer2.0"], device="cpu")
    with pytest.raises(ConfigError, match="nothing to delete"):
        delete_blocks(path, ds, blocks=[], device="cpu")
    with pytest.raises(ConfigError, match="backwards"):
        delete_blocks(path, ds, ranges=["5-2"], device="cpu")
    table = delete_blocks(path, ds, blocks=["layer2.0", 3], projection="keep", device="cpu")
    assert list(table.deleted) == ["layer2.0", "layer1.1"] and list(table.projections) == [1, 0]
    reference, _ = load_model(path)
    handles = zeroed_branch(reference, ["layer2.0"])
    assert table.accuracy.iloc[0] == own_accuracy(reference, ds.test)
    for handle in handles:
        handle.remove()


def test_parameter_free_shortcuts_are_kept_and_their_blocks_deleted(resnet_run, tmp_path):
    _, ds = resnet_run
    model = build("cifar-resnet-8", ds.num_classes, ds.input_shape)  # shortcuts: subsample + zero-pad
    path = save_checkpoint(tmp_path / "cifar.pt", model, {"model_spec": "cifar-resnet-8", "data_spec": ds.spec,
                                                           "num_classes": ds.num_classes,
                                                           "input_shape": list(ds.input_shape)})
    table = delete_blocks(path, ds, device="cpu")
    assert list(table.deleted) == ["stage1.0", "stage2.0", "stage3.0"] and (table.projections == 0).all()
    reference, _ = load_model(path)
    zeroed_branch(reference, ["stage2.0"])
    assert table.accuracy.iloc[1] == own_accuracy(reference, ds.test)
    torch.testing.assert_close(own_logits(without_blocks(model, ["stage2.0"]), ds.test),
                               own_logits(reference, ds.test), rtol=0, atol=1e-5)


def test_block_deletion_refuses_a_model_without_residual_blocks(mlp_run):
    result, ds = mlp_run
    with pytest.raises(ConfigError, match="residual"):
        delete_blocks(result.final_checkpoint, ds, device="cpu")


# ----------------------------------------------------------------------------- figure and files
def test_tables_are_saved_with_their_settings_and_figure(mlp_run, tmp_path):
    result, ds = mlp_run
    movement = weight_movement(result.out)
    resets = pd.concat([reset_layers(result.out, ds, device="cpu"),
                        reset_layers(result.out, ds, direction="1..k", device="cpu")])
    resets.attrs = reset_layers(result.out, ds, from_layers=[1], device="cpu").attrs
    fig = interventions_figure(movement=movement, resets=resets)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2
    paths = save_intervention(movement, tmp_path / "m")
    assert [p.name for p in paths] == ["movement.csv", "interventions.png", "interventions.svg", "report.html",
                                       "config.json"]
    assert (tmp_path / "m" / "movement.csv").read_text() == movement.to_csv(index=False)  # the same text as before
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == "interventions" and config["intervention"] == "movement"
    assert {k: v for k, v in config.items() if k not in ("kind", "intervention")} == {
        k: v for k, v in movement.attrs.items() if k != "kind"}
    again = pd.read_csv(tmp_path / "m" / "movement.csv")
    np.testing.assert_array_equal(again.relative.to_numpy(), movement.relative.to_numpy())
    with pytest.raises(ConfigError):
        interventions_figure()
    with pytest.raises(ConfigError, match="weight_movement"):
        InterventionResult.of(pd.DataFrame({"x": [1]}))


def test_each_intervention_keeps_the_contract(mlp_run, resnet_run, tmp_path):
    result, ds = mlp_run
    movement = InterventionResult.of(weight_movement(result.out))
    loaded = check_contract(movement, tmp_path / "movement")
    pd.testing.assert_frame_equal(loaded.table, movement.table)
    assert loaded.table.attrs == movement.table.attrs
    resets = InterventionResult.of(reset_layers(result.out, ds, from_layers=[0, 2], direction="1..k", device="cpu"))
    assert resets.table.point.iloc[0] == ""  # k = 0: no layer, an empty field in the CSV
    loaded = check_contract(resets, tmp_path / "resets")
    pd.testing.assert_frame_equal(loaded.table, resets.table, check_dtype=False)
    path, resnet_ds = resnet_run
    deletions = InterventionResult.of(delete_blocks(path, resnet_ds, blocks=[2], ranges=["2-5"], device="cpu"))
    loaded = check_contract(deletions, tmp_path / "deletions")
    pd.testing.assert_frame_equal(loaded.table, deletions.table, check_dtype=False)
    assert [p.name for p in deletions.save(tmp_path / "d")][0] == "deletion.csv"


def test_the_figures_drawn_from_saved_tables_show_the_computed_numbers(mlp_run, tmp_path):
    result, ds = mlp_run
    movement = weight_movement(result.out)
    save_intervention(movement, tmp_path / "m")
    loaded = InterventionResult.load(tmp_path / "m")
    figures = draw_experiment("interventions", loaded.tables(), loaded.saved_config())
    assert list(figures) == ["interventions"]
    lines = figures["interventions"].axes[0].get_lines()
    layers = movement[movement.point != OTHER].sort_values(["layer", "step"])
    assert [line.get_label() for line in lines] == ["1 blocks.0", "2 blocks.1", "3 blocks.2", f"4 {HEAD}"]
    for line, (_, rows) in zip(lines, layers.groupby("layer", sort=True)):
        np.testing.assert_array_equal(line.get_xdata(), rows.step.to_numpy())
        np.testing.assert_array_equal(line.get_ydata(), rows.relative.to_numpy())
    resets = reset_layers(result.out, ds, direction="both", device="cpu")
    save_intervention(resets, tmp_path / "r")
    loaded = InterventionResult.load(tmp_path / "r")
    ax = draw_experiment("interventions", loaded.tables(), loaded.saved_config())["interventions"].axes[0]
    for line, (_, rows) in zip(ax.get_lines(), resets.groupby("reset", sort=False)):
        np.testing.assert_array_equal(line.get_ydata(), rows.accuracy.to_numpy())
    chance = ax.get_lines()[-1]
    assert chance.get_label() == "chance" and chance.get_ydata()[0] == 1 / ds.num_classes


def test_one_intervention_per_directory_and_missing_runs_are_named(mlp_run, tmp_path):
    result, ds = mlp_run
    out = tmp_path / "i"
    save_intervention(weight_movement(result.out), out)
    resets = reset_layers(result.out, ds, from_layers=[1], device="cpu")
    with pytest.raises(RunDirectoryError, match="already holds a finished interventions experiment"):
        save_intervention(resets, out)
    save_intervention(resets, out, overwrite=True)  # replaces the movement: none of its files is left
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "interventions.png", "interventions.svg",
                                                     "report.html", "reset.csv"]
    assert InterventionResult.load(out).intervention == "resets"
    with pytest.raises(RunDirectoryError, match="does not exist"):
        weight_movement(tmp_path / "nowhere")
    with pytest.raises(RunDirectoryError, match="holds no checkpoints"):
        reset_layers(out, ds, device="cpu")
