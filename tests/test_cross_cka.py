"""Cross-model CKA as an experiment (tunnelscope.experiments.cross_cka): the engine's numbers,
saved as the CSV the command always wrote, under the experiment contract."""

from __future__ import annotations

import numpy as np
import pytest

from experiment_contract import check_contract
from tunnelscope.engine.cross_model import cross_model_cka
from tunnelscope.experiments.cross_cka import CrossCKAResult, cross_cka

DATA = "digits[classes=0-4,per_class=30,test_per_class=20]"


@pytest.fixture(scope="module")
def result() -> CrossCKAResult:
    """A 3-point and a 2-point MLP (untrained, seeded) read on the same 100 test examples."""
    return cross_cka("mlp-4x16", "mlp-3x16", DATA, batch_size=25, device="cpu", progress=False)


def test_the_result_holds_the_engines_numbers_and_writes_its_csv(result, tmp_path) -> None:
    direct = cross_model_cka("mlp-4x16", "mlp-3x16", DATA, batch_size=25, device="cpu", progress=False)
    np.testing.assert_array_equal(result.matrix.to_numpy(), direct.to_numpy())
    assert result.matrix.index.name == "mlp-4x16" and result.matrix.columns.name == "mlp-3x16"
    assert result.config["samples"] == 100 and result.config["model_b"] == "mlp-3x16"
    result.save(tmp_path / "x")
    assert (tmp_path / "x" / "cross_cka.csv").read_text() == direct.to_csv()  # the file the command always wrote
    best = result.best_matches()
    assert list(best["point_a"]) == list(direct.index)
    np.testing.assert_allclose(best["cka"], direct.to_numpy().max(axis=1))


def test_cross_cka_keeps_the_experiment_contract(result, tmp_path) -> None:
    loaded = check_contract(result, tmp_path)
    assert isinstance(loaded, CrossCKAResult)
    np.testing.assert_array_equal(loaded.matrix.to_numpy(), result.matrix.to_numpy())
    assert loaded.matrix.index.name == result.matrix.index.name
    assert loaded.matrix.columns.name == result.matrix.columns.name


def test_the_figure_drawn_from_saved_tables_shows_the_computed_numbers(result, tmp_path) -> None:
    result.save(tmp_path / "x")
    fig = CrossCKAResult.load(tmp_path / "x").figure()
    mesh = fig.axes[0].collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(result.matrix.shape), result.matrix.to_numpy())
    assert fig.axes[0].get_xlabel().startswith("mlp-3x16") and fig.axes[0].get_ylabel().startswith("mlp-4x16")


def test_several_cka_passes_sum_hsic_over_an_ordered_then_shuffled_passes_like_a_float64_reference() -> None:
    """Pass 1 in order, pass p shuffled by seed + 1000 + p - 1 (analyze's protocol): the matrix
    equals float64 minibatch CKA over all those batches, from features read by the test's own hooks."""
    import torch

    from references import hooked_outputs, minibatch_cka
    from tunnelscope import data, models

    ds = data.load(DATA)
    torch.manual_seed(3)
    net_a, net_b = models.build("mlp-4x16", 5, (1, 8, 8)).eval(), models.build("mlp-3x16", 5, (1, 8, 8)).eval()
    matrix = cross_model_cka(net_a, net_b, ds, batch_size=25, device="cpu", progress=False, cka_passes=3, seed=2)
    assert matrix.attrs["cka_passes"] == 3
    x_all = torch.cat([x for x, _ in ds.test.batches(100)])
    orders = [torch.arange(100)] + [torch.randperm(100, generator=torch.Generator().manual_seed(2 + 1000 + p))
                                    for p in (1, 2)]
    batches = [x_all[order[lo:lo + 25]] for order in orders for lo in range(0, 100, 25)]
    names_a, names_b = list(matrix.index), list(matrix.columns)
    with torch.no_grad():
        feats_a = [hooked_outputs(net_a, names_a, x) for x in batches]
        feats_b = [hooked_outputs(net_b, names_b, x) for x in batches]
    for a in names_a:
        for b in names_b:
            reference = minibatch_cka([f[a].reshape(25, -1).numpy() for f in feats_a],
                                      [f[b].reshape(25, -1).numpy() for f in feats_b])
            assert matrix.loc[a, b] == pytest.approx(reference, abs=1e-5)
    one_pass = cross_model_cka(net_a, net_b, ds, batch_size=25, device="cpu", progress=False, seed=2)
    assert not np.allclose(one_pass.to_numpy(), matrix.to_numpy(), atol=1e-7)  # the shuffled passes count
