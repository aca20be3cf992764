"""The training loop: recipes, the checkpoint schedule, history, and exact resumption."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.progress import TaskID
from torch import nn

from .. import data as data_mod
from ..checkpoint import read_checkpoint, save_checkpoint
from ..device import resolve_device
from ..errors import (
    CheckpointError,
    ConfigError,
    InsufficientDataError,
    RunDirectoryError,
    TrainingDivergedError,
    TunnelscopeError,
)
from ..io import write_json, write_text
from ..models import build
from ..progress import console, progress_bar, should_show
from ..rundir import CKPT_DIR, HISTORY_FILE, RESUME_FILE, RUN_FILE, checkpoint_name, remove_stale_temps
from ..threads import torch_threads
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


def train_once(model: str, data: str | data_mod.Dataset, epochs: int, out: str | Path, **options: Any) -> Path:
    """Train into ``out`` once, for a command that may run again: a finished run there is kept,
    an interrupted one (``resume.pt``) resumed, anything else replaced by a new run. Returns the
    final checkpoint. ``options`` go to :func:`train`."""
    run = read_run(out)
    if run.get("status") == "finished":
        return Path(out) / run["final_checkpoint"]
    resume = (Path(out) / RESUME_FILE).is_file()
    return train(model, data, epochs, out, resume=resume, overwrite=not resume, **options).final_checkpoint


def _remove_run(out: Path, created: bool) -> None:
    """Delete what a failed new run wrote (and ``out`` itself when this run created it)."""
    for name in (RUN_FILE, HISTORY_FILE, RESUME_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    remove_stale_temps(out)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _keep_failed(out: Path, exc: BaseException) -> bool:
    """Whether a new run that failed keeps what it wrote: it does once a complete training state
    (``resume.pt``, written atomically with each checkpoint) exists and the failure is not the
    training's own (a full disk, memory, a killed data worker), so that ``--resume`` continues it;
    ``run.json`` then says it failed and why (when the disk still takes it)."""
    if isinstance(exc, (TrainingDivergedError, TunnelscopeError)) or not (out / RESUME_FILE).is_file():
        return False
    with contextlib.suppress(Exception):  # a full disk may refuse this too: the checkpoints stay regardless
        run = json.loads((out / RUN_FILE).read_text())
        write_json(out / RUN_FILE, {**run, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                    "resume_hint": f"--resume --out {out}"})
    return True


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    remove_stale_temps(out)
    if resume:
        if not (out / RESUME_FILE).is_file():
            raise CheckpointError(f"nothing to resume in {out}: no {RESUME_FILE}; drop --resume to start a new run")
        return
    if (out / RUN_FILE).exists() or (out / CKPT_DIR).exists():
        if not overwrite:
            raise RunDirectoryError(f"{out} already holds a training run; use --resume to continue it, "
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


def train(  # noqa: PLR0913 (a public facade: readable keywords)
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
    with torch_threads(threads):  # the caller's thread count is back when the run ends
        out = Path(out)
        if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
            raise ConfigError("epochs, batch_size and checkpoint_every must be >= 1")
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
            run = _set_up(out, model, dataset, rec, config, dev, use_amp, resume)
            if not resume and (early_checkpoints or dense_steps):
                _checkpoint(run)  # step 0: the initialisation
            _train_epochs(run, resume, progress, on_step, on_epoch)
            return _finish(run)
        except KeyboardInterrupt:
            raise  # the checkpoints so far stay, for --resume
        except BaseException as exc:
            if not resume and not _keep_failed(out, exc):  # a new run that failed early leaves nothing behind
                _remove_run(out, created)
            raise


def _empty_epoch_sums() -> dict:
    """The host-side sums of an epoch before its first step."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


