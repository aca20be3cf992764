"""The bad-input suite, part two (part one is tests/test_hostile.py): damaged files, caps,
full disks and inputs that could only give a meaningless number, through every command. Each
case asserts its exit status, one ``tunnelscope: error:`` line naming the problem, no internal
error (exit 70), no traceback, nothing left behind, and a time limit (no hang)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cli_helpers import check_refusal, run_cli, tree
from files import bad_explain_tables, fashion_root
from tunnelscope import train

Setup = Callable[[pytest.MonkeyPatch, dict], None]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two training runs, damaged copies of them and of an analysis, bad tables, data roots and sweep files."""
    root = tmp_path_factory.mktemp("bad-world")
    ours = train("mlp-3x16", "digits", epochs=1, out=root / "ours", batch_size=64, progress=False, seed=0)
    theirs = train("mlp-3x16", "digits", epochs=1, out=root / "theirs", batch_size=64, progress=False, seed=1)
    w = {"root": root, "ck": ours.final_checkpoint, "ck2": theirs.final_checkpoint, "run": ours.out}
    w["nan"] = _nan_checkpoint(ours.final_checkpoint, root / "nan.pt")
    w["foreign"] = root / "foreign"
    shutil.copytree(ours.out, w["foreign"])
    shutil.copy(theirs.final_checkpoint, w["foreign"] / "checkpoints" / "step-0000003.pt")
    w["linked"] = root / "linked"
    shutil.copytree(ours.out, w["linked"])
    (root / "v2").mkdir()
    (w["linked"] / "dynamics").symlink_to(root / "v2", target_is_directory=True)
    code = _quiet_cli(["analyze", "--checkpoint", ours.final_checkpoint, "--data", "digits", "--metrics", "rank,probe",
                       "--probe-c", "1", "--out", root / "analysis", "-q"])
    assert code == 0
    w.update(_damaged_analyses(root / "analysis", root))
    code = _quiet_cli(["invert", "--checkpoint", ours.final_checkpoint, "--data", "digits", "--images", "2", "--steps",
                       "5", "--refine-steps", "0", "--no-untrained", "--out", root / "inversion", "-q"])
    assert code == 0
    w.update(_damaged_inversions(root / "inversion", root))
    tables = root / "tables"
    tables.mkdir()
    bad_explain_tables(tables)
    w["tables"] = tables
    w.update(_data_roots(root))
    w.update(_sweep_files(root))
    w["links_only"] = _links_only_images(root / "links-only")
    w["cgroup"] = root / "cgroup"
    w["cgroup"].mkdir()
    (w["cgroup"] / "memory.max").write_text(str(3 << 30))
    (w["cgroup"] / "memory.current").write_text(str((3 << 30) - (64 << 20)))  # 64 MiB left in the container
    return w


def _quiet_cli(args: list) -> int:
    from tunnelscope.cli import main

    return main([str(a) for a in args])


def _nan_checkpoint(good: Path, path: Path) -> Path:
    payload = torch.load(good, weights_only=True)
    name = next(k for k in payload["model"] if k.endswith("weight"))
    payload["model"][name] = payload["model"][name].clone()
    payload["model"][name].view(-1)[3] = float("nan")
    torch.save(payload, path)
    return path


