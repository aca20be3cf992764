"""Which examples and classes several models get wrong (Nguyen, Raghu & Kornblith 2021, §6).

Models of similar accuracy, such as wide and deep networks or seeds of one architecture,
can still differ in *which* examples and classes they get wrong. :func:`compare_predictions`
runs each model once over the same seeded samples of one split, keeps every predicted class,
and returns an :class:`AgreementResult` whose tables answer:

- ``models``: accuracy of each model with a 95% Wilson score interval;
- ``pairs``: per model pair, prediction agreement, error overlap, Cohen's kappa of
  correctness and an exact McNemar test;
- ``classes``: accuracy per class and model;
- ``group_classes`` / ``group_pairs``: per pair of architectures (``groups``) and class, the
  accuracy difference averaged over seeds, an exact sign test over examples (exact McNemar
  when each group holds one model), and the seed-to-seed spread it should be compared with;
- ``examples``: per example, how many models (and how many of each group) got it right.

Definitions are in docs/agreement.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy import stats
from torch import nn

from .. import data as data_mod
from ..device import resolve_device
from ..errors import ConfigError, InsufficientDataError, RunDirectoryError, ShapeError
from ..models import resolve_model
from ..progress import progress_bar
from ..versions import package_versions
from .base import ExperimentResult

LEVEL = 0.95
INTERVAL_METHOD = "wilson"
EXAMPLE_TEST = "exact sign test over examples (exact McNemar for one model per group), scipy.stats.binomtest"
SEED_TEST = "pooled two-sample Student t test over seeds"
PREDICTIONS_FILE = "predictions.csv"
TABLE_FILES = {"models": "models.csv", "pairs": "pairs.csv", "classes": "classes.csv",
               "group_pairs": "group_pairs.csv", "group_classes": "group_classes.csv", "examples": "examples.csv"}

ModelLike = nn.Module | str | Path


# ---------------------------------------------------------------- statistics on correctness vectors


def wilson_interval(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (NaN, NaN for ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def exact_sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial test of ``wins_a`` against ``wins_b`` at p = 1/2; ties are left
    out beforehand. On the discordant pairs of two models this is the exact McNemar test."""
    n = int(wins_a) + int(wins_b)
    if n == 0:
        return 1.0
    return float(stats.binomtest(int(wins_a), n, 0.5).pvalue)


def kappa_from_counts(both: ArrayLike, only_a: ArrayLike, only_b: ArrayLike, neither: ArrayLike) -> np.ndarray:
    """Cohen's kappa of two binary ratings from their 2x2 counts (element-wise over arrays):
    ``(p_o - p_e) / (1 - p_e)``; NaN where ``p_e == 1`` (both ratings constant and equal)."""
    counts = [np.asarray(c, dtype=np.float64) for c in (both, only_a, only_b, neither)]
    both_f, only_a_f, only_b_f, neither_f = counts
    n = both_f + only_a_f + only_b_f + neither_f
    observed = (both_f + neither_f) / n
    pos_a, pos_b = (both_f + only_a_f) / n, (both_f + only_b_f) / n
    expected = pos_a * pos_b + (1 - pos_a) * (1 - pos_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0, rtol=0, atol=1e-12), np.nan, kappa)


