"""The continual-learning experiment of Masarczyk et al. 2023 (§5), repeated by Harun et al. 2024.

A model is trained on task 1 (M1), then its weights are trained on task 2 (M2); both tasks
are class splits of one dataset with the same number of classes. By default each task has
its own classifier head (the papers' protocol): task 2 starts from M1's weights with a fresh
head, M1's head is kept, and a model is scored on task t through task t's head. With
``heads="shared"`` one head serves both tasks and task 2 trains on in M1's. Each model is cut
at one probe point into an extractor E (every module that has finished running when that
point's output is ready) and a tunnel T (the rest, the head included), and the halves are
swapped: ``E_i+T_j`` takes E's weights from M_i and T's from M_j (:mod:`.split`; on state
dicts of one architecture, no model surgery).

Reported: test accuracy on both tasks of E1+T1, E1+T2, E2+T1 and E2+T2; of E2+T1 after its
tunnel is fine-tuned on task 1 with E2 frozen; and of a linear probe on E2's features at the
split point (what the extractor still knows without any tunnel). Per layer: task-1 probe
accuracy of M1 and M2 and their difference (forgetting). See docs/continual.md;
:mod:`.continual_depth` repeats the experiment over several depths.

``tunnelscope.train`` cannot start from given weights, nor freeze a part of the model, so
task 2 and the fine-tuning run in :func:`fit`, a loop built from the same public pieces
(:class:`~tunnelscope.train.Recipe`, :func:`~tunnelscope.train.evaluate`, checkpoints) that
reproduces ``train``'s steps exactly (tested) from any starting weights.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..checkpoint import save_checkpoint
from ..device import resolve_device
from ..engine.probing import IdReuse, probe_statistics
from ..engine.settings import AnalysisSettings
from ..errors import ConfigError, RunDirectoryError, TrainingDivergedError
from ..io import write_json, write_text
from ..models import build, check_spec, probe_points
from ..models.init import seeded
from ..probes import ProbeConfig
from ..progress import progress_bar
from ..results import Results
from ..rundir import CKPT_DIR, HISTORY_FILE, RUN_FILE, checkpoint_name, claim
from ..summary import TUNNEL_START
from ..train import Recipe, evaluate
from ..train import train as train_model
from ..train.loop import correct_per_sample, epoch_steps, resume_hint, train_step
from ..versions import environment, package_versions
from .base import ExperimentResult
from .split import COMBINATIONS, Head, Partition, classifier_head, combine, partition, swap_states, with_head

SWAPS_FILE, FORGETTING_FILE, FIGURE_NAME = "swaps.csv", "forgetting.csv", "continual"
M1_DIR, M2_DIR = "m1", "m2"
FINETUNED, LINEAR_HEAD = "E2+T1 fine-tuned", "E2 + linear head"
SWAP_COLUMNS = ("task1_acc", "task2_acc")
FORGETTING_COLUMNS = ("layer", "point", "acc_M1", "acc_M2", "forgetting")
# what an earlier experiment in the same ``out`` leaves before its config.json
PARTIAL_FILES = (SWAPS_FILE, FORGETTING_FILE, f"{M1_DIR}/{RUN_FILE}", f"{M2_DIR}/{RUN_FILE}", f"{M2_DIR}/{CKPT_DIR}")
HEAD2_SEED_OFFSET = 0x7461736B32  # task 2's head is initialised under seed + this ("task2")
HEADS = ("per-task", "shared")  # one classifier head per task (the papers' protocol), or one for both
TRAIN_OPTIONS = ("recipe", "lr", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "batch_size", "amp")


# ----------------------------------------------------------------------------- training
def _train_epoch(net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module, dev: torch.device,
                 amp: bool, on_step: Callable[[int], None]) -> tuple[float, int]:
    """One pass of optimiser steps over ``batches``: ``(sum of sample losses, correct predictions)``."""
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    for step, (x, y) in enumerate(batches, 1):
        loss, logits = train_step(net, x, y, optimizer, scheduler, criterion, dev.type, amp)
        loss_sum += loss.double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        on_step(step)
    return float(loss_sum), int(correct)


def fit(net: nn.Module, dataset: data_mod.Dataset, epochs: int, recipe: Recipe, *, batch_size: int = 128,  # noqa: PLR0913 (train()'s knobs, for one task)
        seed: int = 0, device: torch.device | None = None, amp: bool = False,
        frozen_modules: Sequence[nn.Module] = (), progress: bool | None = None, label: str = "") -> list[dict]:
    """Train ``net`` in place from its current weights, with ``train``'s steps: the recipe's
    optimiser and per-step schedule over ``epochs``, seeded shuffles (``seed``), full batches
    only. Parameters with ``requires_grad=False`` get no gradient and so no update (weight decay
    included); ``frozen_modules`` stay in eval mode (their batch-norm statistics do not move).
    Returns one history row per epoch, as ``history.csv``'s."""
    dev = device or next(net.parameters()).device
    steps_per_epoch = epoch_steps(net, dataset, batch_size)
    optimizer = recipe.optimizer(net)
    scheduler = recipe.scheduler(optimizer, epochs * steps_per_epoch, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    seen = steps_per_epoch * batch_size
    history = []
    with progress_bar(progress) as bars:
        for epoch in range(epochs):
            task = bars.add_task(f"{label} epoch {epoch + 1}/{epochs}".strip(), total=steps_per_epoch, info="")
            net.train()
            for module in frozen_modules:
                module.eval()
            tic = time.perf_counter()
            shuffle = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # train's seeding
            batches = dataset.train.batches(batch_size, shuffle=True, generator=shuffle, device=dev, drop_last=True)
            def show(step: int, task: Any = task) -> None:
                if step % 20 == 0:
                    bars.update(task, completed=step)

            loss_sum, correct = _train_epoch(net, batches, optimizer, scheduler, criterion, dev, amp, show)
            train_loss = loss_sum / seen
            if not math.isfinite(train_loss):
                raise TrainingDivergedError(f"{label or 'training'} diverged in epoch {epoch + 1} "
                                            f"(loss {train_loss}); lower the learning rate (now {recipe.lr})")
            test_loss, test_acc = evaluate(net, dataset.test, dev, amp)
            history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "train_loss": train_loss,
                            "train_acc": correct / seen, "test_loss": test_loss, "test_acc": test_acc,
                            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - tic})
            bars.update(task, completed=steps_per_epoch, info=f"loss {train_loss:.3f} test acc {test_acc:.4f}")
    net.eval()
    return history