def _damaged_analyses(analysis: Path, root: Path) -> dict[str, Path]:
    """Copies of a finished analysis, each damaged in one way."""
    def copy(name: str, damage: Callable[[Path], None]) -> Path:
        target = root / name
        shutil.copytree(analysis, target)
        damage(target)
        return target

    def table_edit(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
        return lambda d: edit(pd.read_parquet(d / "results.parquet")).to_parquet(d / "results.parquet")

    def summary_edit(change: dict) -> Callable[[Path], None]:
        return lambda d: (d / "summary.json").write_text(json.dumps({**json.loads((d / "summary.json").read_text()),
                                                                      **change}))

    def figures_link(d: Path) -> None:
        shutil.rmtree(d / "figures")
        (root / "elsewhere").mkdir()
        (d / "figures").symlink_to(root / "elsewhere", target_is_directory=True)

    return {
        "analysis": analysis,
        "dup_rows": copy("dup-rows", table_edit(lambda t: pd.concat([t, t.iloc[:3]]))),
        "no_rows": copy("no-rows", table_edit(lambda t: t.iloc[:0])),
        "removed_rows": copy("removed-rows", table_edit(lambda t: t.drop(index=t.index[t.metric == "rank"][:2]))),
        "text_values": copy("text-values", table_edit(lambda t: t.assign(value=t.value.astype(str)))),
        "summary_list": copy("summary-list", lambda d: (d / "summary.json").write_text("[]")),
        "summary_cut": copy("summary-cut", lambda d: (d / "summary.json").write_text('{"model": "mlp')),
        "config_text": copy("config-text", lambda d: (d / "config.json").write_text('"x"')),
        "nested_type": copy("nested-type", summary_edit({"flags": [{"code": 1, "message": "m", "blocking": False}]})),
        "bad_interval": copy("bad-interval", summary_edit({"tunnel_start@0.95_ci": [1]})),
        "figures_link": copy("figures-link", figures_link),
    }


def _damaged_inversions(inversion: Path, root: Path) -> dict[str, Path]:
    """Copies of an inversion whose inversion.json was edited or damaged."""
    damaged = {}
    for name, text in (("inv_list", "[]"), ("inv_summary", '{"kind": "inversion", "summary": 3}'),
                       ("inv_row", '{"kind": "inversion", "summary": {"trained": [{"layer": "x"}]}}')):
        target = root / name
        shutil.copytree(inversion, target)
        (target / "inversion.json").write_text(text)
        damaged[name] = target
    return damaged


def _data_roots(root: Path) -> dict[str, Path]:
    bomb = root / "bomb"
    fashion_root(bomb)
    header = bytes([0, 0, 0x08, 1]) + (1 << 22).to_bytes(4, "big")
    (bomb / "train-labels-idx1-ubyte").unlink()
    (bomb / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + bytes(1 << 22)))
    return {"short_labels": fashion_root(root / "short-labels", np.arange(5) % 10),
            "label_200": fashion_root(root / "label-200", [0, 1, 2, 200, 4, 5]), "bomb": bomb}


def _links_only_images(root: Path) -> Path:
    """An image folder whose training classes hold only a link loop, a link to itself and a FIFO
    named like an image (which hung the loader): no training image at all."""
    from PIL import Image

    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "test" / cls).mkdir(parents=True)
        Image.new("L", (8, 8), color=40).save(root / "test" / cls / "0.png")
    (root / "train" / "a" / "loop").symlink_to("..", target_is_directory=True)
    (root / "train" / "b" / "self").symlink_to(".", target_is_directory=True)
    os.mkfifo(root / "train" / "a" / "pipe.png")
    return root


def _sweep_files(root: Path) -> dict[str, Path]:
    folder = root / "sweeps"
    folder.mkdir()
    base = {"name": "s", "store": "store", "grid": {"depth": [2, 3]},
            "cell": {"model": "mlp-{depth}x8", "data": "digits", "epochs": 1}}
    files = {"sweep_inf_cpus": "resources: {cpus: .inf}\n", "sweep_ckpt_1e400": "",
             "sweep_nan_lr": "", "sweep_ood_is_id": ""}
    specs = {"sweep_ckpt_1e400": {**base, "cell": {**base["cell"], "checkpoint_every": "1e400"}},
             "sweep_nan_lr": {**base, "cell": {**base["cell"], "lr": ".nan"}},
             "sweep_ood_is_id": {**base, "analysis": {"ood": ["digits"]}}}
    paths = {}
    for name, extra in files.items():
        path = folder / f"{name}.yaml"
        text = yaml.safe_dump(specs[name]) if name in specs else yaml.safe_dump(base) + extra
        path.write_text(text.replace("'1e400'", "1e400").replace("'.nan'", ".nan"))
        paths[name] = path
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
                                                    for p, c in zip("abcdefgh", "bcdefghi")]
    paths["yaml_bomb"] = folder / "bomb.yaml"
    paths["yaml_bomb"].write_text("\n".join([*bomb, "name: s", "grid: {depth: [2]}"]) + "\n")
    return paths