def class_accuracy(correct: np.ndarray, targets: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy ``(M, C)`` of the correctness matrix ``(M, N)`` and the class counts ``(C,)``;
    NaN for a class without examples."""
    hits, counts = class_hits(correct, targets, num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts, counts


def class_hits(correct: np.ndarray, targets: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Correct predictions per model and class ``(M, C)`` and examples per class ``(C,)``."""
    hits = np.stack([np.bincount(targets[row], minlength=num_classes) for row in np.atleast_2d(correct)])
    return hits, np.bincount(targets, minlength=num_classes)


def seed_statistics(values_a: np.ndarray, values_b: np.ndarray, level: float = LEVEL) -> dict[str, np.ndarray]:
    """Between-group difference and seed-to-seed spread of per-seed values ``(k_a, C)`` and ``(k_b, C)``.

    Returns, per column: ``diff`` (mean of a minus mean of b), ``between_abs`` (mean |a_i - b_j|
    over cross pairs), ``within_abs`` (mean |x_i - x_j| over pairs of seeds of one group),
    ``seed_sd`` (pooled within-group standard deviation), ``seed_band`` (half-width of the
    ``level`` Student-t interval of ``diff`` under that spread) and ``p_seeds`` (pooled
    two-sample t test). Columns that need two seeds in a group are NaN without them."""
    values_a, values_b = np.atleast_2d(values_a).astype(np.float64), np.atleast_2d(values_b).astype(np.float64)
    k_a, k_b = len(values_a), len(values_b)
    diff = values_a.mean(0) - values_b.mean(0)
    between_abs = np.abs(values_a[:, None, :] - values_b[None, :, :]).mean((0, 1))
    within = [np.abs(g[i] - g[j]) for g in (values_a, values_b) for i, j in combinations(range(len(g)), 2)]
    within_abs = np.mean(within, axis=0) if within else np.full_like(diff, np.nan)
    dof = k_a + k_b - 2
    if dof < 1:
        nan = np.full_like(diff, np.nan)
        return {"diff": diff, "between_abs": between_abs, "within_abs": within_abs, "seed_sd": nan,
                "seed_band": nan, "p_seeds": nan}
    squares = ((values_a - values_a.mean(0)) ** 2).sum(0) + ((values_b - values_b.mean(0)) ** 2).sum(0)
    seed_sd = np.sqrt(squares / dof)
    se = seed_sd * np.sqrt(1 / k_a + 1 / k_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_stat = diff / se
    return {"diff": diff, "between_abs": between_abs, "within_abs": within_abs, "seed_sd": seed_sd,
            "seed_band": stats.t.ppf(0.5 + level / 2, dof) * se, "p_seeds": 2 * stats.t.sf(np.abs(t_stat), dof)}


def _benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy), NaN kept where the input is NaN."""
    out = np.full(len(p_values), np.nan)
    finite = np.isfinite(p_values)
    if finite.any():
        out[finite] = stats.false_discovery_control(p_values[finite], method="bh")
    return out


# ---------------------------------------------------------------- the result


@dataclass
class AgreementResult(ExperimentResult):
    """Predictions of ``M`` models on the same ``N`` examples, and the tables made from them.

    ``predictions`` is ``(M, N)`` predicted classes, ``targets`` the true classes, ``indices``
    each example's index in the split it was drawn from; ``labels`` name the models and
    ``groups`` their architectures (models sharing a group are seeds of one architecture)."""

    kind: ClassVar[str] = "agreement"
    table_files: ClassVar[dict[str, str]] = {**TABLE_FILES, "predictions": PREDICTIONS_FILE}

    labels: list[str]
    groups: list[str]
    predictions: np.ndarray
    targets: np.ndarray
    indices: np.ndarray
    class_names: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        _check_names(self.labels, self.groups, len(self.predictions))
        if self.predictions.ndim != 2 or not self.predictions.shape[1] == len(self.targets) == len(self.indices):
            raise ShapeError(f"predictions {self.predictions.shape} do not match {len(self.targets)} targets")

    @property
    def correct(self) -> np.ndarray:
        """``(M, N)`` boolean: model ``m`` predicted example ``n``'s class."""
        return self.predictions == self.targets[None, :]

    @property
    def group_names(self) -> list[str]:
        """The groups in order of first appearance."""
        return list(dict.fromkeys(self.groups))

    def _members(self, group: str) -> np.ndarray:
        if group not in self.groups:
            raise ConfigError(f"unknown group {group!r}; the groups are {', '.join(self.group_names)}")
        return np.array([g == group for g in self.groups])

    @cached_property
    def models(self) -> pd.DataFrame:
        """One row per model: accuracy with its 95% Wilson interval."""
        correct = self.correct
        rows = []
        for label, group, hits in zip(self.labels, self.groups, correct):
            low, high = wilson_interval(int(hits.sum()), len(hits))
            rows.append({"model": label, "group": group, "n": len(hits), "correct": int(hits.sum()),
                         "accuracy": float(hits.mean()) if len(hits) else float("nan"),
                         "ci_low": low, "ci_high": high})
        return pd.DataFrame(rows)

    @cached_property
    def pairs(self) -> pd.DataFrame:
        """One row per unordered model pair: agreement, error overlap, kappa of correctness, McNemar."""
        correct = self.correct
        rows = []
        for a, b in combinations(range(len(self.labels)), 2):
            ca, cb = correct[a], correct[b]
            both, only_a, only_b = int((ca & cb).sum()), int((ca & ~cb).sum()), int((~ca & cb).sum())
            neither = len(ca) - both - only_a - only_b
            either_wrong = len(ca) - both
            rows.append({
                "model_a": self.labels[a], "model_b": self.labels[b], "group_a": self.groups[a],
                "group_b": self.groups[b], "same_group": self.groups[a] == self.groups[b],
                "agreement": float((self.predictions[a] == self.predictions[b]).mean()),
                "both_wrong": neither, "either_wrong": either_wrong,
                "error_overlap": neither / either_wrong if either_wrong else float("nan"),
                "kappa": float(kappa_from_counts(both, only_a, only_b, neither)),
                "only_a_correct": only_a, "only_b_correct": only_b, "p_mcnemar": exact_sign_test(only_a, only_b),
            })
        return pd.DataFrame(rows)

    def agreement_matrix(self) -> pd.DataFrame:
        """``M x M`` prediction agreement (1 on the diagonal)."""
        preds = self.predictions
        mat = np.stack([(row[None, :] == preds).mean(1) for row in preds])
        return pd.DataFrame(mat, index=self.labels, columns=self.labels)

    @cached_property
    def classes(self) -> pd.DataFrame:
        """One row per class and model: the class's example count and the model's accuracy on it."""
        hits, counts = class_hits(self.correct, self.targets, len(self.class_names))
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = hits / counts
        rows = [{"class": c, "class_name": self.class_names[c], "model": label, "group": group,
                 "n": int(counts[c]), "correct": int(hits[m, c]), "accuracy": float(acc[m, c])}
                for m, (label, group) in enumerate(zip(self.labels, self.groups))
                for c in range(len(self.class_names))]
        return pd.DataFrame(rows)

    def _group_fraction(self, group: str) -> np.ndarray:
        """Per example: the fraction of ``group``'s models that got it right."""
        return self.correct[self._members(group)].mean(0)

    @cached_property
    def group_classes(self) -> pd.DataFrame:
        """One row per pair of groups and class: seed-averaged accuracy difference, the example test,
        and the seed-to-seed spread (see :func:`seed_statistics`)."""
        acc, counts = class_accuracy(self.correct, self.targets, len(self.class_names))
        frames = []
        for group_a, group_b in combinations(self.group_names, 2):
            in_a, in_b = self._members(group_a), self._members(group_b)
            seeds = seed_statistics(acc[in_a], acc[in_b])
            margin = self._group_fraction(group_a) - self._group_fraction(group_b)
            wins_a = np.bincount(self.targets[margin > 0], minlength=len(self.class_names))
            wins_b = np.bincount(self.targets[margin < 0], minlength=len(self.class_names))
            p_examples = np.array([exact_sign_test(a, b) for a, b in zip(wins_a, wins_b)])
            frame = pd.DataFrame({
                "group_a": group_a, "group_b": group_b, "class": np.arange(len(self.class_names)),
                "class_name": self.class_names, "n": counts.astype(int), "seeds_a": int(in_a.sum()),
                "seeds_b": int(in_b.sum()), "accuracy_a": acc[in_a].mean(0), "accuracy_b": acc[in_b].mean(0),
                **seeds, "p_examples": p_examples, "p_examples_bh": _benjamini_hochberg(p_examples),
            })
            with np.errstate(invalid="ignore", divide="ignore"):
                frame["between_over_within"] = frame["between_abs"] / frame["within_abs"]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @cached_property
    def group_pairs(self) -> pd.DataFrame:
        """One row per pair of groups: overall difference with both tests, and the class-level
        between-group versus between-seed comparison summarised over classes."""
        correct = self.correct.astype(np.float64)
        rows = []
        for group_a, group_b in combinations(self.group_names, 2):
            in_a, in_b = self._members(group_a), self._members(group_b)
            overall = seed_statistics(correct[in_a].mean(1, keepdims=True), correct[in_b].mean(1, keepdims=True))
            margin = self._group_fraction(group_a) - self._group_fraction(group_b)
            per_class = self.group_classes.query("group_a == @group_a and group_b == @group_b")
            rows.append({
                "group_a": group_a, "group_b": group_b, "seeds_a": int(in_a.sum()), "seeds_b": int(in_b.sum()),
                "n": correct.shape[1], "accuracy_a": float(correct[in_a].mean()),
                "accuracy_b": float(correct[in_b].mean()), **{k: float(v[0]) for k, v in overall.items()},
                "p_examples": exact_sign_test(int((margin > 0).sum()), int((margin < 0).sum())),
                "class_between_abs": float(per_class["between_abs"].mean()),
                "class_within_abs": float(per_class["within_abs"].mean()),
                "classes_outside_seed_band": int((per_class["diff"].abs() > per_class["seed_band"]).sum()),
                "classes_significant_bh": int((per_class["p_examples_bh"] < 1 - LEVEL).sum()),
                "classes": len(per_class),
            })
        frame = pd.DataFrame(rows)
        if len(frame):
            with np.errstate(invalid="ignore", divide="ignore"):
                frame["class_between_over_within"] = frame["class_between_abs"] / frame["class_within_abs"]
        return frame

    @cached_property
    def examples(self) -> pd.DataFrame:
        """One row per example: its split index, true class, how many models got it right, and
        how many of each group's models did (``correct[GROUP]``)."""
        correct = self.correct
        frame = pd.DataFrame({"index": self.indices, "target": self.targets,
                              "class_name": [self.class_names[t] for t in self.targets],
                              "models_correct": correct.sum(0), "models": len(self.labels)})
        for group in self.group_names:
            frame[f"correct[{group}]"] = correct[self._members(group)].sum(0)
        return frame

    def hard_for_all(self, max_correct: int = 0) -> np.ndarray:
        """Split indices of the examples that at most ``max_correct`` models got right."""
        return self.indices[self.correct.sum(0) <= max_correct]

    def hard_only_for(self, group: str, max_group_accuracy: float = 0.0,
                      min_other_accuracy: float = 1.0) -> np.ndarray:
        """Split indices of the examples that ``group``'s models get right at most
        ``max_group_accuracy`` of the time while all other models get them right at least
        ``min_other_accuracy`` of the time (defaults: all of the group wrong, all others right)."""
        members = self._members(group)
        if members.all():
            raise ConfigError(f"every model is in group {group!r}; there are no other models to compare with")
        correct = self.correct.astype(np.float64)
        chosen = (correct[members].mean(0) <= max_group_accuracy) & (correct[~members].mean(0) >= min_other_accuracy)
        return self.indices[chosen]

    def figure(self, groups: tuple[str, str] | None = None) -> Figure:
        """Agreement heatmap and, for two groups (default: the first two), the per-class accuracy
        difference with its seed band (drawn by :mod:`tunnelscope.report.agreement`)."""
        from ..report.agreement import agreement_figure

        return agreement_figure(self.tables(), self._figure_config(groups))

    def _figure_config(self, groups: tuple[str, str] | None) -> dict[str, Any]:
        """``config`` with the labels, groups, classes and the figure's pair of groups (checked)."""
        if groups is not None:
            for group in groups:
                self._members(group)  # an unknown group is refused before anything is written
        return {**self.config, "labels": self.labels, "groups": self.groups, "class_names": self.class_names,
                "figure_groups": list(groups) if groups is not None else None}

    def tables(self) -> dict[str, pd.DataFrame]:
        """The six tables of the module docstring and ``predictions`` (index, target, one
        ``pred[LABEL]`` column per model)."""
        return {**{attr: getattr(self, attr) for attr in TABLE_FILES}, "predictions": self._prediction_frame()}

    def saved_config(self) -> dict[str, Any]:
        """``config`` with what :meth:`from_tables` needs: labels, groups, class names, figure groups."""
        figure_groups = self.config.get("figure_groups")
        return {"kind": self.kind, **self._figure_config(tuple(figure_groups) if figure_groups else None)}

    def save(self, out: str | Path, overwrite: bool = False, groups: tuple[str, str] | None = None) -> list[Path]:
        """Write the tables as CSV, ``predictions.csv``, ``agreement.png``/``.svg`` and, last,
        ``config.json`` into ``out`` (see :meth:`ExperimentResult.save`); ``groups`` chooses the
        two groups of the per-class difference plot."""
        if groups is not None:
            self._figure_config(groups)
            self.config["figure_groups"] = list(groups)
        return super().save(out, overwrite)

    def _prediction_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"index": self.indices, "target": self.targets})
        for label, preds in zip(self.labels, self.predictions):
            frame[f"pred[{label}]"] = preds
        return frame

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> AgreementResult:
        """The result whose predictions and config were saved."""
        if "predictions" not in tables:
            raise RunDirectoryError(f"an agreement result needs its {PREDICTIONS_FILE}; run it again")
        config = dict(config)
        frame = tables["predictions"]
        labels, groups, names = config.pop("labels"), config.pop("groups"), config.pop("class_names")
        predictions = frame[[f"pred[{label}]" for label in labels]].to_numpy().T
        return cls(labels, groups, predictions, frame["target"].to_numpy(), frame["index"].to_numpy(), names, config)


