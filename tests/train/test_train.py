import json
import math

import pandas as pd
import pytest
import torch

import tunnelscope as ts
from tunnelscope.checkpoint import read_checkpoint
from tunnelscope.errors import CheckpointError, ConfigError, RunDirectoryError
from tunnelscope.train import Recipe, early_steps

SMALL = "fashion-mnist[classes=0-4,per_class=100,test_per_class=40,aug=1]"


def test_early_steps_are_log_spaced():
    assert early_steps(100) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert early_steps(1) == [0]


def test_recipes_resolve_defaults_and_schedules():
    sgd = Recipe.resolve("sgd", 10)
    assert (sgd.lr, sgd.momentum, sgd.weight_decay, sgd.label_smoothing) == (0.1, 0.9, 5e-4, 0.0)
    adamw = Recipe.resolve("adamw", 100)
    assert (adamw.lr, adamw.warmup_epochs, adamw.label_smoothing) == (1e-3, 5.0, 0.1)
    model = torch.nn.Linear(2, 2)
    opt = adamw.optimizer(model)
    sched = adamw.scheduler(opt, total_steps=1000, steps_per_epoch=10)  # 50 warm-up steps
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 50) and lrs[49] == pytest.approx(1e-3)
    assert lrs[525] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 475 / 950)))
    with pytest.raises(ConfigError):
        Recipe.resolve("adam", 10)
    with pytest.raises(ConfigError):
        Recipe.resolve("adamw", 10, schedule="onecycle")


@pytest.mark.slow
def test_mlp6_reaches_80_percent_on_fashion_in_one_epoch(fashion, tmp_path):
    result = ts.train("mlp-6x128", fashion, epochs=1, out=tmp_path, progress=False)
    assert result.test_accuracy >= 0.80
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["test_acc"].iloc[-1] == pytest.approx(result.test_accuracy)


def test_outputs_and_checkpoint_roundtrip(fashion_small, tmp_path):
    result = ts.train("mlp-4x64", fashion_small, epochs=2, out=tmp_path, batch_size=64, progress=False)
    steps = [read_checkpoint(p)["meta"]["step"] for p in result.checkpoints]
    # 500 samples / 64 = 7 steps per epoch: 0, 1, 2, 4 in the first epoch, then epochs 1 and 2
    assert steps == [0, 1, 2, 4, 7, 14]
    run = __import__("json").loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["recipe"]["lr"] == 0.1
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"].startswith("2.")
    assert run["data"]["normalisation"]["mean"] and run["model"]["probe_points"]["blocks"]
    model, meta = ts.load_model(result.final_checkpoint)
    assert (meta["model_spec"], meta["data_spec"], meta["num_classes"]) == ("mlp-4x64", fashion_small.spec, 5)
    x, _ = next(fashion_small.test.batches(32))
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))
    assert not list(tmp_path.rglob("*.tmp"))


def _weights(path):
    return read_checkpoint(path)["model"]