def fine_tune_tunnel(net: nn.Module, split: Partition, dataset: data_mod.Dataset, epochs: int, recipe: Recipe,
                     **fit_options: Any) -> list[dict]:
    """Train only ``net``'s tunnel on ``dataset`` (in place): the extractor's parameters are
    frozen and its modules kept in eval mode, so every extractor tensor stays as it was."""
    frozen = set(split.extractor)
    for name, parameter in net.named_parameters(remove_duplicate=False):
        if name in frozen:
            parameter.requires_grad_(False)
    modules = dict(net.named_modules())
    return fit(net, dataset, epochs, recipe, frozen_modules=[modules[n] for n in split.extractor_modules],
               **fit_options)


# ----------------------------------------------------------------------------- the result
@dataclass
class ContinualResult(ExperimentResult):
    """One continual-learning experiment.

    ``swaps``: one row per combination (index ``combination``), columns ``task1_acc`` and
    ``task2_acc`` (test accuracy; NaN where a number does not apply). ``forgetting``: one row
    per probe point, columns ``layer, point, acc_M1, acc_M2, forgetting`` (task-1 linear-probe
    test accuracy of M1 and M2 and ``acc_M1 - acc_M2``). The split point is probe point
    ``split_layer`` (1-based), ``split_point``, chosen by ``split_source`` (``split_at`` or
    ``tunnel_start``) for ``split_reason``. ``config`` holds everything that changes a number,
    the split (``config["split"]``) and both checkpoints (``config["checkpoints"]``) included,
    so :meth:`load` rebuilds the result; ``partition`` and ``task1_correct`` (per-sample task-1
    correctness of M1 and M2, each through the network's head for task 1) are only known to the
    run that computed them.
    """

    kind: ClassVar[str] = "continual"
    table_files: ClassVar[dict[str, str]] = {"swaps": SWAPS_FILE, "forgetting": FORGETTING_FILE}

    swaps: pd.DataFrame
    forgetting: pd.DataFrame
    split_layer: int
    split_point: str
    split_source: str
    split_reason: str
    m1_checkpoint: Path
    m2_checkpoint: Path
    config: dict[str, Any] = field(default_factory=dict)
    partition: Partition | None = None
    task1_correct: np.ndarray | None = None  # (M, 2): task-1 test correctness of M1 and M2, per sample

    def tables(self) -> dict[str, pd.DataFrame]:
        """``swaps`` (flat: its index as the first column, ``combination``) and ``forgetting``."""
        return {"swaps": self.swaps.rename_axis("combination").reset_index(), "forgetting": self.forgetting}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> ContinualResult:
        """The result whose tables and config were saved (``partition`` is not saved: None)."""
        missing = [name for name in cls.table_files if name not in tables]
        if missing:
            raise RunDirectoryError(f"a continual experiment lacks {', '.join(cls.table_files[n] for n in missing)}; "
                                    "run it again")
        split, checkpoints = config["split"], config["checkpoints"]
        swaps = tables["swaps"].set_index("combination")
        return cls(swaps, tables["forgetting"], int(split["layer"]), str(split["point"]), str(split["source"]),
                   str(split["reason"]), Path(checkpoints["M1"]), Path(checkpoints["M2"]), config)


