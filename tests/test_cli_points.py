"""``--points`` takes a comma list and may be repeated, the same way in every command."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

ANALYZE = ["analyze", "--model", "mlp-4x16", "--data", "digits[per_class=20,test_per_class=10]", "--metrics", "rank",
           "--no-input", "--max-samples", 100]


@pytest.mark.parametrize("points", [["--points", "blocks.0,blocks.2"],
                                    ["--points", "blocks.0", "--points", "blocks.2"]])
def test_comma_lists_and_repeats_give_every_glob(points, tmp_path, capsys):
    code, _, err = run_cli([*ANALYZE, *points, "--out", tmp_path / "a", "--quiet"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["points_set"] == ["blocks.0", "blocks.2"] and config["points"] == ["blocks.0", "blocks.2"]


def test_a_set_name_mixed_with_globs_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = run_cli([*ANALYZE, "--points", "blocks,blocks.0", "--out", tmp_path / "b"], capsys)
    assert code == 2 and "whole sets" in err and "Traceback" not in err

