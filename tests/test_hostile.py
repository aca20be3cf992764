"""Hostile input, interruption and sweeps: no code runs from a file, every bad invocation gets one
line and a non-zero exit with nothing left behind (part one of the bad-input suite; part two,
damaged files, caps and full disks, is tests/test_bad_inputs.py), and killed processes leave no
orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import check_refusal, run_cli, tree
from tunnelscope import train

MODEL_DATA = "digits"


class Evil:
    """Unpickling this object would create ``MARKER``: a file that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files every case may point at: a trained checkpoint, a malicious one, junk, an image folder
    with a non-image, sweep files, a partial and a finished analysis."""
    root = tmp_path_factory.mktemp("world")
    run = train("mlp-3x16", MODEL_DATA, epochs=1, out=root / "run", batch_size=64, progress=False)
    marker = root / "PWNED"
    evil = root / "evil.pt"
    torch.save({"format": "tunnelscope.checkpoint", "meta": Evil(marker), "model": {}}, evil)
    (root / "evil-run").mkdir()
    torch.save({"format": "tunnelscope.checkpoint", "meta": Evil(marker), "optimizer": Evil(marker)},
               root / "evil-run" / "resume.pt")
    torch.save(Evil(marker), root / "evil-weights.pt")
    (root / "text.txt").write_text("hello, not a tensor file\n")
    torch.save({"nope.weight": torch.zeros(3, 3)}, root / "wrong-weights.pt")
    images = root / "images"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (images / split / cls).mkdir(parents=True)
            for i in range(6):
                from PIL import Image

                Image.new("L", (28, 28), color=i * 30).save(images / split / cls / f"{i}.png")
    (images / "train" / "a" / "broken.png").write_text("not an image")
    partial = root / "partial"
    partial.mkdir()
    (partial / "results.parquet").write_bytes(b"PAR1")
    sweeps = root / "sweeps"
    sweeps.mkdir()
    good = {"name": "s", "store": "store", "grid": {"depth": [2, 3]},
            "cell": {"model": "mlp-{depth}x8", "data": "digits", "epochs": 1}}

    def sweep_file(file: str, **change) -> Path:
        path = sweeps / f"{file}.yaml"
        spec = {**good, **change}
        path.write_text(yaml.safe_dump(spec))
        return path

    files = {
        "cpus": sweep_file("cpus", resources={"cpus": -1}),
        "escape": sweep_file("escape", name="../../x", store=None),
        "huge": sweep_file("huge", grid={f"v{i}": list(range(10)) for i in range(7)},
                           cell={"model": "mlp-2x8", "data": "digits", "epochs": "{v0}"}),
        "model": sweep_file("model", cell={"model": "mlp-{depth}", "data": "digits"}),
        "dataset": sweep_file("dataset", cell={"model": "mlp-{depth}x8", "data": "digitz"}),
        "epochs": sweep_file("epochs", cell={"model": "mlp-{depth}x8", "data": "digits", "epochs": 0}),
        "key": sweep_file("key", colour="red"),
        "metric": sweep_file("metric", analysis={"metrics": "probe,nope"}),
        "good": sweep_file("good"),
    }
    (sweeps / "invalid.yaml").write_text("name: x\ngrid: [1, 2\n")
    files["invalid"] = sweeps / "invalid.yaml"
    return {"root": root, "checkpoint": run.final_checkpoint, "marker": marker, "evil": evil,
            "evil_run": root / "evil-run", "evil_weights": root / "evil-weights.pt", "text": root / "text.txt",
            "wrong_weights": root / "wrong-weights.pt", "images": images, "partial": partial, "sweeps": files}


def _cases(w: dict, out: str) -> list[tuple[list, int, str]]:
    """(arguments, exit status, a fragment of the message). ``out`` is a fresh output folder."""
    ck, sw = str(w["checkpoint"]), w["sweeps"]
    tr = ["train", "--epochs", "1", "--out", out, "-q"]
    an = ["analyze", "--out", out, "-q"]
    iv = ["invert", "--out", out, "-q"]
    return [
        # train
        ([*tr, "--model", "mlp-12", "--data", "digits"], 1, "unknown model spec"),
        ([*tr, "--model", "mlp-3x16", "--data", "digitz"], 1, "unknown dataset"),
        ([*tr, "--model", "mlp-0x32", "--data", "digits"], 1, "impossible depth"),
        ([*tr, "--model", "mlp-3x0", "--data", "digits"], 1, "impossible width"),
        ([*tr, "--model", "vgg11", "--data", "mnist1d[n=200]"], 1, "takes images"),
        ([*tr, "--model", "tv:resnet18", "--data", "digits[size=32]"], 1, "channels"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--device", "cuda:0"], 1, "CUDA is not available"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--resume"], 1, "nothing to resume"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--epochs", "0"], 2, "--epochs"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--batch-size", "0"], 2, "--batch-size"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--lr", "0"], 2, "--lr"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--lr", "-1"], 2, "--lr"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--label-smoothing", "1.5"], 2, "--label-smoothing"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--threads", "0"], 2, "--threads"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--seed", "-1"], 2, "--seed"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[classes=3]"], 1, "single class"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[classes=0-12]"], 1, "do not exist"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[per_class=0]"], 1, "must be >= 1"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[size=abc]"], 1, "must be an integer"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[channels=2]"], 1, "must be 1 or 3"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[aug=2]"], 1, "must be 0 or 1"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits[classes=0-4"], 1, "cannot parse"),
        ([*tr, "--model", "mlp-3x16[w=1]", "--data", "digits"], 1, "takes no [modifiers]"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--data-root", "/nonexistent/data"], 1, "not a folder"),
        ([*tr, "--model", "mlp-3x16", "--data", "imagefolder:/nonexistent/images"], 1, "train/ and test/"),
        ([*tr, "--model", "mlp-3x16", "--data", "digits", "--lr", "1e9"], 1, "training diverged"),
        ([*tr, "--model", "mlp-3x16", "--data", f"imagefolder:{w['images']}[size=28,channels=1]",
          "--batch-size", "4"], 1, "cannot read image"),
        (["train", "--model", "mlp-3x16", "--data", "digits", "--epochs", "1", "--out", str(w["evil_run"]),
          "--resume", "-q"], 1, "weights_only=True"),
        (["train", "--model", "mlp-3x16", "--data", "digits", "--epochs", "1", "--out",
          str(w["checkpoint"].parents[1]), "-q"], 1, "already holds a training run"),
        # analyze
        ([*an, "--checkpoint", "/nonexistent.pt", "--data", "digits"], 1, "does not exist"),
        ([*an, "--checkpoint", ck, "--model", "mlp-3x16", "--data", "digits"], 2, "exactly one of"),
        ([*an, "--data", "digits"], 2, "exactly one of"),
        ([*an, "--checkpoint", ck, "--weights", ck, "--data", "digits"], 2, "--weights goes with --model"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--max-samples", "-5"], 2, "--max-samples"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--max-samples", "1"], 1, "at least"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--max-train", "0"], 2, "--max-train"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--max-train", "3"], 1, "training samples for 10 classes"),
        ([*an, "--checkpoint", str(w["evil"]), "--data", "digits"], 1, "weights_only=True"),
        ([*an, "--checkpoint", str(w["text"]), "--data", "digits"], 1, "not a PyTorch file"),
        ([*an, "--model", "mlp-3x16", "--weights", str(w["text"]), "--data", "digits"], 1, "not a PyTorch file"),
        ([*an, "--model", "mlp-3x16", "--weights", str(w["evil_weights"]), "--data", "digits"], 1,
         "never runs code"),
        ([*an, "--model", "mlp-3x16", "--weights", str(w["wrong_weights"]), "--data", "digits"], 1, "do not fit"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--metrics", "rank,nope"], 1, "unknown metric"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--ood", "mnist1d[n=200]"], 1, "only images"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--ood", "digits[classes=3]"], 1, "single class"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--ood", "digits[classes=0-4]", "--metrics", "rank"], 1,
         "add 'probe'"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--ood", "digits"], 1, "is the ID data itself"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--reduce", "pool0"], 1, "unknown reduction"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--points", "nomatch*"], 1, "matches"),
        ([*an, "--checkpoint", ck, "--data", "digits[classes=0-4]"], 1, "classes"),
        ([*an, "--checkpoint", ck, "--data", "digits[size=16]"], 1, "expects inputs"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--protocol", "bogus"], 2, "--protocol"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--probe-epochs", "0"], 2, "--probe-epochs"),
        ([*an, "--checkpoint", ck, "--data", "digits", "--resamples", "-1"], 2, "--resamples"),
        (["analyze", "--checkpoint", ck, "--data", "digits", "--out", str(w["partial"]), "-q"], 1, "partial"),
        # report and compare
        (["report", "/nonexistent/run"], 1, "is not a directory"),
        (["report", str(w["root"] / "sweeps")], 1, "holds no complete analysis"),
        (["report", str(w["partial"])], 1, "holds no complete analysis"),
        (["compare", "/nonexistent/run", "--out", out], 1, "is not a directory"),
        (["compare", str(w["partial"]), "--out", out], 1, "holds no complete analysis"),
        # invert
        ([*iv, "--checkpoint", "/nonexistent.pt", "--data", "digits"], 1, "does not exist"),
        ([*iv, "--checkpoint", str(w["evil"]), "--data", "digits"], 1, "weights_only=True"),
        ([*iv, "--checkpoint", ck, "--data", "digits[size=16]"], 1, "expects inputs"),
        ([*iv, "--checkpoint", ck, "--data", "digits", "--images", "0"], 2, "--images"),
        ([*iv, "--checkpoint", ck, "--data", "digits", "--images", "100000"], 1, "more than the"),
        ([*iv, "--checkpoint", ck, "--data", "digits", "--tv", "-1"], 2, "--tv"),
        ([*iv, "--checkpoint", ck, "--data", "digits", "--steps", "0"], 2, "--steps"),
        # sweep
        (["sweep", "/nonexistent/sweep.yaml"], 1, "does not exist"),
        (["sweep", str(sw["invalid"])], 1, "is not valid YAML at line"),
        (["sweep", str(sw["cpus"])], 1, "resources.cpus"),
        (["sweep", str(sw["escape"])], 1, "not a path"),
        (["sweep", str(sw["huge"])], 1, "10000000 cells"),
        (["sweep", str(sw["model"])], 1, "unknown model spec"),
        (["sweep", str(sw["dataset"])], 1, "unknown dataset"),
        (["sweep", str(sw["epochs"])], 1, "'epochs' must be >= 1"),
        (["sweep", str(sw["key"])], 1, "unknown key 'colour'"),
        (["sweep", str(sw["metric"])], 1, "unknown metric"),
        (["sweep", "status", "/nonexistent/sweep.yaml"], 1, "does not exist"),
        (["sweep", str(sw["good"]), "extra"], 2, "usage"),
        (["sweep", str(sw["good"]), "--address", "127.0.0.1:1"], 1, "cannot reach a Ray cluster"),
        (["sweep", str(sw["good"]), "--max-concurrent", "0"], 2, "--max-concurrent"),
        # the rest
        (["datasets", "--data-root", "/nonexistent/data"], 1, "not a folder"),
        (["models", "--bogus"], 2, "No such option"),
        (["frobnicate"], 2, "No such command"),
        (["demo", "--device", "cuda", "--out", out, "-q"], 1, "CUDA is not available"),
        (["demo", "--data-root", "/nonexistent/data", "--out", out, "-q"], 1, "not a folder"),
    ]


CASE_COUNT = 86


def _spills() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("tunnelscope-cache-*")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(CASE_COUNT))
def test_bad_input_gets_one_line_and_leaves_nothing(index, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    cases = _cases(world, out)
    assert len(cases) == CASE_COUNT
    args, status, fragment = cases[index]
    before, world_before, spills = tree(tmp_path), tree(world["root"]), _spills()
    code, stdout, err = run_cli(args, capsys)
    check_refusal(args, code, stdout, err, status, fragment)
    assert tree(tmp_path) == before, f"left behind: {tree(tmp_path) - before}"
    assert tree(world["root"]) == world_before and _spills() == spills
    assert not world["marker"].exists(), "a file ran code"


def test_malicious_pickles_never_run(world):
    """Every loader of user files refuses the malicious pickle without running it."""
    from tunnelscope import load_model
    from tunnelscope.checkpoint import read_checkpoint
    from tunnelscope.errors import CheckpointError
    from tunnelscope.models import build, load_weights

    for load in (lambda: load_model(world["evil"]), lambda: read_checkpoint(world["evil_run"] / "resume.pt"),
                 lambda: load_weights(build("mlp-3x16", 10, (1, 8, 8)), world["evil_weights"])):
        with pytest.raises(CheckpointError, match="never runs code"):
            load()
    assert not world["marker"].exists()
    # the same files would run code if loaded the unsafe way: the test's pickles are real
    torch.load(world["evil_weights"], weights_only=False)
    assert world["marker"].exists()
    world["marker"].unlink()


def test_no_weights_only_false_on_user_files():
    source = Path(__file__).parents[1] / "src"
    offenders = [str(p) for p in source.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


# ----------------------------------------------------------------------------- kill tests
def _cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tunnelscope.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def test_killed_and_terminated_training_resume_and_leave_no_temporaries(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp-4x64", "--data", "fashion-mnist[classes=0-4,per_class=1000]", "--epochs", "3",
            "--out", str(out), "-q"]
    proc = _cli(args)
    _wait_for(lambda: len(list((out / "checkpoints").glob("step-*.pt"))) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / ".resume.pt.stale.tmp").write_bytes(b"half")  # what a kill in the middle of a write leaves
    saved = (out / "resume.pt").stat().st_mtime_ns
    proc = _cli(args + ["--resume"])
    # the resumed run is training once it saved a checkpoint of its own (or it has finished)
    _wait_for(lambda: proc.poll() is not None or (out / "resume.pt").stat().st_mtime_ns != saved)
    proc.send_signal(signal.SIGTERM)  # like Ctrl-C: stops cleanly, resumable
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0) and "Traceback" not in err, (proc.returncode, err)
    assert _tmp_files(out) == []
    done = subprocess.run([sys.executable, "-m", "tunnelscope.cli", *args, "--resume", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _tmp_files(out) == [] and json.loads((out / "run.json").read_text())["status"] == "finished"


def test_killed_analysis_leaves_nothing_and_runs_again(world, tmp_path):
    out = tmp_path / "analysis"
    args = ["analyze", "--checkpoint", str(world["checkpoint"]), "--data", "digits", "--ood", "digits[classes=0-4]",
            "--protocol", "harun", "--probe-epochs", "5000", "--out", str(out), "-q"]
    spills = _spills()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = _cli(args)
        time.sleep(6)  # well inside the probes
        assert proc.poll() is None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and not out.exists() and _spills() == spills, err
        if sig == signal.SIGTERM:
            assert proc.returncode == 130 and err.strip() == "tunnelscope: interrupted", (proc.returncode, err)


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if tag.encode() in (proc / "environ").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc to find processes and sockets")
def test_a_killed_sweep_driver_leaves_no_process_and_a_local_sweep_listens_on_no_socket(tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "kill", "store": "store", "grid": {"seed": [0, 1]},
        "cell": {"model": "mlp-4x64", "data": "fashion-mnist[classes=0-4,per_class=1000]", "epochs": 3,
                 "seed": "{seed}"},
        "analysis": {"metrics": "rank"}, "resources": {"cpus": 1}}))
    tag = f"TUNNELSCOPE_TEST_TAG={uuid.uuid4().hex}"
    driver = _cli(["sweep", str(spec), "--max-concurrent", "2", "-q"], env=dict([tag.split("=", 1)]))
    store = tmp_path / "store"
    _wait_for(lambda: len(list((store / "runs").glob("*/checkpoints/step-*.pt"))) >= 2)
    processes = _tagged(tag)
    assert len(processes) >= 3  # the driver and its two workers
    listening = _listening_inodes()
    assert all(not (_socket_inodes(pid) & listening) for pid in processes), "a sweep process listens on a socket"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    _wait_for(lambda: _tagged(tag) == [], timeout=15)
    status = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "sweep", "status", str(spec), "--json"],
                            capture_output=True, text=True)
    assert status.returncode == 0 and '"dead"' in status.stdout
    again = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "sweep", str(spec), "-q"], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _tmp_files(store) == []