@dataclass
class _Run:
    """One training run in progress: its settings, model and optimiser, and how far it got (the
    step, the history rows, the checkpoints written and the current epoch's sums)."""

    out: Path
    model_spec: str
    dataset: data_mod.Dataset
    rec: Recipe
    config: dict
    device: torch.device
    amp: bool
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    steps_per_epoch: int
    early: set[int]
    run_info: dict = field(default_factory=dict)
    step: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    sums: dict = field(default_factory=_empty_epoch_sums)

    def relative_checkpoints(self) -> list[str]:
        """The checkpoints written so far, relative to ``out``."""
        return [str(p.relative_to(self.out)) for p in self.checkpoints]


def epoch_steps(net: nn.Module, dataset: data_mod.Dataset, batch_size: int) -> int:
    """Training steps per epoch in full batches of ``batch_size``; refuses (:class:`ConfigError`)
    fewer training samples than one batch, and batches of one for a model with batch
    normalisation (its training statistics need two samples per channel)."""
    steps = len(dataset.train) // batch_size
    if steps == 0:
        raise ConfigError(f"{len(dataset.train)} training samples of {dataset.spec} is fewer than one batch of "
                          f"{batch_size}; lower --batch-size")
    if batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ConfigError("a batch of 1 cannot train a model with batch normalisation (it needs two samples per "
                          "channel); use --batch-size 2 or more")
    return steps


def _set_up(out: Path, model: str, dataset: data_mod.Dataset, rec: Recipe, config: dict, dev: torch.device,
            use_amp: bool, resume: bool) -> _Run:
    """Seed and build the model, optimiser and schedule; restore them when resuming; describe the run."""
    torch.manual_seed(config["seed"])
    net = build(model, dataset.num_classes, dataset.input_shape).to(dev)
    steps_per_epoch = epoch_steps(net, dataset, config["batch_size"])
    total_steps = config["epochs"] * steps_per_epoch
    optimizer = rec.optimizer(net)
    scheduler = rec.scheduler(optimizer, total_steps, steps_per_epoch)
    run = _Run(out, model, dataset, rec, config, dev, use_amp, net, optimizer, scheduler,
               criterion=nn.CrossEntropyLoss(label_smoothing=rec.label_smoothing), steps_per_epoch=steps_per_epoch,
               early=set(early_steps(steps_per_epoch)) if config["early_checkpoints"] else set())
    state = _restore(run) if resume else {}
    run.run_info = {
        "config": config, "data": dataset.info, "model": net.describe(), "device": str(dev),
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "versions": package_versions(),
        "environment": environment(dev),
        "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if resume and state.get("environment") not in (None, run.run_info["environment"]):
        run.run_info["environment_before_resume"] = state["environment"]  # the steps before it ran under these
    return run


def _restore(run: _Run) -> dict[str, Any]:
    """Load ``resume.pt`` into the run (weights, optimiser, schedule, RNG, progress); the state read."""
    state = _load_resume(run.out, run.config)
    run.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if run.device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"], run.device)
    run.step, run.history, run.checkpoints = state["step"], state["history"], [Path(p) for p in state["checkpoints"]]
    run.sums = state["epoch_sums"]
    return state


def _checkpoint(run: _Run) -> None:
    """Save the model at the current step, and refresh ``resume.pt`` and ``run.json`` to match."""
    path = run.out / CKPT_DIR / checkpoint_name(run.step)
    dataset = run.dataset
    meta = {"model_spec": run.model_spec, "data_spec": dataset.spec, "num_classes": dataset.num_classes,
            "input_shape": list(dataset.input_shape), "class_names": dataset.class_names,
            "step": run.step, "epoch": run.step / run.steps_per_epoch, "seed": run.config["seed"],
            "recipe": asdict(run.rec), "environment": run.run_info["environment"]}
    save_checkpoint(path, run.net, meta)
    if str(path) not in map(str, run.checkpoints):
        run.checkpoints.append(path)
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None}
    save_checkpoint(run.out / RESUME_FILE, run.net, meta, extra={
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "rng": rng,
        "step": run.step, "history": run.history, "checkpoints": [str(p) for p in run.checkpoints],
        "epoch_sums": dict(run.sums), "config": run.config, "environment": run.run_info["environment"],
    })
    write_json(run.out / RUN_FILE, {**run.run_info, "checkpoints": run.relative_checkpoints()})


