"""Data-parallel analysis: ``tunnelscope analyze`` under ``torchrun`` (2 processes, gloo, CPU)
gives the one-process rows; and the sharding, work split and merge it rests on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tunnelscope.engine.distributed import World
from tunnelscope.errors import ConfigError
from tunnelscope.probes import ProbeResult, merge_probe_results

KEYS = ["split", "point", "metric", "other_point", "dataset", "reference"]
INTEGER_METRICS = {"rank", "probe_converged"}
ACCURACIES = {"probe_acc", "ncc_acc", "ridge_acc"}


OOD = ("--ood", "fashion-mnist[classes=5-9,per_class=100,test_per_class=60]")


def _analyze(launcher: list[str], checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``tunnelscope analyze`` of the demo-like data launched by ``launcher``, with ``extra`` arguments
    (the OOD set unless they name metrics without probes)."""
    args = ["analyze", "--checkpoint", str(checkpoint), "--data", "fashion-mnist[classes=0-4,per_class=300,"
            "test_per_class=100]", "--batch-size", "128", "--cka-passes", "2", "--resamples", "200", "--device",
            "cpu", "--quiet", "--out", str(out), *(extra or OOD)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)


def test_two_processes_give_the_one_process_rows(trained_mlp, tmp_path):
    result, _ = trained_mlp
    one = _analyze([sys.executable, "-m", "tunnelscope.cli"], result.final_checkpoint, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "tunnelscope.cli"]
    two = _analyze(torchrun, result.final_checkpoint, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "one" / "results.parquet")
    b = pd.read_parquet(tmp_path / "two" / "results.parquet")
    assert len(a) == len(b) > 100
    both = a.merge(b, on=KEYS, suffixes=("_1", "_2"), how="outer", indicator=True)
    assert (both["_merge"] == "both").all()
    assert set(both.metric) >= {"rank", "erank", "nc1", "cka", "pc1_sim", "probe_acc", "ncc_acc", "ridge_acc"}
    exact = both[both.metric.isin(INTEGER_METRICS | ACCURACIES)]
    np.testing.assert_array_equal(exact.value_1.to_numpy(), exact.value_2.to_numpy())  # NaN == NaN here
    rest = both[~both.metric.isin(INTEGER_METRICS | ACCURACIES)]
    # float32 per-batch products around each process's own class shifts: rounding of that size
    np.testing.assert_allclose(rest.value_2.to_numpy(), rest.value_1.to_numpy(), rtol=1e-5, atol=1e-9)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1 == s2  # verdict, tunnel start, % retained and every bootstrap interval
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["statistics"]["processes"] == 2


def test_statistics_alone_on_two_processes_give_the_one_process_rows(trained_mlp, tmp_path):
    """Without probes the statistics keep their own training cache: each process scores the
    read-outs on its own rows (nothing gathered), and owners share each point's dense algebra."""
    result, _ = trained_mlp
    metrics = ("--metrics", "rank,erank,pc1,pc1_sim,ridge,ncc,nc1")
    one = _analyze([sys.executable, "-m", "tunnelscope.cli"], result.final_checkpoint, tmp_path / "one", *metrics)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "tunnelscope.cli"]
    two = _analyze(torchrun, result.final_checkpoint, tmp_path / "two", *metrics)
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "one" / "results.parquet")
    b = pd.read_parquet(tmp_path / "two" / "results.parquet")
    both = a.merge(b, on=KEYS, suffixes=("_1", "_2"), how="outer", indicator=True)
    assert (both["_merge"] == "both").all() and "probe_acc" not in set(both.metric)
    assert {"ridge_acc", "ncc_acc", "pc1_sim", "erank"} <= set(both.metric) and {"train", "test"} <= set(both.split)
    exact = both[both.metric.isin(INTEGER_METRICS | ACCURACIES)]
    np.testing.assert_array_equal(exact.value_1.to_numpy(), exact.value_2.to_numpy())
    rest = both[~both.metric.isin(INTEGER_METRICS | ACCURACIES)]
    np.testing.assert_allclose(rest.value_2.to_numpy(), rest.value_1.to_numpy(), rtol=1e-5, atol=1e-9)


def test_batches_are_dealt_whole_and_in_turn():
    n, batch = 10, 3  # batches [0,1,2] [3,4,5] [6,7,8] [9]
    ranks = [World(r, 2).batch_positions(n, batch).tolist() for r in range(2)]
    assert ranks == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    shuffled = [World(r, 2).batch_positions(n, batch, generator=g[r]) for r in range(2)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    assert shuffled[0].tolist() == order[[0, 1, 2, 6, 7, 8]].tolist()
    assert sorted(torch.cat(shuffled).tolist()) == list(range(n))


def test_a_split_with_fewer_batches_than_processes_is_refused():
    World(0, 2).check_batches(257, 256, "the test split")  # two batches: fine
    with pytest.raises(ConfigError, match="each process needs a batch"):
        World(0, 3).check_batches(257, 256, "the test split")


def test_work_is_split_by_cost_and_covers_every_job_once():
    costs = [784.0, 64.0, 64.0, 64.0, 32.0, 512.0]
    shares = [World(r, 2).assign(costs) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(len(costs)))
    loads = [sum(costs[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs)
    assert World().assign(costs) == list(range(len(costs)))


def _result(names: list[str], acc: float) -> ProbeResult:
    r = ProbeResult({n: acc for n in names}, {n: acc for n in names}, {n: 0 for n in names}, names[:1],
                    {n: (torch.zeros(2, 2), torch.zeros(2)) for n in names}, {"protocol": "lbfgs"})
    r.converged = {n: True for n in names}
    r.correct = {n: np.ones(3, bool) for n in names}
    return r


def test_probe_results_merge_in_point_order():
    merged = merge_probe_results([_result(["c", "a"], 0.5), _result(["b"], 0.7)], ["a", "b", "c"])
    assert list(merged.accuracy) == ["a", "b", "c"]
    assert merged.accuracy == {"a": 0.5, "b": 0.7, "c": 0.5}
    assert merged.diverged == ["b", "c"]
    with pytest.raises(ValueError, match="no probe result"):
        merge_probe_results([_result(["a"], 0.5)], ["a", "b"])


def test_each_process_streams_exactly_its_batches_of_a_generated_split():
    from tunnelscope import data

    split = data.load("synthetic[train=1000,test=100,size=4]").train
    batches = [x for x, _ in split.batches(96)]
    for rank in range(3):
        local = [x for x, _ in World(rank, 3).local(split, 96).batches(96)]
        assert len(local) == len(batches[rank::3])
        assert all(torch.equal(a, b) for a, b in zip(local, batches[rank::3]))


LEAVE_SCRIPT = """
import sys
from pathlib import Path
import torch.distributed as dist
from tunnelscope.engine.distributed import launched_group
with launched_group("cpu") as world:
    assert dist.is_initialized() and world.size == 2
    total = world.collect(world.rank)
Path(sys.argv[1], f"rank-{world.rank}.txt").write_text(f"{sum(total)} {dist.is_initialized()}")
"""


def test_a_command_leaves_the_group_it_joined(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # each process summed both ranks (0 + 1) in the group, then was no longer in one
    assert [(tmp_path / f"rank-{rank}.txt").read_text() for rank in (0, 1)] == ["1 False", "1 False"]


def test_outside_torchrun_a_command_joins_nothing(monkeypatch):
    import torch.distributed as dist

    from tunnelscope.engine.distributed import launched_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with launched_group("cpu") as world:
        assert world == World() and not dist.is_initialized()
