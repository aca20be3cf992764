"""The training loop: recipes, the checkpoint schedule, history, and exact resumption."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import data as data_mod
from ..checkpoint import read_checkpoint, save_checkpoint
from ..device import resolve_device
from ..errors import CheckpointError, ConfigError, InsufficientDataError, SpecError, TrainingDivergedError
from ..io import write_json, write_text
from ..models import build
from ..progress import console, progress_bar, should_show
from ..rundir import CKPT_DIR, HISTORY_FILE, RESUME_FILE, RUN_FILE, checkpoint_name
from ..versions import environment, package_versions
from .recipes import Recipe, default_recipe, early_steps


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    model: nn.Module
    history: pd.DataFrame
    checkpoints: list[Path] = field(default_factory=list)
    test_accuracy: float = float("nan")

    @property
    def final_checkpoint(self) -> Path:
        """The checkpoint written after the last epoch."""
        return self.checkpoints[-1]


def _shuffle_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def read_run(out: str | Path) -> dict:
    """``out/run.json`` as a dict; ``{}`` when it is missing or unreadable (a damaged or foreign
    file counts as no run). A finished run always has its final accuracy and checkpoint."""
    try:
        run = json.loads((Path(out) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(run, dict):
        return {}
    complete = run.get("status") != "finished" or (
        isinstance(run.get("final"), dict) and "test_acc" in run["final"] and "final_checkpoint" in run)
    return run if complete else {}


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes that a killed process could not remove."""
    for folder in (out, out / CKPT_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _remove_run(out: Path, created: bool) -> None:
    """Delete what a failed new run wrote (and ``out`` itself when this run created it)."""
    for name in (RUN_FILE, HISTORY_FILE, RESUME_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    _remove_stale_temporaries(out)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    _remove_stale_temporaries(out)
    if resume:
        if not (out / RESUME_FILE).is_file():
            raise CheckpointError(f"nothing to resume in {out}: no {RESUME_FILE}; drop --resume to start a new run")
        return
    if (out / RUN_FILE).exists() or (out / CKPT_DIR).exists():
        if not overwrite:
            raise SpecError(f"{out} already holds a training run; use --resume to continue it, "
                            "--overwrite to replace it, or another --out")
        for name in (RUN_FILE, HISTORY_FILE, RESUME_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / CKPT_DIR, ignore_errors=True)


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module, device_type: str,
               amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch (bfloat16 autocast when ``amp``); the detached loss and logits."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
        loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), logits.detach()


def train(
    model: str,
    data: str | data_mod.Dataset,
    epochs: int = 10,
    out: str | Path = "runs/train",
    *,
    recipe: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup_epochs: float | None = None,
    label_smoothing: float | None = None,
    batch_size: int = 128,
    seed: int = 0,
    checkpoint_every: int = 1,
    early_checkpoints: bool = True,
    dense_steps: int = 0,
    device: str | torch.device = "auto",
    amp: bool | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    threads: int | None = None,
) -> TrainResult:
    """Train a zoo model on a dataset and write checkpoints, ``run.json`` and ``history.csv``.

    Checkpoints go to ``out/checkpoints/step-NNNNNNN.pt`` at log-spaced steps of the first
    epoch (0, 1, 2, 4, ...; ``early_checkpoints``), at every step 0, 1, ..., ``dense_steps``
    (for the first moments of training), every ``checkpoint_every`` epochs and after the
    last; each also refreshes ``out/resume.pt`` (optimiser, schedule and RNG
    state), from which ``resume=True`` continues exactly where the last checkpoint left
    off. ``on_step(step, loss)`` is called after every optimiser step and
    ``on_epoch(row)`` with each epoch's history row. On CPU a seed gives
    identical weights run after run for the same thread count (``threads`` sets it for the
    run; it and the other settings that change the last digits are recorded in ``run.json``
    under ``environment``); on CUDA, ``amp`` (default on) uses bfloat16 autocast.
    ``recipe`` (``sgd`` or ``adamw``) defaults to :func:`~tunnelscope.train.recipes.default_recipe`
    of the model (``adamw`` for ViTs and linear MLPs); the resolved recipe is recorded.
    """
    if threads is not None:
        if threads < 1:
            raise SpecError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    out = Path(out)
    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise SpecError("epochs, batch_size and checkpoint_every must be >= 1")
    if dense_steps < 0:
        raise ConfigError(f"dense_steps must be >= 0 (0: none), got {dense_steps}")
    dev = resolve_device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp and dev.type == "cuda")
    rec = Recipe.resolve(recipe or default_recipe(model), epochs, lr, weight_decay, schedule, warmup_epochs,
                         label_smoothing)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=data_root, download=download)
    if dataset.num_classes < 2:
        raise InsufficientDataError(f"{dataset.spec} has a single class; a classifier needs at least 2 "
                                    "(widen classes=)")
    config = {
        "model": model, "data": dataset.spec, "epochs": epochs, "batch_size": batch_size, "seed": seed,
        "recipe": asdict(rec), "checkpoint_every": checkpoint_every, "early_checkpoints": early_checkpoints,
        "dense_steps": dense_steps, "amp": use_amp, "drop_last": True,
    }
    created = not out.exists() or not any(out.iterdir())
    _prepare_out(out, resume, overwrite)
    try:

        torch.manual_seed(seed)
        net = build(model, dataset.num_classes, dataset.input_shape).to(dev)
        steps_per_epoch = len(dataset.train) // batch_size
        if steps_per_epoch == 0:
            raise SpecError(f"{len(dataset.train)} training samples is fewer than one batch of {batch_size}; "
                            "lower --batch-size")
        total_steps = epochs * steps_per_epoch
        optimizer = rec.optimizer(net)
        scheduler = rec.scheduler(optimizer, total_steps, steps_per_epoch)
        criterion = nn.CrossEntropyLoss(label_smoothing=rec.label_smoothing)
        early = set(early_steps(steps_per_epoch)) if early_checkpoints else set()

        step, history, checkpoints = 0, [], []
        sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        if resume:
            state = _load_resume(out, config)
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if dev.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], dev)
            step, history, checkpoints = state["step"], state["history"], [Path(p) for p in state["checkpoints"]]
            sums = state["epoch_sums"]

        run_info = {
            "config": config, "data": dataset.info, "model": net.describe(), "device": str(dev),
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "versions": package_versions(),
            "environment": environment(dev),
            "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if resume and state.get("environment") not in (None, run_info["environment"]):
            run_info["environment_before_resume"] = state["environment"]  # the steps before it ran under these

        def checkpoint() -> None:
            path = out / CKPT_DIR / checkpoint_name(step)
            meta = {"model_spec": model, "data_spec": dataset.spec, "num_classes": dataset.num_classes,
                    "input_shape": list(dataset.input_shape), "class_names": dataset.class_names,
                    "step": step, "epoch": step / steps_per_epoch, "seed": seed, "recipe": asdict(rec),
                    "environment": run_info["environment"]}
            save_checkpoint(path, net, meta)
            if str(path) not in map(str, checkpoints):
                checkpoints.append(path)
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            save_checkpoint(out / RESUME_FILE, net, meta, extra={
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                "step": step, "history": history, "checkpoints": [str(p) for p in checkpoints],
                "epoch_sums": dict(sums), "config": config, "environment": run_info["environment"],
            })
            write_json(out / RUN_FILE, {**run_info, "checkpoints": [str(p.relative_to(out)) for p in checkpoints]})

        if not resume and (early_checkpoints or dense_steps):
            checkpoint()  # step 0: the initialisation

        start_epoch = step // steps_per_epoch
        try:
            with progress_bar(progress) as bars:
                for epoch in range(start_epoch, epochs):
                    offset = step - epoch * steps_per_epoch
                    task = bars.add_task(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch,
                                         completed=offset, info="")
                    tic = time.perf_counter()
                    net.train()
                    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
                    correct = torch.zeros((), device=dev, dtype=torch.long)
                    seen = 0
                    batches = dataset.train.batches(batch_size, shuffle=True, generator=_shuffle_generator(seed, epoch),
                                                    device=dev, drop_last=True, start_batch=offset)
                    for x, y in batches:
                        loss, logits = train_step(net, x, y, optimizer, scheduler, criterion, dev.type, use_amp)
                        step += 1
                        loss_sum += loss.double() * len(y)
                        correct += (logits.argmax(1) == y).sum()
                        seen += len(y)
                        if on_step is not None:
                            on_step(step, loss.detach())
                        # a dense step that ends the epoch is saved after the epoch's history row
                        dense = step <= dense_steps and step < (epoch + 1) * steps_per_epoch
                        if (step in early and epoch == 0) or dense:
                            _fold(sums, loss_sum, correct, seen, tic)
                            loss_sum.zero_(), correct.zero_()
                            checkpoint()  # not counted in the epoch's seconds
                            seen, tic = 0, time.perf_counter()
                        if step % 20 == 0:
                            bars.update(task, completed=step - epoch * steps_per_epoch, info=f"loss {loss.item():.3f}")
                    _fold(sums, loss_sum, correct, seen, tic)
                    train_loss = sums["loss"] / max(1, sums["seen"])
                    if not torch.isfinite(torch.tensor(train_loss)):
                        raise TrainingDivergedError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); "
                                                    f"lower the learning rate (now {rec.lr})"
                                                    + ("" if resume else "; the new run was removed"))
                    test_loss, test_acc = evaluate(net, dataset.test, dev, use_amp)
                    history.append({
                        "epoch": epoch + 1, "step": step, "train_loss": train_loss,
                        "train_acc": sums["correct"] / max(1, sums["seen"]), "test_loss": test_loss,
                        "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"], "seconds": sums["seconds"],
                    })
                    sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
                    bars.update(task, completed=steps_per_epoch,
                                info=f"loss {train_loss:.3f} test acc {test_acc:.4f}")
                    _write_history(out, history)
                    if on_epoch is not None:
                        on_epoch(history[-1])
                    if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or step <= dense_steps:
                        checkpoint()
        except KeyboardInterrupt:
            last = checkpoints[-1] if checkpoints else None
            write_json(out / RUN_FILE, {**run_info, "status": "interrupted", "interrupted_at_step": step,
                                        "checkpoints": [str(p.relative_to(out)) for p in checkpoints]})
            if should_show(progress) or progress is None:
                console.print(f"interrupted at step {step}; last complete checkpoint: {last}; "
                              f"continue with --resume --out {out}", markup=False)
            raise

        final = history[-1]
        run_info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        final={k: final[k]
                               for k in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")},
                        final_checkpoint=str(checkpoints[-1].relative_to(out)),
                        checkpoints=[str(p.relative_to(out)) for p in checkpoints])
        write_json(out / RUN_FILE, run_info)
        return TrainResult(out, net.eval(), pd.DataFrame(history), checkpoints, final["test_acc"])
    except KeyboardInterrupt:
        raise  # the checkpoints so far stay, for --resume
    except BaseException:
        if not resume:  # a new run that failed leaves nothing behind
            _remove_run(out, created)
        raise


