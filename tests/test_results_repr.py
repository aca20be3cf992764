"""Results in a notebook: a short repr and an HTML view, from a hand-built table."""

from __future__ import annotations

import pandas as pd

from tunnelscope.results import Results


def _results(valid: bool = True) -> Results:
    points = [f"blocks.{i}" for i in range(10)]
    rows = [{"model": "mlp-11x8", "dataset": "id", "split": "test", "point": p, "layer": i + 1, "depth": (i + 1) / 10,
             "metric": metric, "value": value, "other_point": None, "other_layer": float("nan"), "valid": True}
            for i, p in enumerate(points) for metric, value in (("rank", 10.0 - i), ("probe_acc", 0.5 + i / 100))]
    summary = {"model": "mlp-11x8", "data": "digits<b>", "points": 10, "tunnel_start@0.95": 4,
               "tunnel_start@0.95_ci": [3.0, 5.0], "mean_retained": 71.234, "mean_retained_ci": [65.0, 77.5],
               "verdict": "the tunnel starts at layer 4", "verdict_valid": valid}
    return Results(pd.DataFrame(rows), summary, {"points": points})


def test_repr_is_short_and_carries_the_headline():
    text = repr(_results())
    lines = text.splitlines()
    assert len(lines) < 12 and all(len(line) < 200 for line in lines)
    assert "model: mlp-11x8" in text and "tunnel start: 4 [3, 5] of 10" in text
    assert "mean % OOD retained: 71.2 [65.0, 77.5]" in text
    assert "blocks.0, blocks.1, blocks.2, …, blocks.7, blocks.8, blocks.9" in text  # 10 points, shortened
    assert "metrics: probe_acc, rank" in text and "[not valid]" not in text
    assert "[not valid] the tunnel starts" in repr(_results(valid=False))


def test_html_repr_escapes_and_has_one_row_per_point():
    page = _results()._repr_html_()
    assert "digits&lt;b&gt;" in page and "digits<b>" not in page
    body = page.split("<tbody>")[-1]
    assert body.count("<tr>") == 10  # the per-point table: one row per probe point


def test_layer_table_has_plain_column_names_and_the_id_data_by_name():
    rows = [{"model": "m", "dataset": dataset, "split": "test", "point": f"p{i}", "layer": i, "depth": i / 2,
             "metric": "probe_acc", "value": 0.5 + i / 10, "ci_lo": 0.4, "ci_hi": 0.9, "other_point": None,
             "other_layer": float("nan"), "valid": True}
            for dataset in ("digits", "fashion-mnist[classes=5-9]") for i in (1, 2)]
    results = Results(pd.DataFrame(rows), {}, {"id_dataset": "digits"})
    wide = results.layer_table(intervals=True)
    assert list(wide.columns) == ["layer", "point", "probe_acc", "probe_acc@fashion-mnist[classes=5-9]",
                                  "probe_acc_lo", "probe_acc@fashion-mnist[classes=5-9]_lo",
                                  "probe_acc_hi", "probe_acc@fashion-mnist[classes=5-9]_hi"]
    assert results.datasets == ["digits", "fashion-mnist[classes=5-9]"]
    assert results.curve("probe_acc", "id").tolist() == results.curve("probe_acc", "digits").tolist() == [0.6, 0.7]