# ----------------------------------------------------------------------------- the experiment
def _load_tasks(task1: str, task2: str, data_root: str | Path | None) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    """Both tasks, refused unless they have the same number of classes and input shape."""
    first, second = data_mod.load(task1, root=data_root), data_mod.load(task2, root=data_root)
    same = ("base", "modifiers")
    if [first.info.get(k) for k in same] == [second.info.get(k) for k in same]:
        raise ConfigError(f"task 1 and task 2 are the same data ({task1!r}): there is no second task to forget the "
                          "first on; give two class splits, e.g. classes=0-4 and classes=5-9")
    if first.num_classes != second.num_classes:
        raise ConfigError(f"task 1 {task1!r} has {first.num_classes} classes but task 2 {task2!r} has "
                          f"{second.num_classes}; give both tasks the same number of classes (classes=): the "
                          "swapped tunnels and heads must fit both")
    if tuple(first.input_shape) != tuple(second.input_shape):
        raise ConfigError(f"task 1 {task1!r} has inputs {tuple(first.input_shape)} but task 2 {task2!r} has "
                          f"{tuple(second.input_shape)}; use two class splits of one dataset (or size=/channels=)")
    return first, second


@dataclass
class _Setup:
    """What every stage of one experiment shares."""

    model: str
    tasks: tuple[data_mod.Dataset, data_mod.Dataset]
    out: Path
    epochs: int
    finetune_epochs: int
    recipe: Recipe
    finetune_recipe: Recipe
    recipe_args: dict[str, Any]
    batch_size: int
    seed: int
    device: torch.device
    amp: bool
    progress: bool | None
    head: Head | None = None  # per-task heads: the head each task has its own copy of; None: one shared head

    def fit_options(self) -> dict[str, Any]:
        """The options :func:`fit` takes from the setup."""
        return {"batch_size": self.batch_size, "seed": self.seed, "device": self.device, "amp": self.amp,
                "progress": self.progress}

    def net(self) -> nn.Module:
        """A freshly built model on the device."""
        first = self.tasks[0]
        return build(self.model, first.num_classes, first.input_shape).to(self.device)

    def fresh_head(self) -> dict[str, Tensor]:
        """Task 2's starting head (per-task heads): a model built under its own seed
        (``seed + HEAD2_SEED_OFFSET``), so M1's head is not its starting point."""
        with seeded(self.seed + HEAD2_SEED_OFFSET):
            return self.net().state_dict()