def _train_epochs(run: _Run, resume: bool, progress: bool | None, on_step: Callable[[int, torch.Tensor], None] | None,
                  on_epoch: Callable[[dict], None] | None) -> None:
    """Train from the run's step to the last epoch; an interrupt is recorded in ``run.json`` and re-raised."""
    start_epoch, epochs = run.step // run.steps_per_epoch, run.config["epochs"]
    try:
        with progress_bar(progress) as bars:
            for epoch in range(start_epoch, epochs):
                offset = run.step - epoch * run.steps_per_epoch
                task = bars.add_task(f"epoch {epoch + 1}/{epochs}", total=run.steps_per_epoch,
                                     completed=offset, info="")
                _train_epoch_steps(run, epoch, offset, bars, task, on_step)
                _end_epoch(run, epoch, resume, bars, task, on_epoch)
    except KeyboardInterrupt:
        _record_interrupt(run, progress)
        raise


def _train_epoch_steps(run: _Run, epoch: int, offset: int, bars: Any, task: TaskID,
                       on_step: Callable[[int, torch.Tensor], None] | None) -> None:
    """The epoch's optimiser steps from batch ``offset`` on, with the early and dense checkpoints among them."""
    tic = time.perf_counter()
    run.net.train()
    loss_sum = torch.zeros((), device=run.device, dtype=torch.float64)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    batches = run.dataset.train.batches(run.config["batch_size"], shuffle=True,
                                        generator=_shuffle_generator(run.config["seed"], epoch), device=run.device,
                                        drop_last=True, start_batch=offset)
    for x, y in batches:
        loss, logits = train_step(run.net, x, y, run.optimizer, run.scheduler, run.criterion, run.device.type, run.amp)
        run.step += 1
        loss_sum += loss.double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(run.step, loss.detach())
        # a dense step that ends the epoch is saved after the epoch's history row
        dense = run.step <= run.config["dense_steps"] and run.step < (epoch + 1) * run.steps_per_epoch
        if (run.step in run.early and epoch == 0) or dense:
            _fold(run.sums, loss_sum, correct, seen, tic)
            loss_sum.zero_(), correct.zero_()
            _checkpoint(run)  # not counted in the epoch's seconds
            seen, tic = 0, time.perf_counter()
        if run.step % 20 == 0:
            bars.update(task, completed=run.step - epoch * run.steps_per_epoch, info=f"loss {loss.item():.3f}")
    _fold(run.sums, loss_sum, correct, seen, tic)


def _end_epoch(run: _Run, epoch: int, resume: bool, bars: Any, task: TaskID,
               on_epoch: Callable[[dict], None] | None) -> None:
    """Record the finished epoch's history row and checkpoint it when the schedule says so."""
    row = _evaluate_epoch(run, epoch, resume)
    run.history.append(row)
    run.sums = _empty_epoch_sums()
    bars.update(task, completed=run.steps_per_epoch,
                info=f"loss {row['train_loss']:.3f} test acc {row['test_acc']:.4f}")
    _write_history(run.out, run.history)
    if on_epoch is not None:
        on_epoch(run.history[-1])
    config = run.config
    if ((epoch + 1) % config["checkpoint_every"] == 0 or epoch + 1 == config["epochs"]
            or run.step <= config["dense_steps"]):
        _checkpoint(run)


