"""The CKA permutation null: calibrated when layers are independent, decisive when they are
not, and the blocks it finds."""

from __future__ import annotations

import numpy as np
import torch

from tunnelscope.metrics.cka import CKANull, MinibatchCKA


def _stream(acc, layers: dict[str, torch.Tensor], batch: int = 128) -> None:
    n = len(next(iter(layers.values())))
    for lo in range(0, n, batch):
        acc.update({k: v[lo:lo + batch] for k, v in layers.items()})


def test_independent_layers_are_above_the_null_at_about_the_level():
    """24 layers of independent Gaussian features (276 pairs with the null true): the share of
    pairs with p < 0.05 is near 0.05 (its binomial 99% range over 276 pairs is about 0.02-0.09)."""
    g = torch.Generator().manual_seed(0)
    layers = {f"l{i}": torch.randn(1024, 16, generator=g) for i in range(24)}
    null = CKANull(list(layers), permutations=30)
    _stream(null, layers)
    p = null.compute().numpy()
    pairs = p[np.triu_indices(24, 1)]
    assert 0.015 <= float((pairs < 0.05).mean()) <= 0.09
    assert null.blocks() == []


def test_dependent_layers_are_far_above_the_null_and_form_a_block():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1024, 16, generator=g)
    layers = {"a": torch.randn(1024, 16, generator=g), "b": base, "c": base @ torch.randn(16, 16, generator=g),
              "d": base + 0.3 * torch.randn(1024, 16, generator=g), "e": torch.randn(1024, 16, generator=g)}
    null = CKANull(list(layers), permutations=20)
    cka = MinibatchCKA(list(layers), gram_dtype=torch.float64)
    _stream(null, layers)
    _stream(cka, layers)
    p = null.compute()
    assert p[1, 2] < 1e-6 and p[1, 3] < 1e-6 and p[0, 4] > 0.01
    torch.testing.assert_close(null._cka(null.hsic), cka.compute(), rtol=1e-4, atol=1e-5)  # the observed CKA
    (block,) = null.blocks()
    assert (block["first"], block["last"], block["points"]) == ("b", "d", 3) and block["min_cka"] >= 0.5


def test_the_analysis_records_the_blocks_and_the_p_values(trained_mlp):
    from tunnelscope.engine import analyze_layers

    result, ds = trained_mlp
    r = analyze_layers(result.final_checkpoint, ds, metrics="cka,cka_null", max_samples=512, progress=False,
                       device="cpu")
    p = r.matrix("cka_null").to_numpy()
    assert p.shape == r.matrix("cka").to_numpy().shape and np.isnan(np.diag(p)).all()
    assert ((p[np.triu_indices(len(p), 1)] >= 0) & (p[np.triu_indices(len(p), 1)] <= 1)).all()
    assert r.config["cka_null"]["permutations"] == 20
    upper = p[np.triu_indices(len(p), 1)]
    assert r.config["cka_null"]["share_above"] == float((upper < 0.05).mean())
    for block in r.config["cka_blocks"]:
        assert block["points"] >= 2 and block["min_cka"] >= 0.5
    from tunnelscope.report.html import render

    page = render(r, {})
    assert "<h2>CKA blocks</h2>" in page and r.config["cka_blocks"]  # the trained MLP has at least one
    assert page.count("<td>") >= 4 * len(r.config["cka_blocks"])
    for block in r.config["cka_blocks"]:
        assert f"<td>{block['first']}</td><td>{block['last']}</td><td>{block['points']}</td>" in page


def test_the_cka_heatmap_marks_the_cells_not_above_the_null(trained_mlp):
    from tunnelscope.engine import analyze_layers
    from tunnelscope.report.figures import cka_figure

    result, ds = trained_mlp
    r = analyze_layers(result.final_checkpoint, ds, metrics="cka,cka_null", max_samples=512, progress=False,
                       device="cpu")
    rows = r.table.metric == "cka_null"
    pairs = r.table[rows & r.table.value.notna()].index[:3]  # three off-diagonal cells made "not above"
    r.table.loc[pairs, "value"] = 0.5
    fig = cka_figure(r)
    (ax,) = fig.axes[:1]
    marks = [t for t in ax.texts if t.get_text() == "×"]
    expected = int(((r.table.metric == "cka_null") & (r.table.value >= 0.05)).sum())
    assert len(marks) == expected >= 3 and "not above the permutation null" in ax.get_title()


def test_the_random_network_reference_is_calibrated_for_random_networks():
    """With the null true (the model is itself a random network of the architecture, exchangeable
    with the references) a pair's p-value is uniform on {1/20, …, 1} at K = 19: over 40 random
    networks the share at or below 0.05 is near 0.05 (binomial(40, 0.05): at most 6 of 40 with
    probability > 0.999), for the pair of the first two points and for the pair farthest apart."""
    from tunnelscope import data
    from tunnelscope.engine import analyze_layers

    ds = data.load("digits[per_class=30]")
    firsts, farthest = [], []
    for seed in range(1000, 1800, 20):  # 40 networks; their references (seeds + 1 … + 19) do not overlap
        r = analyze_layers("mlp-4x16", ds, metrics="cka[random=19]", max_samples=256, batch_size=64,
                           progress=False, device="cpu", seed=seed)
        p = r.matrix("cka_random").to_numpy()
        firsts.append(p[0, 1])
        farthest.append(p[0, -1])
    for values in (np.array(firsts), np.array(farthest)):
        assert set(np.round(values * 20).astype(int)) <= set(range(1, 21))
        assert int((values <= 0.05).sum()) <= 6
        assert 0.35 <= float(values.mean()) <= 0.70  # uniform on {1/20, …, 1}: mean 0.525


def test_the_random_network_p_values_are_the_ranks_among_the_copies(trained_mlp):
    """The p-value of each pair is (1 + copies at or above the model's CKA) / (K + 1), counted here
    from each copy's own CKA matrix."""
    from tunnelscope.engine import analyze_layers
    from tunnelscope.models import load_model, untrained_copy

    result, ds = trained_mlp
    r = analyze_layers(result.final_checkpoint, ds, metrics="cka[random=3]", max_samples=256, progress=False,
                       device="cpu")
    model, _ = load_model(result.final_checkpoint)
    observed = r.matrix("cka").to_numpy()
    count = np.zeros_like(observed)
    for seed in r.config["cka_random"]["seeds"]:
        copy = untrained_copy(model, seed)
        ref = analyze_layers(copy, ds, metrics="cka", max_samples=256, progress=False, device="cpu")
        count += ref.matrix("cka").to_numpy() >= observed
    expected = (1 + count) / 4
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_allclose(r.matrix("cka_random").to_numpy(), expected)
    assert r.config["cka_random"]["seeds"] == [1, 2, 3]