def training_recipes(epochs: int, finetune_epochs: int,
                     options: dict[str, Any]) -> tuple[Recipe, Recipe, dict, int, Any]:
    """``(recipe, fine-tuning recipe, recipe arguments, batch size, amp)`` from checked training
    options (``TRAIN_OPTIONS``)."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; valid: {', '.join(TRAIN_OPTIONS)}")
    if epochs < 1 or finetune_epochs < 0:
        raise ConfigError(f"epochs must be >= 1 and finetune_epochs >= 0, got {epochs} and {finetune_epochs}")
    batch_size = int(options.get("batch_size", 128))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    args = {k: options.get(k) for k in ("lr", "weight_decay", "schedule", "warmup_epochs", "label_smoothing")}
    name = options.get("recipe", "sgd")
    return (Recipe.resolve(name, epochs, **args), Recipe.resolve(name, max(1, finetune_epochs), **args),
            {"recipe": name, **args}, batch_size, options.get("amp"))


def _claim_out(out: Path, overwrite: bool) -> None:
    """Claim ``out`` for a continual experiment (:func:`~tunnelscope.rundir.claim`): refused when it
    holds an earlier one, finished or partial (its tables, or M1's or M2's training run), unless
    ``overwrite``; then clear what this module wrote there (train clears its own run in ``m1``)."""
    claim(out, ContinualResult.kind, overwrite, files=PARTIAL_FILES)
    for name in (SWAPS_FILE, FORGETTING_FILE, f"{FIGURE_NAME}.png", f"{FIGURE_NAME}.svg"):
        (out / name).unlink(missing_ok=True)
    for name in (RUN_FILE, HISTORY_FILE):
        (out / M2_DIR / name).unlink(missing_ok=True)
    shutil.rmtree(out / M2_DIR / CKPT_DIR, ignore_errors=True)


def _probe_curve(results: Results) -> pd.DataFrame:
    """``layer, point, acc`` of the ID test probes, in layer order."""
    t = results.table
    rows = t[(t.metric == "probe_acc") & (t.split == "test") & (t.dataset == results.id_dataset)
             & t.reference.isna()]
    return rows.sort_values("layer")[["layer", "point", "value"]].rename(columns={"value": "acc"}).reset_index(
        drop=True)


def _unconverged(results: Results) -> list[str]:
    return list(results.config.get("datasets", {}).get("id", {}).get("unconverged", []))


def _choose_split(split_at: int | None, m1_probes: Results) -> tuple[int, str, str]:
    """``(layer, source, reason)``: ``split_at`` when given, else M1's tunnel start on task 1."""
    start = m1_probes.summary.get(TUNNEL_START)
    if split_at is not None:
        return split_at, "split_at", f"given (split_at={split_at}); M1's tunnel start on task 1 is {start}"
    if start is None:
        raise ConfigError("M1's tunnel start on task 1 is undefined (a probe diverged); give split_at explicitly")
    return int(start), "tunnel_start", (f"M1's tunnel start on task 1 ({TUNNEL_START}): the first probe point whose "
                                        "task-1 probe accuracy is within 95% of the last point's")


def _train_m1(setup: _Setup, overwrite: bool):
    """M1: ``tunnelscope.train`` on task 1 into ``out/m1`` (final checkpoint only)."""
    with resume_hint(f"continual does not resume: run the same command again with --overwrite (overwrite=True), "
                     f"which replaces the partial experiment in {setup.out}"):
        return train_model(setup.model, setup.tasks[0], setup.epochs, setup.out / M1_DIR,
                           batch_size=setup.batch_size, seed=setup.seed, checkpoint_every=setup.epochs,
                           early_checkpoints=False, device=setup.device, amp=setup.amp, overwrite=overwrite,
                           progress=setup.progress, **setup.recipe_args)


