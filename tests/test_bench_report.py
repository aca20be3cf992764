"""The benchmark report (bench/run.py) shows a case's table whenever that case ran."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH_RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"


def _bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_two_process_table_is_shown_without_the_demo_breakdown():
    run = _bench_run()
    ranks = {"case": "analyze-ranks", "device": "cpu", "data": "d", "max_samples": 100, "one_process_s": 10.0,
             "two_processes_s": 6.25, "speedup": 1.6, "peak_rss_mib_one": 1000.0, "peak_rss_mib_two": [900.0, 910.0],
             "same_probe_mean": True, "pair_s": 10.4, "ceiling": 1.92}
    text = "\n".join(run.analyze_section([ranks]))
    assert "shared by two processes" in text
    assert "**1.60x**" in text and "1.92x" in text and "900 / 910" in text


def test_the_wide_statistics_table_shows_its_speed_up():
    run = _bench_run()
    wide = {"case": "ranks-wide", "device": "cpu", "data": "d", "max_samples": 5000, "one_process_s": 22.0,
            "two_processes_s": 13.0, "speedup": 22 / 13, "peak_rss_mib_one": 1500.0,
            "peak_rss_mib_two": [1400.0, 1390.0]}
    text = "\n".join(run.analyze_section([wide]) + run.statistics_section([wide]))  # not taken for section 1's
    assert "Wide points' statistics shared by two processes" in text and "**1.69x**" in text and "1400 / 1390" in text