@pytest.mark.parametrize("stop_at", [6, 10])  # mid first epoch (after the step-4 checkpoint), and in epoch 2
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, stop_at):
    kwargs = dict(epochs=3, batch_size=64, seed=3, progress=False)
    full = ts.train("mlp-4x64", SMALL, out=tmp_path / "full", **kwargs)

    def interrupt(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ts.train("mlp-4x64", SMALL, out=tmp_path / "cut", on_step=interrupt, **kwargs)
    last = read_checkpoint(tmp_path / "cut" / "resume.pt")["meta"]["step"]
    assert last < stop_at  # the last complete checkpoint, usable
    resumed = ts.train("mlp-4x64", SMALL, out=tmp_path / "cut", resume=True, **kwargs)
    a, b = _weights(full.final_checkpoint), _weights(resumed.final_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(full.history.drop(columns="seconds"), resumed.history.drop(columns="seconds"))


def test_seed_gives_identical_weights_on_cpu(tmp_path):
    kwargs = dict(epochs=1, batch_size=64, seed=5, progress=False, early_checkpoints=False)
    a = ts.train("mlp-3x32", SMALL, out=tmp_path / "a", **kwargs)
    b = ts.train("mlp-3x32", SMALL, out=tmp_path / "b", **kwargs)
    c = ts.train("mlp-3x32", SMALL, out=tmp_path / "c", **{**kwargs, "seed": 6})
    wa, wb, wc = (_weights(r.final_checkpoint) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_run_directory_protection_and_resume_checks(tmp_path, fashion_small):
    kwargs = dict(epochs=1, batch_size=64, progress=False, early_checkpoints=False)
    ts.train("mlp-3x32", fashion_small, out=tmp_path, **kwargs)
    with pytest.raises(RunDirectoryError, match="already holds a training run"):
        ts.train("mlp-3x32", fashion_small, out=tmp_path, **kwargs)
    with pytest.raises(CheckpointError, match="other settings"):
        ts.train("mlp-3x64", fashion_small, out=tmp_path, resume=True, **kwargs)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        ts.train("mlp-3x32", fashion_small, out=tmp_path / "new", resume=True, **kwargs)
    ts.train("mlp-3x32", fashion_small, out=tmp_path, overwrite=True, **kwargs)


def test_corrupt_and_mismatched_checkpoints(tmp_path, fashion_small):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        ts.load_model(bad)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a tunnelscope checkpoint"):
        ts.load_model(tmp_path / "foreign.pt")
    result = ts.train("mlp-3x32", fashion_small, epochs=1, out=tmp_path / "run", batch_size=64, progress=False,
                      early_checkpoints=False)
    payload = torch.load(result.final_checkpoint, weights_only=True)
    payload["meta"]["model_spec"] = "mlp-3x48"
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match mlp-3x48"):
        ts.load_model(tmp_path / "mismatch.pt")


def test_thread_count_and_environment_are_recorded_and_the_callers_count_comes_back(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        result = ts.train("mlp-3x16", "digits", epochs=1, out=tmp_path, batch_size=64, progress=False, threads=1)
        assert torch.get_num_threads() == 3  # train's threads= holds for the run only
        with pytest.raises(ConfigError, match="threads must be >= 1"):
            ts.train("mlp-3x16", "digits", epochs=1, out=tmp_path / "bad", progress=False, threads=0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["environment"]["threads"] == 1 and "deterministic_algorithms" in run["environment"]
    meta = torch.load(result.final_checkpoint, weights_only=True)["meta"]
    assert meta["environment"]["threads"] == 1


def test_the_default_recipe_follows_the_model_family(tmp_path):
    from tunnelscope.train.recipes import default_recipe

    assert default_recipe("vit-t-p7") == default_recipe("linear-mlp-6x256") == "adamw"
    assert default_recipe("mlp-6x256") == default_recipe("resnet18") == "sgd"
    assert default_recipe("timm:vit_tiny_patch16_224") == default_recipe("hf:vit-d2") == "adamw"
    assert default_recipe("tv:vit_b_16") == "adamw" and default_recipe("tv:resnet18") == "sgd"
    assert default_recipe("timm:resnet18") == default_recipe("hf:convnext") == "sgd"
    run = ts.train("linear-mlp-2x8", "digits[classes=0-2,per_class=20,test_per_class=5]", epochs=1, out=tmp_path / "r",
                   batch_size=16, early_checkpoints=False, progress=False)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["recipe"]["name"] == "adamw"
    assert run.final_checkpoint.is_file()


def test_the_interrupt_message_keeps_the_resume_options_on_one_line(tmp_path, monkeypatch):
    """On a 40-column terminal the resume hint used to wrap in the middle of its path (Issue 25, item 8)."""
    import io

    from rich.console import Console

    from tunnelscope.train import loop

    sink = io.StringIO()
    monkeypatch.setattr(loop, "console", Console(file=sink, width=40))
    out = tmp_path / "a-run-directory-with-a-rather-long-name"

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ts.train("mlp-3x32", SMALL, out=out, epochs=1, batch_size=64, on_step=interrupt, progress=None)
    lines = sink.getvalue().splitlines()
    assert f"continue with the same command plus: --resume --out {out}" in lines, lines


def test_an_interrupted_continual_run_does_not_suggest_resume_which_it_lacks(tmp_path, monkeypatch):
    """A killed ``continual`` told the user to add --resume, an option it does not have (Issue 26, item 8)."""
    import io

    from rich.console import Console

    from tunnelscope.experiments.continual import continual
    from tunnelscope.train import loop

    sink = io.StringIO()
    monkeypatch.setattr(loop, "console", Console(file=sink, width=200))
    real_step = loop.train_step
    calls = []

    def interrupting_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupting_step)
    out = tmp_path / "cl"
    with pytest.raises(KeyboardInterrupt):
        continual("mlp-3x32", "digits[classes=0-4]", "digits[classes=5-9]", epochs=1, out=out, progress=None,
                  device="cpu")
    text = sink.getvalue()
    assert "--resume" not in text and "run the same command again with --overwrite (overwrite=True)" in text
    assert str(out) in text


def test_a_full_disk_mid_training_keeps_the_run_and_resume_finishes_it(tmp_path, monkeypatch):
    """Disk-full at the third checkpoint of a new run: the run, its checkpoints and resume.pt
    stay (they were deleted, and --resume then found nothing), run.json says why, and
    --resume completes it."""
    import errno
    import importlib

    from tunnelscope import train

    loop = importlib.import_module("tunnelscope.train.loop")  # the package attribute 'train' is the function

    real, calls = loop.save_checkpoint, []

    def filling(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:  # step 0 and the first checkpoint went through (each writes two files)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", filling)
    data = "digits[classes=0-2,per_class=40,test_per_class=10]"
    with pytest.raises(OSError, match="No space left"):
        train("mlp-2x8", data, epochs=3, out=tmp_path / "run", batch_size=30, progress=False)
    out = tmp_path / "run"
    assert (out / "resume.pt").is_file() and any((out / "checkpoints").glob("*.pt"))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "No space left" in run["error"] and "--resume" in run["resume_hint"]
    monkeypatch.setattr(loop, "save_checkpoint", real)
    result = train("mlp-2x8", data, epochs=3, out=out, batch_size=30, progress=False, resume=True)
    assert len(result.history) == 3 and json.loads((out / "run.json").read_text())["status"] == "finished"