def _check_names(labels: Sequence[str], groups: Sequence[str], count: int) -> None:
    if len(labels) != count:
        raise ConfigError(f"got {len(labels)} labels for {count} models; give one label per model or none")
    if len(groups) != count:
        raise ConfigError(f"got {len(groups)} groups for {count} models; give one group per model or none")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must differ, got {list(labels)}")


# ---------------------------------------------------------------- running the models


def sample_indices(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """The split indices :func:`tunnelscope.data.sample_split` keeps: all, or a seeded subset in order."""
    if limit is None or n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


@torch.inference_mode()
def predict(model: nn.Module, split: data_mod.Split, num_classes: int, batch_size: int,
            device: torch.device, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Predicted class (argmax of the logits) of every example of ``split``, in order, in eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for x, _ in split.batches(batch_size, device=device):
            logits = model(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != num_classes:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ShapeError(f"a model returned {shape} for a batch of {len(x)}, not logits of shape "
                                 f"({len(x)}, {num_classes}); compare models trained on this dataset's classes")
            chunks.append(logits.argmax(1).cpu())
            if on_batch is not None:
                on_batch(len(x))
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.int64)


def _default_label(name: str, info: dict) -> str:
    seed = info.get("train_seed")
    return f"{name} s{seed}" if seed is not None else name


def _unique(names: list[str]) -> list[str]:
    """``names`` with repeats told apart by ``#k`` suffixes."""
    if len(set(names)) == len(names):
        return names
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}#{seen[name]}" if names.count(name) > 1 else name)
    return out


def _check_settings(models: Sequence[ModelLike], labels: Sequence[str] | None, groups: Sequence[str] | None,
                    split: str, max_samples: int | None, batch_size: int) -> None:
    if isinstance(models, (str, Path, nn.Module)) or len(models) < 2:
        raise ConfigError("compare_predictions needs a sequence of at least two models (checkpoints, specs or modules)")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, not {split!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1 or None (all), got {max_samples}")
    for what, given in (("labels", labels), ("groups", groups)):
        if given is not None and len(given) != len(models):
            raise ConfigError(f"got {len(given)} {what} for {len(models)} models; give one per model or none")
    if labels is not None and len(set(labels)) != len(labels):
        raise ConfigError(f"model labels must differ, got {list(labels)}")
    named = [str(Path(m).resolve()) if isinstance(m, Path) or (isinstance(m, str) and Path(m).is_file()) else m
             for m in models if isinstance(m, (str, Path))]
    repeated = sorted({str(m) for m in named if named.count(m) > 1})
    if repeated:
        raise ConfigError(f"{repeated[0]} is given more than once: agreement between a model and itself is 1 by "
                          "construction; give different models (or seeds)")


def compare_predictions(  # noqa: PLR0913 (a public facade: readable keywords)
    models: Sequence[ModelLike],
    data: str | data_mod.Dataset,
    labels: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    split: str = "test",
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    data_root: str | Path | None = None,
) -> AgreementResult:
    """Run each model once over the same seeded samples of one split and keep its predictions.

    ``models`` are checkpoint paths, zoo specs (untrained, built for the dataset) or modules;
    ``groups`` names each model's architecture so that seeds of one architecture form a group
    (default: each model's spec); ``labels`` name the models (default: spec and training seed).
    ``max_samples`` draws a seeded subset of the split (the same one ``analyze`` draws).
    Models are loaded one at a time, so memory holds one model and the predictions."""
    _check_settings(models, labels, groups, split, max_samples, batch_size)
    dev = resolve_device(device)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=data_root)
    full = getattr(dataset, split)
    indices = sample_indices(len(full), max_samples, seed)
    chosen = full if len(indices) == len(full) else full.subset(indices)
    targets = chosen.labels.cpu().numpy().astype(np.int64)
    if len(targets) == 0:
        raise InsufficientDataError(f"the {split} split of {dataset.spec} is empty; choose another split or dataset")
    if targets.min() < 0 or targets.max() >= dataset.num_classes:
        raise ShapeError(f"labels of {dataset.spec} fall outside 0..{dataset.num_classes - 1}")
    predictions, names, sources = [], [], []
    with progress_bar(progress) as bars:
        for k, model in enumerate(models):
            net, name, info = resolve_model(model, dev, dataset, seed=seed)
            task = bars.add_task(f"model {k + 1}/{len(models)}: {name}", total=len(targets), info="")
            predictions.append(predict(net, chosen, dataset.num_classes, batch_size, dev,
                                       partial(bars.advance, task)))
            names.append(name)
            sources.append({"name": name, **{key: _plain(v) for key, v in info.items()}})
            del net
    model_labels = list(labels) if labels is not None else _unique([_default_label(n, s)
                                                                    for n, s in zip(names, sources)])
    config = {"data": dataset.spec, "data_info": dataset.info, "split": split, "samples": len(targets),
              "max_samples": max_samples, "seed": seed, "batch_size": batch_size, "device": str(dev),
              "models": sources, "level": LEVEL, "interval": f"{LEVEL:.0%} {INTERVAL_METHOD} score interval",
              "example_test": EXAMPLE_TEST, "seed_test": SEED_TEST, "versions": package_versions()}
    return AgreementResult(model_labels, list(groups) if groups is not None else names, np.stack(predictions),
                           targets, indices.numpy(), list(dataset.class_names), config)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


__all__ = ["AgreementResult", "class_accuracy", "class_hits", "compare_predictions", "exact_sign_test",
           "kappa_from_counts", "predict", "sample_indices", "seed_statistics", "wilson_interval"]
