"""A fuzz test of reading a run directory back: seeded mutations of an analysis' summary.json,
config.json and results.parquet (values of another type, missing keys, truncation, duplicated,
removed, reordered or blanked rows, dropped or renamed columns). Every outcome of
``tunnelscope report`` and ``tunnelscope compare`` is a correct result or one clear line.

The run directory is an analysis like the demo's (default metrics, an OOD set, probes whose C
is chosen per point, flags), from the suite's shared trained MLP. Figures are built in every
case but drawn (rendered to PNG/SVG) in two, and ``compare`` reads one case in four: drawing
costs about 4 s a case and a comparison 0.25 s, and the test keeps to about 40 s."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import run_cli
from conftest import TRAINED_DATA
from tunnelscope import Results

CASES = 200
BLOCKS = 10  # test functions, each running CASES / BLOCKS seeds
DRAWN = {0, 100}  # the seeds whose figures are drawn
COMPARED_EVERY = 4  # 'compare' reads one mutated directory in four ('report' reads every one)
OTHER_VALUES = [None, "x", 1, 1.5, True, [], {}, [1, "a"], 1e308, -1, {"a": 1}]
REFUSED = "refused"  # the mutation damages what a report needs: it must be refused in one line
SAME = "same"  # the mutation changes nothing a report reads: the result must equal the original
EITHER = "either"  # a correct result from what is left, or a refusal


@pytest.fixture(scope="module")
def analysis(trained_mlp, tmp_path_factory) -> Path:
    result, _ = trained_mlp
    out = tmp_path_factory.mktemp("fuzz") / "analysis"
    code = _cli(["analyze", "--checkpoint", result.final_checkpoint, "--data", TRAINED_DATA, "--ood",
                 "fashion-mnist[classes=5-9,per_class=300,test_per_class=100]", "--out", out, "-q"])
    assert code == 0
    return out


def _cli(args: list) -> int:
    from tunnelscope.cli import main

    return main([str(a) for a in args])


def _key_paths(value: object, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path into a JSON value (lists: their first three items)."""
    items = value.items() if isinstance(value, dict) else enumerate(value[:3]) if isinstance(value, list) else []
    for key, inner in items:
        yield (*prefix, key)
        yield from _key_paths(inner, (*prefix, key))


def _mutate_json(path: Path, rng: random.Random) -> tuple[str, str]:
    text = path.read_text()
    value = json.loads(text)
    kind = rng.choice(["delete", "retype", "retype", "truncate", "top-level"])
    if kind == "truncate":
        path.write_text(text[: rng.randrange(len(text))])
        return f"truncated {path.name}", REFUSED
    if kind == "top-level":
        path.write_text(json.dumps(rng.choice([[], "x", 1, None, [value]])))
        return f"{path.name} not an object", REFUSED
    key = rng.choice(list(_key_paths(value)))
    parent = value
    for part in key[:-1]:
        parent = parent[part]
    if kind == "delete":
        del parent[key[-1]]
    else:
        old = parent[key[-1]]
        parent[key[-1]] = rng.choice([v for v in OTHER_VALUES if type(v) is not type(old)])
    path.write_text(json.dumps(value))
    return f"{kind} {path.name} {key}", EITHER


def _mutate_table(path: Path, rng: random.Random) -> tuple[str, str]:
    table = pd.read_parquet(path)
    kind = rng.choice(["truncate", "duplicate", "drop", "retype", "blank", "remove", "shuffle", "rename"])
    column = rng.choice(list(table.columns))
    pick = rng.randrange(2**31)
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data))])
        return "truncated table", REFUSED
    outcome = EITHER
    if kind == "duplicate":
        table, outcome = pd.concat([table, table.sample(rng.randint(1, 5), random_state=pick)]), REFUSED
    elif kind == "drop":
        table = table.drop(columns=[column])
    elif kind == "retype":
        table[column] = rng.choice([table[column].astype(str), pd.Series([None] * len(table), dtype=object),
                                    pd.Series(np.arange(len(table)) * 0.5)])
    elif kind == "blank":
        rows = table.sample(rng.randint(1, 20), random_state=pick).index
        table[column] = table[column].astype(object)
        table.loc[rows, column] = None
    elif kind == "remove":
        table = table.drop(index=table.sample(rng.randint(1, len(table) - 1), random_state=pick).index)
    elif kind == "shuffle":
        table, outcome = table.sample(frac=1, random_state=pick), SAME
    elif kind == "rename":
        table = table.rename(columns={column: column + "_x"})
    table.to_parquet(path)
    return f"{kind} table column {column}", outcome


def _mutate(run: Path, seed: int) -> tuple[str, str]:
    rng = random.Random(seed)
    name = rng.choice(["summary.json", "config.json", "results.parquet", "results.parquet"])
    mutate = _mutate_table if name.endswith(".parquet") else _mutate_json
    return mutate(run / name, rng)


def _check_outcome(code: int, out: str, err: str, what: str, outcome: str) -> None:
    assert "Traceback" not in out + err and code in (0, 1), (what, code, err)
    if code == 1:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tunnelscope: error: "), (what, err)
        assert outcome != SAME, (what, err)
    else:
        assert outcome != REFUSED, f"{what}: accepted"


def _undrawn(monkeypatch) -> None:
    """Figures are built but not rendered: savefig writes nothing (the report's files are empty)."""
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, target, **kw: None)


@pytest.mark.parametrize("block", range(BLOCKS))
def test_a_mutated_run_directory_gives_a_correct_result_or_one_clear_line(block, analysis, tmp_path, capsys,
                                                                          monkeypatch):
    original = Results.load(analysis).layer_table()
    for seed in range(block, CASES, BLOCKS):
        if seed not in DRAWN:
            _undrawn(monkeypatch)
        run = tmp_path / f"case-{seed}"
        shutil.copytree(analysis, run)
        what, outcome = _mutate(run, seed)
        commands = [["report", run, "-q"]]
        if seed % COMPARED_EVERY == 0:
            commands.append(["compare", run, analysis, "--out", tmp_path / f"compare-{seed}", "-q"])
        for args in commands:
            code, out, err = run_cli(args, capsys)
            _check_outcome(code, out, err, f"seed {seed}: {what} ({args[0]})", outcome)
        if outcome == SAME:
            pd.testing.assert_frame_equal(Results.load(run).layer_table(), original)
        monkeypatch.undo()
