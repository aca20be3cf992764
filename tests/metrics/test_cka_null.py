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
    for block in r.config["cka_blocks"]:
        assert block["points"] >= 2 and block["min_cka"] >= 0.5


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