def _evaluate_epoch(run: _Run, epoch: int, resume: bool) -> dict:
    """The epoch's history row: its training loss and accuracy, then the test split's; raises when training diverged."""
    sums = run.sums
    train_loss = sums["loss"] / max(1, sums["seen"])
    if not torch.isfinite(torch.tensor(train_loss)):
        raise TrainingDivergedError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); "
                                    f"lower the learning rate (now {run.rec.lr})"
                                    + ("" if resume else "; the new run was removed"))
    test_loss, test_acc = evaluate(run.net, run.dataset.test, run.device, run.amp)
    return {
        "epoch": epoch + 1, "step": run.step, "train_loss": train_loss,
        "train_acc": sums["correct"] / max(1, sums["seen"]), "test_loss": test_loss,
        "test_acc": test_acc, "lr": run.optimizer.param_groups[0]["lr"], "seconds": sums["seconds"],
    }


RESUME_HINT: ContextVar[str | None] = ContextVar("resume_hint", default=None)


@contextlib.contextmanager
def resume_hint(text: str) -> Iterator[None]:
    """Inside the block, an interrupted run tells the user ``text`` instead of the training
    command's ``--resume`` (for the commands that train without that option: the demo, continual)."""
    token = RESUME_HINT.set(text)
    try:
        yield
    finally:
        RESUME_HINT.reset(token)


def _record_interrupt(run: _Run, progress: bool | None) -> None:
    """Mark the run interrupted in ``run.json`` and say (when bars may show) how to continue it."""
    last = run.checkpoints[-1] if run.checkpoints else None
    write_json(run.out / RUN_FILE, {**run.run_info, "status": "interrupted", "interrupted_at_step": run.step,
                                    "checkpoints": run.relative_checkpoints()})
    if should_show(progress) or progress is None:
        # never wrapped: the path and the options must survive being copied from a narrow terminal
        console.print(f"interrupted at step {run.step}; last complete checkpoint: {last}", markup=False,
                      soft_wrap=True)
        hint = RESUME_HINT.get() or f"continue with the same command plus: --resume --out {run.out}"
        console.print(hint, markup=False, soft_wrap=True)


def _finish(run: _Run) -> TrainResult:
    """Mark the run finished in ``run.json`` with its final row and checkpoint; the result."""
    final = run.history[-1]
    run.run_info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        final={k: final[k]
                               for k in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")},
                        final_checkpoint=str(run.checkpoints[-1].relative_to(run.out)),
                        checkpoints=run.relative_checkpoints())
    write_json(run.out / RUN_FILE, run.run_info)
    return TrainResult(run.out, run.net.eval(), pd.DataFrame(run.history), run.checkpoints, final["test_acc"])


def _fold(sums: dict, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, tic: float) -> None:
    """Add a stretch of steps' device-side totals to the epoch's host-side sums."""
    sums["loss"] += float(loss_sum)
    sums["correct"] += int(correct)
    sums["seen"] += seen
    sums["seconds"] += time.perf_counter() - tic


def _eval_logits(model: nn.Module, split: data_mod.Split, device: torch.device, amp: bool,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, labels)`` of each batch of ``split`` in eval mode (the mode put back after)."""
    was_training = model.training
    model.eval()
    try:
        for x, y in split.batches(batch_size, device=device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                yield model(x).float(), y
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate(model: nn.Module, split: data_mod.Split, device: torch.device,
             amp: bool = False, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split, in eval mode."""
    loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for logits, y in _eval_logits(model, split, device, amp, batch_size):
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = len(split)
    return float(loss) / n, int(correct) / n


@torch.inference_mode()
def correct_per_sample(model: nn.Module, split: data_mod.Split, device: torch.device, amp: bool = False,
                       batch_size: int = 1024) -> torch.Tensor:
    """Whether ``model`` classifies each sample of ``split`` right (bool, on the CPU, in the
    split's order), in eval mode: :func:`evaluate`'s accuracy is its mean."""
    return torch.cat([(logits.argmax(1) == y).cpu() for logits, y in _eval_logits(model, split, device, amp,
                                                                                   batch_size)])


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