def _continue_on_task2(setup: _Setup, m1: nn.Module, m1_ckpt: Path,
                       m1_steps: int) -> tuple[nn.Module, Path, list[dict]]:
    """M2: M1's weights (with per-task heads, a fresh head) trained on task 2 with a fresh
    optimiser; writes ``out/m2`` (final checkpoint, history.csv, run.json)."""
    task2, folder, dev = setup.tasks[1], setup.out / M2_DIR, setup.device
    net = setup.net()
    net.load_state_dict(with_head(m1.state_dict(), setup.fresh_head(), setup.head))
    history = fit(net, task2, setup.epochs, setup.recipe, label="task 2", **setup.fit_options())
    steps = history[-1]["step"]
    path = folder / CKPT_DIR / checkpoint_name(m1_steps + steps)
    meta = {"model_spec": setup.model, "data_spec": task2.spec, "num_classes": task2.num_classes,
            "input_shape": list(task2.input_shape), "class_names": task2.class_names, "step": m1_steps + steps,
            "task2_steps": steps, "epoch": float(setup.epochs), "heads": _heads_name(setup), "seed": setup.seed,
            "recipe": asdict(setup.recipe),
            "continued_from": str(m1_ckpt), "environment": environment(dev)}
    save_checkpoint(path, net, meta)
    write_text(folder / HISTORY_FILE, pd.DataFrame(history).to_csv(index=False))
    final = {k: history[-1][k] for k in ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")}
    write_json(folder / RUN_FILE, {
        "config": {"model": setup.model, "data": task2.spec, "epochs": setup.epochs, "batch_size": setup.batch_size,
                   "seed": setup.seed, "recipe": asdict(setup.recipe), "amp": setup.amp, "drop_last": True,
                   "init": str(m1_ckpt)},
        "data": task2.info, "device": str(dev), "versions": package_versions(), "environment": environment(dev),
        "status": "finished", "final": final, "final_checkpoint": str(path.relative_to(folder)),
        "checkpoints": [str(path.relative_to(folder))]})
    return net, path, history


def _forgetting_table(m1_probes: Results, m2_probes: Results) -> pd.DataFrame:
    """Per probe point: task-1 probe accuracy of M1 and M2 and their difference."""
    curve1, curve2 = _probe_curve(m1_probes), _probe_curve(m2_probes)
    table = pd.DataFrame({"layer": curve1["layer"].astype(int), "point": curve1["point"],
                          "acc_M1": curve1["acc"], "acc_M2": curve2["acc"]})
    table["forgetting"] = table["acc_M1"] - table["acc_M2"]
    return table[list(FORGETTING_COLUMNS)]


def _correct(setup: _Setup, net: nn.Module, state: Mapping[str, Tensor],
             heads: tuple[Mapping[str, Tensor], Mapping[str, Tensor]]) -> list[Tensor]:
    """Per-sample test correctness of ``state`` on each task; with per-task heads, task t reads
    its own head from ``heads[t]`` (M1's for task 1, M2's for task 2), else ``state``'s head
    serves both."""
    out = []
    for task, head_state in zip(setup.tasks, heads):
        net.load_state_dict(with_head(state, head_state, setup.head))
        out.append(correct_per_sample(net, task.test, setup.device, setup.amp))
    return out


def _accuracy(correct: Tensor) -> float:
    return int(correct.sum()) / len(correct)


def _swap_rows(setup: _Setup, m1: nn.Module, m2: nn.Module,
               split: Partition) -> tuple[dict[str, list[float]], list[dict], np.ndarray]:
    """Both tasks' test accuracy of the four combinations and of E2+T1 with its tunnel fine-tuned
    on task 1 (when ``finetune_epochs``); the fine-tuning history; and the per-sample task-1
    correctness of M1 and M2 (``(M, 2)``: E1+T1 and E2+T2)."""
    net = setup.net()
    m1_state, m2_state = m1.state_dict(), m2.state_dict()
    states = swap_states(m1_state, m2_state, split)
    correct = {name: _correct(setup, net, state, (m1_state, m2_state)) for name, state in states.items()}
    rows = {name: [_accuracy(c) for c in per_task] for name, per_task in correct.items()}
    task1 = torch.stack([correct["E1+T1"][0], correct["E2+T2"][0]], 1).numpy()
    if not setup.finetune_epochs:
        return rows, [], task1
    net.load_state_dict(states["E2+T1"])
    history = fine_tune_tunnel(net, split, setup.tasks[0], setup.finetune_epochs, setup.finetune_recipe,
                               label="fine-tune E2+T1", **setup.fit_options())
    tuned = {key: value.detach().clone() for key, value in net.state_dict().items()}
    rows[FINETUNED] = [_accuracy(c) for c in _correct(setup, net, tuned, (tuned, m2_state))]
    return rows, history, task1


def continual(model: str, task1: str, task2: str, epochs: int = 10, split_at: int | None = None,  # noqa: PLR0913 (a public facade: readable keywords)
              finetune_epochs: int = 5, out: str | Path = "runs/continual", points: str | Sequence[str] = "blocks",
              seed: int = 0, device: str | torch.device = "auto", progress: bool | None = None, *,
              probe: ProbeConfig | None = None, max_train: int | None = 10_000, max_test: int | None = 10_000,
              data_root: str | Path | None = None, overwrite: bool = False, heads: str = "per-task",
              **train_options: Any) -> ContinualResult:
    """Train ``model`` on ``task1`` (M1), continue on ``task2`` (M2), split both at one probe
    point into extractor and tunnel, swap the halves, and measure (see the module docstring).

    ``split_at`` is a 1-based probe-point index (layer 1 = the first point of ``points``);
    by default M1's tunnel start on task 1. ``finetune_epochs`` (0: skip) trains E2+T1's
    tunnel on task 1 with E2 frozen. ``heads``: ``per-task`` (the papers' protocol: task 2
    trains a fresh head, M1's head is kept for task 1, and each task is scored through its own
    head) or ``shared`` (task 2 trains on in M1's head, which then serves both tasks).
    ``train_options``: ``recipe``, ``lr``, ``weight_decay``,
    ``schedule``, ``warmup_epochs``, ``label_smoothing``, ``batch_size``, ``amp``, shared by
    both tasks and the fine-tuning (each with its own schedule). Probes follow ``probe``
    (default ``lbfgs``), on at most ``max_train`` / ``max_test`` samples per split (seeded
    subsets, as ``analyze``'s ``max_samples``; ``None``: all). Writes M1's training run to
    ``out/m1``, M2's to ``out/m2``, then the tables, the figure and ``config.json``
    (:meth:`ContinualResult.save`). Raises :class:`ConfigError` when the tasks differ in class
    count or input shape, ``split_at`` is out of range, or per-task heads are asked of a model
    whose last weighted module does not output the logits; nothing is trained before these checks.
    """
    tic = time.perf_counter()
    recipe, finetune_recipe, recipe_args, batch_size, amp_option = training_recipes(epochs, finetune_epochs,
                                                                                    train_options)
    tasks = _load_tasks(task1, task2, data_root)
    point_names, head = check_model(model, tasks[0], points, heads)
    if split_at is not None and not 1 <= split_at <= len(point_names):
        raise ConfigError(f"split_at={split_at} is out of range: {model} has {len(point_names)} probe points "
                          f"({points!r}), so give 1..{len(point_names)}")
    dev = resolve_device(device)
    amp = (dev.type == "cuda") if amp_option is None else bool(amp_option and dev.type == "cuda")
    probing = AnalysisSettings(points=points, probe=probe or ProbeConfig(seed=seed), device=dev, max_samples=None,
                               max_train=max_train, max_test=max_test, seed=seed, progress=progress,
                               include_input=False, resamples=0)
    setup = _Setup(model, tasks, Path(out), epochs, finetune_epochs, recipe, finetune_recipe, recipe_args, batch_size,
                   seed, dev, amp, progress)
    setup.head = head
    _claim_out(setup.out, overwrite)

    run1 = _train_m1(setup, overwrite)
    m1, m1_ckpt = run1.model, run1.final_checkpoint
    m2, m2_ckpt, history2 = _continue_on_task2(setup, m1, m1_ckpt, int(run1.history["step"].iloc[-1]))
    m1_probes, m2_probes = (probe_statistics(m, tasks[0], (), probing, reuse=IdReuse(id_ncc=False)) for m in (m1, m2))
    forgetting = _forgetting_table(m1_probes, m2_probes)
    split_layer, split_source, split_reason = _choose_split(split_at, m1_probes)
    split = partition(m1, point_names[split_layer - 1], _example(setup))
    rows, finetune_history, task1_correct = _swap_rows(setup, m1, m2, split)
    head2 = probe_statistics(m2, tasks[1], (), probing.replace(points=[split.split_point]), reuse=IdReuse(id_ncc=False))
    rows[LINEAR_HEAD] = [float(forgetting["acc_M2"].iloc[split_layer - 1]), float(_probe_curve(head2)["acc"].iloc[0])]
    swaps = pd.DataFrame.from_dict(rows, orient="index", columns=list(SWAP_COLUMNS)).rename_axis("combination")

    chosen = (split_layer, split_source, split_reason, m1_probes.summary.get(TUNNEL_START))
    config = _config(setup, point_names, split, chosen, points) | {
        "probe": dict(vars(probing.probe)), "probe_samples": {"max_train": max_train, "max_test": max_test},
        "probe_unconverged": {"M1 task 1": _unconverged(m1_probes), "M2 task 1": _unconverged(m2_probes),
                              "M2 task 2": _unconverged(head2)},
        "checkpoints": {"M1": str(m1_ckpt), "M2": str(m2_ckpt)},
        "model_accuracy": {"M1 task 1": float(run1.test_accuracy), "M2 task 2": float(history2[-1]["test_acc"]),
                           "M2 task 1": float(rows["E2+T2"][0])},
        "finetune_history": finetune_history, "seconds": time.perf_counter() - tic}
    result = ContinualResult(swaps, forgetting, split_layer, split.split_point, split_source, split_reason, m1_ckpt,
                             m2_ckpt, config, split, task1_correct)
    result.save(setup.out, overwrite=overwrite)
    return result


def _example(setup: _Setup) -> Tensor:
    """Two task-1 test images: the batch a forward pass orders the modules by."""
    return next(setup.tasks[0].test.batches(2, device=setup.device))[0]


def _heads_name(setup: _Setup) -> str:
    return "shared" if setup.head is None else "per-task"


def check_model(model: str, task: data_mod.Dataset, points: str | Sequence[str],
                heads: str) -> tuple[list[str], Head | None]:
    """``model``'s probe points for ``task`` and, with per-task ``heads``, its classifier head,
    checked on an untrained copy before anything is trained: the spec is valid, ``points``
    match, and (per-task) the last weighted module outputs the logits and every probe point
    comes before it (:class:`ConfigError` or :class:`SpecError` otherwise)."""
    if heads not in HEADS:
        raise ConfigError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    check_spec(model)
    net = build(model, task.num_classes, task.input_shape)
    point_names = probe_points(net, points)
    if heads == "shared":
        return point_names, None
    example = next(task.test.batches(2))[0]
    head = classifier_head(net, example, task.num_classes)
    last = partition(net, point_names[-1], example)
    if set(head.keys) & set(last.extractor):
        raise ConfigError(f"the probe point {point_names[-1]!r} is or follows the classifier head {head.name!r}: "
                          "with per-task heads the head belongs to the tunnel; leave it out of the points (or use "
                          "heads='shared')")
    return point_names, head


def _config(setup: _Setup, point_names: list[str], split: Partition, chosen: tuple[int, str, str, int | None],
            points: str | Sequence[str]) -> dict[str, Any]:
    """The settings of an experiment that change a number (the caller adds the measured parts);
    ``chosen`` is the split's ``(layer, source, reason, M1's tunnel start)``."""
    first, second = setup.tasks
    layer, source, reason, start = chosen
    return {
        "experiment": "continual learning: extractor/tunnel swaps (Masarczyk et al. 2023, Harun et al. 2024)",
        "model": setup.model, "task1": first.spec, "task2": second.spec,
        "tasks": {"task1": first.info, "task2": second.info}, "classes": first.num_classes,
        "input_shape": list(first.input_shape), "epochs": setup.epochs, "finetune_epochs": setup.finetune_epochs,
        "seed": setup.seed, "batch_size": setup.batch_size, "amp": setup.amp, "drop_last": True,
        "recipe": asdict(setup.recipe),
        "finetune_recipe": asdict(setup.finetune_recipe) if setup.finetune_epochs else None,
        "task2_init": "M1's final weights, a fresh optimiser and schedule",
        "heads": _heads_name(setup),
        "head": None if setup.head is None else {
            "module": setup.head.name, "keys": list(setup.head.keys),
            "task2_init": f"fresh, as a model built under seed {setup.seed} + {HEAD2_SEED_OFFSET} initialises it",
            "scoring": "each task through its own head: task 1 through M1's, task 2 through M2's"},
        "finetune": ("E2+T1 with every extractor tensor frozen (extractor modules in eval mode), tunnel trained "
                     "on task 1") if setup.finetune_epochs else None,
        "linear_head": "linear probes on M2's features at the split point: task 1 (the forgetting table's acc_M2 "
                       "there) and task 2, each trained on that task's training split",
        "points": points if isinstance(points, str) else list(points), "probe_points": point_names,
        "split": {"layer": layer, "point": split.split_point, "source": source, "reason": reason,
                  "tunnel_start_M1": start, **split.describe()},
        "device": str(setup.device), "environment": environment(setup.device), "versions": package_versions(),
    }


__all__ = ["COMBINATIONS", "HEADS", "ContinualResult", "Head", "Partition", "check_model", "classifier_head", "combine",
           "continual", "training_recipes", "fine_tune_tunnel", "fit", "partition", "swap_states"]