# ----------------------------------------------------------------------------- what a case may change first
def _disk_full_after(writes: int) -> Setup:
    """Every file written after the first ``writes`` fails as on a full disk (ENOSPC at fsync)."""
    def setup(monkeypatch: pytest.MonkeyPatch, w: dict) -> None:
        real, calls = os.fsync, [0]

        def fsync(fd: int) -> None:
            calls[0] += 1
            if calls[0] > writes:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    return setup


def _read_only_folders(monkeypatch: pytest.MonkeyPatch, w: dict) -> None:
    """Every folder refuses new files, as a read-only one does for a user who is not root."""
    import tempfile

    def refuse(prefix: str = "", suffix: str = "", dir: str | None = None, **kw) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir or "", f"{prefix}x1y2{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _container_limit(monkeypatch: pytest.MonkeyPatch, w: dict) -> None:
    import tunnelscope.engine.statistics as statistics

    monkeypatch.setattr(statistics, "CGROUP_ROOT", w["cgroup"])


def _small_idx_cap(monkeypatch: pytest.MonkeyPatch, w: dict) -> None:
    import tunnelscope.data.idx as idx

    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)


def _cases(w: dict, out: Path) -> list[tuple]:
    """(arguments, exit status, a fragment of the message[, a setup]); ``out`` is a fresh output folder."""
    ck, ck2, nan, tables = w["ck"], w["ck2"], w["nan"], w["tables"]
    an = ["analyze", "--checkpoint", ck, "--data", "digits", "--out", out, "-q"]
    ex = ["explain", "--target", "retained", "--vars", "aug", "--out", out]
    small = ["--max-samples", "200"]
    return [
        # explain: unreadable or unusable tables (internal errors before)
        ([*ex, tables / "empty.csv"], 1, "is empty"),
        ([*ex, tables / "random.csv"], 1, "is not UTF-8 text"),
        ([*ex, tables / "utf16.csv"], 1, "is not UTF-8 text"),
        ([*ex, tables / "corrupt.parquet"], 1, "is not a readable Parquet file"),
        ([*ex, tables / "inf.csv", "--vars", "depth"], 1, "column 'depth' is missing or infinite in 1 of 14 rows"),
        ([*ex, tables / "nan-cluster.csv", "--cluster", "cell"], 1, "column 'cell' is missing or infinite"),
        ([*ex, tables / "huge.csv"], 1, "holds values up to 1e+308"),
        ([*ex, tables / "constant.csv"], 1, "there is nothing to explain"),
        ([*ex, tables / "big-variable.csv", "--vars", "big"], 1, "column 'big' holds values up to 3e+200"),
        (["explain", tables / "good.csv", "--target", "nope", "--out", out], 1, "nope"),
        (["explain", tables / "good.csv", "--target", "retained", "--vars", "colour", "--out", out], 1, "colour"),
        (["explain", tables / "missing.csv", "--target", "retained", "--out", out], 1, "does not exist"),
        # report and compare over damaged or edited run directories
        (["report", w["dup_rows"]], 1, "holds 3 duplicated row(s)"),
        (["report", w["no_rows"]], 1, "holds no rows"),
        (["report", w["removed_rows"]], 1, "'rank' on 'digits' (train) lacks 2 of the 3 points"),
        (["report", w["text_values"]], 1, "column 'value' holds string values, not numbers"),
        (["report", w["summary_list"]], 1, "summary.json holds a list, not a JSON object"),
        (["report", w["summary_cut"]], 1, "cannot read the results"),
        (["report", w["config_text"]], 1, "config.json holds a str, not a JSON object"),
        (["report", w["nested_type"]], 1, "flags[0].code is 1, not text"),
        (["report", w["bad_interval"]], 1, "tunnel_start@0.95_ci is [1], not a pair [lo, hi] of numbers"),
        (["report", w["figures_link"]], 1, "does not write through links"),
        (["report", w["inv_list"]], 1, "inversion.json holds a list, not a JSON object"),
        (["report", w["inv_summary"]], 1, "inversion.json: summary is 3, not an object"),
        (["report", w["inv_row"]], 1, "summary.trained[0].m_g is missing, not a number"),
        (["compare", w["dup_rows"], w["analysis"], "--out", out], 1, "duplicated row(s)"),
        (["compare", w["removed_rows"], w["analysis"], "--out", out], 1, "lacks"),
        (["compare", w["analysis"], w["analysis"], "--label", "one", "--out", out], 1, "label"),
        # a model with a NaN weight, by every command that reads one
        (["analyze", "--checkpoint", nan, "--data", "digits", "--out", out], 1, "holds non-finite weights"),
        (["agreement", nan, ck, "--data", "digits", "--out", out], 1, "holds non-finite weights"),
        (["cross-cka", nan, ck, "--data", "digits", "--out", out], 1, "holds non-finite weights"),
        (["invert", "--checkpoint", nan, "--data", "digits", "--images", "2", "--out", out], 1,
         "holds non-finite weights"),
        # two inputs that must differ, too few samples, unknown option values
        (["agreement", ck, ck, "--data", "digits", "--out", out], 1, "given more than once"),
        (["agreement", "mlp-3x16", "mlp-3x16", "--data", "digits", "--out", out], 1, "given more than once"),
        (["agreement", ck, "--data", "digits", "--out", out], 1, "two"),
        (["cross-cka", ck, ck2, "--data", "digits", "--max-samples", "5", "--batch-size", "4", "--out", out], 1,
         "at least 50"),
        (["cross-cka", ck, "mlp-3x", "--data", "digits", "--out", out], 1, "unknown model spec"),
        (["continual", "--model", "mlp-3x16", "--task1", "digits[classes=0-4]", "--task2", "digits[classes=0-4]",
          "--epochs", "1", "--out", out], 1, "are the same data"),
        (["continual", "--model", "mlp-3x16", "--task1", "digits[classes=0-4]", "--task2", "digits[classes=5-7]",
          "--epochs", "1", "--out", out], 1, "classes"),
        # dynamics and interventions over run directories that are not what they seem
        (["dynamics", w["run"], "--heatmap", "bogus", "--out", out], 1, "no metric 'bogus' to draw as a heatmap"),
        (["dynamics", w["foreign"], "--steps", "3", "--out", out], 1, "is not a checkpoint of this run"),
        (["dynamics", w["linked"], "--overwrite"], 1, "does not write through links"),
        (["dynamics", w["root"] / "nowhere", "--out", out], 1, "does not exist"),
        (["dynamics", w["analysis"], "--out", out], 1, "holds no checkpoints"),
        (["dynamics", w["run"], "--steps", "every:0", "--out", out], 1, "every"),
        (["dynamics", w["run"], "--steps", "bogus", "--out", out], 1, "steps"),
        (["intervene", "movement", w["foreign"], "--out", out], 1, "is not a checkpoint of this run"),
        (["intervene", "movement", w["root"] / "nowhere", "--out", out], 1, "does not exist"),
        (["intervene", "delete-blocks", ck, "--data", "digits", "--out", out], 1, "residual"),
        # data files that do not fit together, and sizes beyond any budget
        (["train", "--model", "mlp-3x16", "--data", "fashion-mnist", "--data-root", w["short_labels"], "--out", out,
          "-q"], 1, "holds 6 images but"),
        (["train", "--model", "mlp-3x16", "--data", "fashion-mnist", "--data-root", w["label_200"], "--out", out,
          "-q"], 1, "holds label 200"),
        (["train", "--model", "mlp-3x16", "--data", "fashion-mnist", "--data-root", w["bomb"], "--out", out, "-q"], 1,
         "more than 1 MiB", _small_idx_cap),
        (["train", "--model", "mlp-3x16", "--data", "digits[per_class=3]", "--batch-size", "1", "--epochs", "1",
          "--out", out, "-q"], 1, "a batch of 1 cannot train a model with batch normalisation"),
        ([*an[:4], "mnist1d[n=100000000]", *an[5:]], 1, "mnist1d"),
        (["analyze", "--model", "mlp-3x16", "--data", "digits[size=100000]", "--out", out], 1, "size"),
        (["analyze", "--model", "mlp-3x8192", "--data", "digits", "--metrics", "all", "--max-samples", "2000",
          "--out", out], 1, "budget", _container_limit),
        # sweep files
        (["sweep", "status", w["yaml_bomb"]], 1, "expand"),
        (["sweep", w["sweep_inf_cpus"]], 1, "cpus"),
        (["sweep", w["sweep_ckpt_1e400"]], 1, "checkpoint_every"),
        (["sweep", w["sweep_nan_lr"]], 1, "lr"),
        (["sweep", w["sweep_ood_is_id"]], 1, "is the ID data itself"),
        # wrong kinds of directory, unknown names, inputs that do not fit
        (["report", w["run"]], 1, "is a training run, not an analysis"),
        (["compare", w["run"], w["analysis"], "--out", out], 1, "is a training run, not an analysis"),
        (["fetch", "bogus"], 1, "unknown dataset 'bogus'"),
        (["sweep", "collect", w["root"] / "nope.yaml"], 1, "does not exist"),
        (["continual", "--model", "mlp-3x16", "--task1", "digits[classes=0-4]", "--task2", "digits[classes=5-9]",
          "--split-at", "99", "--epochs", "1", "--out", out], 1, "split_at=99 is out of range"),
        (["agreement", ck, ck2, "--data", "digits", "--figure-groups", "X,Y", "--out", out], 1, "unknown group 'X'"),
        (["dynamics", w["run"], "--data", "digits[size=16]", "--out", out], 1, "expects inputs (1, 8, 8)"),
        (["cross-cka", ck, ck2, "--data", "digits", "--points", "nomatch*", "--out", out], 1, "matches"),
        (["intervene", "reset", w["root"] / "nowhere", "--out", out], 2, "does not exist"),
        (["analyze", "--model", "mlp-3x16", "--data", f"imagefolder:{w['links_only']}[size=8,channels=1]",
          "--out", out], 1, "no images"),
        # a folder that cannot be written: the message names the file, not a temporary name
        ([*an, *small], 1, "Permission denied: ", _read_only_folders),
        # a full disk while writing the results: nothing half-written is left
        ([*an, *small], 1, "no space left on device while writing", _disk_full_after(1)),
        ([*an, *small], 1, "no space left on device while writing", _disk_full_after(4)),
        (["cross-cka", ck, ck2, "--data", "digits", *small, "--out", out], 1, "no space left on device",
         _disk_full_after(1)),
        (["agreement", ck, ck2, "--data", "digits", "--out", out], 1, "no space left on device", _disk_full_after(2)),
        (["intervene", "movement", w["run"], "--out", out], 1, "no space left on device", _disk_full_after(1)),
        ([*ex, tables / "good.csv"], 1, "no space left on device", _disk_full_after(1)),
        (["invert", "--checkpoint", ck, "--data", "digits", "--images", "2", "--steps", "5", "--out", out], 1,
         "no space left on device", _disk_full_after(1)),
    ]


CASE_COUNT = 79


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(CASE_COUNT))
def test_bad_input_gets_one_line_and_leaves_nothing(index, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _cases(world, tmp_path / "out")
    assert len(cases) == CASE_COUNT
    args, status, fragment, *setup = cases[index]
    before, world_before = tree(tmp_path), tree(world["root"])
    for prepare in setup:
        prepare(monkeypatch, world)
    code, stdout, err = run_cli(args, capsys)
    monkeypatch.undo()
    check_refusal(args, code, stdout, err, status, fragment)
    assert tree(tmp_path) == before, f"left behind: {tree(tmp_path) - before}"
    assert tree(world["root"]) == world_before, f"changed: {tree(world['root']) ^ world_before}"