def _fold(sums: dict, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, tic: float) -> None:
    """Add a stretch of steps' device-side totals to the epoch's host-side sums."""
    sums["loss"] += float(loss_sum)
    sums["correct"] += int(correct)
    sums["seen"] += seen
    sums["seconds"] += time.perf_counter() - tic


@torch.inference_mode()
def evaluate(model: nn.Module, split: data_mod.Split, device: torch.device,
             amp: bool = False, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split, in eval mode."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in split.batches(batch_size, device=device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(split)
    return float(loss) / n, int(correct) / n


def _write_history(out: Path, history: list[dict]) -> None:
    write_text(out / HISTORY_FILE, pd.DataFrame(history).to_csv(index=False))


# settings added after runs were first saved: a run saved without one had its default
_CONFIG_DEFAULTS: dict[str, Any] = {"dense_steps": 0}


def _load_resume(out: Path, config: dict) -> dict[str, Any]:
    state = read_checkpoint(out / RESUME_FILE)
    saved = state.get("config")
    if saved is None or "optimizer" not in state:
        raise CheckpointError(f"{out / RESUME_FILE} holds no training state to resume from")
    saved = {**_CONFIG_DEFAULTS, **saved}
    diffs = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in config.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"cannot resume {out}: the run was started with other settings ({'; '.join(diffs)})")
    return state
