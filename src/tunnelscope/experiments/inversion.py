"""Reconstructing inputs from a layer's embedding (Badger 2022; METRICS.md §8).

``invert`` recovers each image from each chosen probe point's full activation tensor by
gradient descent on the input, for all images × points × restarts in one batched
optimisation (rows are independent: the model runs in eval mode). Scores per row:

- ``m_g = ‖O(a) − O(a_g)‖``: how close the reconstruction's embedding is,
- ``m_i = ‖a_g − a‖``: how far the reconstruction is from the image,
- ``m_r = ‖O(a) − O(a′)‖`` for a barely visible perturbation ``a′ = a + N(0,1)/18``,
- ``nonunique``: 1 when ``m_g < m_r`` while ``m_i > ratio · ‖a − a′‖`` (the embedding
  cannot tell the reconstruction from the image, yet they differ far more than ``a′``),
  judged on a *refined* reconstruction (``m_g_refined``, ``m_i_refined``): from ``a_g``,
  up to ``refine_steps`` L-BFGS iterations (strong-Wolfe line search) on the squared relative
  embedding distance, without blur. Badger's fixed-step L1 descent with a blur after every
  step stalls at an embedding distance proportional to its step, above ``m_r`` even for a
  linear map that provably loses information, so judged on ``a_g`` itself the flag could
  never fire there; ``refine_steps=0`` judges ``a_g`` as the paper does.
- ``undecided``: 1 for a row that is not non-unique only because the refinement ran out of
  ``refine_steps`` while its ``m_g`` was still falling (``refine_pace``): no verdict.
- ``spread``: the mean pairwise input distance between restarts (per image and point).

All norms are L2 over the whole tensor. Inputs live in the model's (normalised) input
space; Badger's start ``N(0,1)/20 + 0.7`` is applied there.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ..capture import activations
from ..errors import CheckpointError, ConfigError, RunDirectoryError, ShapeError
from ..models.init import untrained_copy
from ..models.probe_points import order_by_execution, probe_points
from ..progress import progress_bar
from ..report.inversion import mean_scores
from ..rundir import FIGURES_DIR, INVERSION_CONFIG, INVERSION_FILE, KIND_KEY, whole_or_nothing
from .base import ExperimentResult, finish

if TYPE_CHECKING:
    from ..data import Dataset


START_KINDS = ("badger", "diverse")
SETTLED_PACE = 1.1  # a refinement that cut a row's m_g by more than this over its last half had not settled
PACE_EVALUATIONS = 10  # fewer evaluations than this do not show whether a row has settled
REFINE_SEGMENT = 50  # refinement iterations between checks of whether every row is decided
CROSSED_MARGIN = 0.99  # a row decided below m_r is below this share of it (rounding cannot undo it)
DIVERSE_SEED_OFFSET = 0x64697665  # "dive": the diverse starts' generator is seeded with seed + this


@dataclass
class InvertConfig:
    """Badger's protocol by default; every field is recorded with the results."""

    steps: int = 500
    lr: float = 0.1
    l1_weight: float = 0.15
    init_mean: float = 0.7
    init_std: float = 1 / 20
    blur: bool = True  # 3x3 Gaussian blur after each step (image inputs only)
    sigma_start: float = 2.4
    sigma_end: float = 0.4
    tv_weight: float = 0.0  # optional total-variation prior
    restarts: int = 1
    starts: str = "badger"  # badger: all near init_mean; diverse: restarts after the first uniform over the range
    perturb_std: float = 1 / 18
    nonunique_ratio: float = 2.0
    refine_steps: int = 2000  # L-BFGS iterations at most on the embedding distance before non-uniqueness is judged
    refine_lr: float = 1.0  # L-BFGS's first step (a strong-Wolfe line search adapts it)
    seed: int = 0
    max_rows: int = 512  # images × points × restarts optimised together at most

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1 or self.max_rows < 1:
            raise ConfigError("steps, restarts and max_rows must be >= 1")
        if self.refine_steps < 0 or not self.refine_lr > 0:
            raise ConfigError("refine_steps must be >= 0 and refine_lr > 0")
        if self.starts not in START_KINDS:
            raise ConfigError(f"starts must be one of {', '.join(START_KINDS)}, got {self.starts!r}")


@dataclass
class Inversion:
    """Scores (tidy ``table``), reconstructions per point ``(restarts, N, *input)``, config."""

    table: pd.DataFrame
    reconstructions: dict[str, Tensor]
    images: Tensor
    perturbed: Tensor  # a′ = a + N(0,1)·perturb_std, the reference for m_r
    starts: Tensor  # (restarts, N, *input): where the descent began
    config: dict = field(default_factory=dict)

    def score(self, metric: str, state: str | None = None) -> pd.DataFrame:
        """``metric`` averaged over images and restarts: one row per point (and model state)."""
        return mean_scores(self.table, metric, state)


def _tv(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()


@dataclass
class _Chunk:
    """Rows ``(point index, restart, image)`` optimised together, what they aim at, and per point
    index: the chunk positions of its rows (``index``) and their images (``images``)."""

    rows: list[tuple[int, int, int]]
    names: list[str]
    targets: dict[str, Tensor]
    originals: Tensor
    index: dict[int, Tensor] = field(default_factory=dict)
    images: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        device = self.originals.device
        self.index = {p: torch.tensor([i for i, r in enumerate(self.rows) if r[0] == p], device=device)
                      for p in sorted({r[0] for r in self.rows})}
        self.images = {p: torch.tensor([self.rows[i][2] for i in ix.tolist()], device=device)
                       for p, ix in self.index.items()}

    @property
    def needed(self) -> list[str]:
        """The points up to the deepest one of the chunk (what a forward pass must reach)."""
        return self.names[: max(p for p, _, _ in self.rows) + 1]

    def distances(self, outs: dict[str, Tensor], p: int, squared_relative: bool = False) -> Tensor:
        """Each row of point index ``p``: its embedding's L2 distance to its target (or the squared
        distance relative to the target's squared norm)."""
        target = self.targets[self.names[p]][self.images[p]]
        gap = (outs[self.names[p]][self.index[p]] - target).flatten(1)
        if squared_relative:
            return gap.square().sum(1) / target.flatten(1).square().sum(1).clamp_min(1e-12)
        return gap.double().norm(dim=1)


def trajectory_steps(steps: int) -> list[int]:
    """The steps at which a descent's progress is recorded: 0, 1, 2, 4, ... and the last."""
    return sorted({0, steps, *(2 ** k for k in range(max(1, steps).bit_length()) if 2 ** k < steps)})


def _descend(model: nn.Module, chunk: _Chunk, start: Tensor, cfg: InvertConfig,
             advance: Callable[[int], None]) -> tuple[Tensor, list[dict]]:
    """Badger's gradient descent for one chunk; returns the reconstructions and the trajectory:
    each row's ``m_g`` and ``m_i`` at :func:`trajectory_steps`."""
    image_like = start.dim() == 4
    recorded, trajectory = set(trajectory_steps(cfg.steps)), []
    x = start.clone()
    for step in range(cfg.steps + 1):
        x.requires_grad_(step < cfg.steps)
        outs = activations(model, chunk.needed, x)
        if step in recorded:
            trajectory += _progress(chunk, outs, x, step)
        if step == cfg.steps:
            break
        loss = sum(cfg.l1_weight * (outs[chunk.names[p]][ix] - chunk.targets[chunk.names[p]][chunk.images[p]]).abs()
                   .sum() for p, ix in chunk.index.items())
        assert isinstance(loss, Tensor)  # index is never empty, so sum() never returns its start, 0
        if cfg.tv_weight and image_like:
            loss = loss + cfg.tv_weight * _tv(x)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - cfg.lr * grad
            if cfg.blur and image_like:
                sigma = cfg.sigma_start + (cfg.sigma_end - cfg.sigma_start) * step / max(1, cfg.steps - 1)
                x = gaussian_blur(x, [3, 3], [sigma, sigma])
        advance(1)
    return x.detach(), trajectory


def _progress(chunk: _Chunk, outs: dict[str, Tensor], x: Tensor, step: int) -> list[dict]:
    """Each row's embedding distance ``m_g`` and input distance ``m_i`` at ``step``."""
    found = []
    with torch.no_grad():
        for p, ix in chunk.index.items():
            m_g, m_i = chunk.distances(outs, p), _norms(x[ix] - chunk.originals[chunk.images[p]])
            for k, position in enumerate(ix.tolist()):
                _, restart, image = chunk.rows[position]
                found += [{"image": image, "restart": restart, "point": chunk.names[p], "layer": p + 1, "step": step,
                           "metric": metric, "value": float(value[k])}
                          for metric, value in (("trajectory_m_g", m_g), ("trajectory_m_i", m_i))]
    return found


def _refine(model: nn.Module, chunk: _Chunk, start: Tensor, cfg: InvertConfig, advance: Callable[[int], None],
            m_r: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Up to ``cfg.refine_steps`` L-BFGS iterations (strong-Wolfe line search, first step
    ``cfg.refine_lr``) from ``start`` on the sum over rows of each row's squared embedding
    distance relative to its target's squared norm, no blur. A least-squares fit of a piecewise
    linear map: L-BFGS reaches embedding distances below ``m_r`` where Adam's fixed steps stall
    (a trained MLP's deep layers: 0.3 against ``m_r`` 0.08 after 200 Adam steps).

    It runs in segments of :data:`REFINE_SEGMENT` iterations (one L-BFGS run: its curvature pairs
    carry over) and stops early once every row is decided: below ``m_r`` (each point's
    ``(images,)`` distances in ``m_r``) with a margin, or settled (:data:`SETTLED_PACE`). Returns
    the refined inputs and each row's pace (:func:`_pace`)."""
    x = start.clone().requires_grad_(True)
    if not cfg.refine_steps:
        return x.detach(), torch.ones(len(x), dtype=torch.float64)
    opt = torch.optim.LBFGS([x], lr=cfg.refine_lr, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)
    evaluated: list[Tensor] = []  # every row's squared relative distance at each evaluation
    below = _by_row(chunk, {p: (m_r[chunk.names[p]][chunk.images[p]] * CROSSED_MARGIN).square()
                            / chunk.targets[chunk.names[p]][chunk.images[p]].flatten(1).double().square().sum(1)
                            for p in chunk.index})

    def closure() -> Tensor:
        opt.zero_grad()
        outs = activations(model, chunk.needed, x)
        parts = {p: chunk.distances(outs, p, squared_relative=True) for p in chunk.index}
        loss = sum(part.sum() for part in parts.values())
        assert isinstance(loss, Tensor)  # index is never empty
        loss.backward()
        evaluated.append(_by_row(chunk, parts))
        return loss

    done = 0
    while done < cfg.refine_steps:
        segment = min(REFINE_SEGMENT, cfg.refine_steps - done)
        converged = _lbfgs_segment(opt, x, closure, segment)
        done += segment
        advance(segment)
        with torch.no_grad():
            outs = activations(model, chunk.needed, x)
            final = _by_row(chunk, {p: chunk.distances(outs, p, squared_relative=True) for p in chunk.index})
        pace = _pace(evaluated, final, converged)
        if converged or ((final < below) | (pace <= SETTLED_PACE)).all():
            break
    advance(cfg.refine_steps - done)
    return x.detach(), pace


def _lbfgs_segment(opt: torch.optim.LBFGS, x: Tensor, closure: Callable[[], Tensor], iterations: int) -> bool:
    """Up to ``iterations`` more iterations of ``opt`` (its state carries over from earlier calls);
    whether it stopped on its own tolerances rather than on the iterations or evaluations allowed."""
    group = opt.param_groups[0]
    group.update(max_iter=iterations, max_eval=iterations * 5 // 4)
    state = opt.state[x]
    iterations_before, evaluations_before = state.get("n_iter", 0), state.get("func_evals", 0)
    opt.step(closure)
    ran, evaluations = state["n_iter"] - iterations_before, state["func_evals"] - evaluations_before
    return ran < group["max_iter"] and evaluations < group["max_eval"]


def _by_row(chunk: _Chunk, parts: Mapping[int, Tensor]) -> Tensor:
    """Per point index values of a chunk's rows (``chunk.index`` order) as one float64 vector in row order."""
    out = torch.empty(len(chunk.rows), dtype=torch.float64)
    for p, values in parts.items():
        out[chunk.index[p].cpu()] = values.detach().double().cpu()
    return out


def _pace(evaluated: list[Tensor], final: Tensor, settled: bool) -> Tensor:
    """How many times each row's embedding distance fell over the second half of the refinement's
    evaluations: ``sqrt(best squared distance of the first half / final one)``, at least 1; 1 for
    every row when the solver stopped before its budget (its own tolerances met: more iterations
    would not move it); NaN (not judged) after fewer than :data:`PACE_EVALUATIONS` evaluations."""
    if settled:
        return torch.ones_like(final)
    if len(evaluated) < PACE_EVALUATIONS:
        return torch.full_like(final, math.nan)
    half = torch.stack(evaluated[: (len(evaluated) + 1) // 2]).amin(0)
    return (half / final.clamp_min(1e-300)).sqrt().nan_to_num(1.0).clamp_min(1.0)


def _draw_starts(cfg: InvertConfig, images: Tensor, g: torch.Generator) -> Tensor:
    """``(restarts, N, *input)`` starting points from ``g``: every restart at ``N(0,1)·init_std +
    init_mean`` (Badger's), or with ``starts="diverse"`` the first so and the others uniform
    between the images' smallest and largest value, so that restarts begin far apart."""
    drawn = torch.randn(cfg.restarts, *images.shape, generator=g) * cfg.init_std + cfg.init_mean
    if cfg.starts == "diverse" and cfg.restarts > 1:  # a generator of their own: g's later draws stay the same
        lo, hi = float(images.min()), float(images.max())
        own = torch.Generator().manual_seed(cfg.seed + DIVERSE_SEED_OFFSET)
        drawn[1:] = lo + (hi - lo) * torch.rand(cfg.restarts - 1, *images.shape, generator=own)
    return drawn


def invert(model: nn.Module, images: Tensor, layers: str | list[str] = "blocks", config: InvertConfig | None = None,
           device: str | torch.device = "cpu", state: str = "trained", progress: bool | None = None,
           starts: Tensor | None = None) -> Inversion:
    """Reconstruct ``images`` (N, *input shape) from every chosen point's full activations.

    ``starts`` ``(restarts, N, *input shape)`` replaces the seeded starting points of
    ``config.starts`` (the same start serves every point)."""
    cfg = config or InvertConfig()
    dev = torch.device(device)
    was_training = model.training
    model = model.to(dev).eval()
    images = images.to(dev)
    names = order_by_execution(model, probe_points(model, layers), images[:1])
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            targets = {k: v.detach() for k, v in activations(model, names, images).items()}
        g = torch.Generator().manual_seed(cfg.seed)
        n, R = len(images), cfg.restarts
        drawn = _draw_starts(cfg, images.cpu(), g)
        starts = (drawn if starts is None else starts).to(dev)
        if starts.shape != (R, n, *images.shape[1:]):
            raise ShapeError(f"starts must have shape {(R, n, *images.shape[1:])}, got {tuple(starts.shape)}")
        perturbed = images + (torch.randn(images.shape, generator=g) * cfg.perturb_std).to(dev)
        references = _references(model, names, images, perturbed, targets)
        rows = list(itertools.product(range(len(names)), range(R), range(n)))
        out = torch.empty(len(names), R, n, *images.shape[1:], device=dev)
        refined = torch.empty_like(out)
        paces = torch.ones(len(names), R, n, dtype=torch.float64)
        trajectory: list[dict] = []
        with progress_bar(progress) as bars:
            task = bars.add_task(f"inverting ({state})",
                                 total=(cfg.steps + cfg.refine_steps) * math.ceil(len(rows) / cfg.max_rows),
                                 info=f"{n} images × {len(names)} points × {R} restarts")
            def advance(steps: int) -> None:
                bars.advance(task, steps)

            for lo in range(0, len(rows), cfg.max_rows):
                chunk = _Chunk(rows[lo : lo + cfg.max_rows], names, targets, images)
                start = torch.stack([starts[r, i] for _, r, i in chunk.rows])
                result, progress_rows = _descend(model, chunk, start, cfg, advance)
                trajectory += progress_rows
                polished, pace = _refine(model, chunk, result, cfg, advance, references[0])  # no steps: a copy
                for (point, r, i), x, y, rate in zip(chunk.rows, result, polished, pace):
                    out[point, r, i], refined[point, r, i], paces[point, r, i] = x, y, rate
        table = _scores(model, names, images, references, (out, refined, paces), targets, cfg, state)
        exact = linear_reference(model, names, images, {k: int(v[0].numel()) for k, v in targets.items()})
        table = pd.concat([table, pd.DataFrame(trajectory + exact).assign(state=state)], ignore_index=True)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    recon = {name: out[p].cpu() for p, name in enumerate(names)}
    return Inversion(table, recon, images.cpu(), perturbed.cpu(), starts.cpu(),
                     {**asdict(cfg), "points": names, "state": state})


MAX_JACOBIAN = 1 << 24  # entries of an input-to-point Jacobian computed for the exact reference (128 MiB in float64)


def linear_reference(model: nn.Module, names: list[str], images: Tensor,
                     widths: Mapping[str, int] | None = None) -> list[dict]:
    """The exact answer at each point of ``names`` (layer = its position + 1) where the map from
    the input to it is affine (a linear MLP): per image, ``null_dim`` (input dimensions the map
    cannot see: D_in − rank of its matrix; any positive value makes every embedding non-unique,
    preimages at any distance) and ``m_i_exact``, the distance from the image to the minimum-norm
    input with the same embedding (the pseudo-inverse's). No rows for a point whose map is not
    affine or whose matrix has more than :data:`MAX_JACOBIAN` entries. ``widths`` (each point's
    feature count) spares a forward pass when the caller has the activations."""
    x = images.detach().double()
    if widths is None:
        widths = {k: int(v[0].numel()) for k, v in activations(model, names, images[:1]).items()}
    small = [(p, name) for p, name in enumerate(names) if widths[name] * x[0].numel() <= MAX_JACOBIAN]
    if not small or len(x) < 1:
        return []
    model64 = copy.deepcopy(model).double()  # once for every point
    return [row for p, name in small for row in _affine_reference(model64, name, p + 1, x)]


def _affine_reference(model64: nn.Module, name: str, layer: int, x: Tensor) -> list[dict]:
    """:func:`linear_reference` at one point, on the float64 copy of the model."""
    def embed(v: Tensor) -> Tensor:
        return activations(model64, [name], v.reshape(1, *x.shape[1:]))[name].flatten()

    with torch.no_grad():  # an affine map keeps f(a) + f(-a) = 2 f(0) (a ReLU one, even without biases, does not):
        ends = activations(model64, [name], torch.stack([torch.zeros_like(x[0]), x[0], -x[0]]))[name].flatten(1)
        if not _close(ends[1] + ends[2], 2 * ends[0]):  # refused on three samples, before a Jacobian
            return []
    jacobian = torch.func.jacrev(embed)(torch.zeros_like(x[0]).flatten())
    offset = embed(torch.zeros_like(x[0]).flatten())
    with torch.no_grad():
        outputs = activations(model64, [name], x)[name].flatten(1)
        predicted = x.flatten(1) @ jacobian.T + offset
        if not _close(predicted, outputs):
            return []  # not affine: no exact reference
        null_dim = x[0].numel() - int(torch.linalg.matrix_rank(jacobian))
        preimage = (outputs - offset) @ torch.linalg.pinv(jacobian).T
        distance = (preimage - x.flatten(1)).norm(dim=1)
    return [{"image": i, "restart": -1, "point": name, "layer": layer, "metric": metric, "value": float(value)}
            for i in range(len(x)) for metric, value in (("null_dim", null_dim), ("m_i_exact", distance[i]))]


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to float64 rounding of a forward pass (relative to the larger values' scale)."""
    return torch.allclose(a, b, rtol=1e-6, atol=1e-8 * float(torch.maximum(a.abs().max(), b.abs().max()).clamp_min(1)))


def _references(model: nn.Module, names: list[str], images: Tensor, perturbed: Tensor,
                targets: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Each point's ``m_r = ‖O(a) − O(a′)‖`` per image, and the input perturbation ``‖a′ − a‖``."""
    with torch.no_grad():
        m_r = {k: _norms(v - targets[k]) for k, v in activations(model, names, perturbed).items()}
    return m_r, _norms(perturbed - images)


def _norms(x: Tensor) -> Tensor:
    return x.flatten(1).double().norm(dim=1)


def _scores(model, names, images, references: tuple[dict[str, Tensor], Tensor],
            reconstructions: tuple[Tensor, Tensor, Tensor], targets, cfg: InvertConfig, state: str) -> pd.DataFrame:
    """The tidy score rows; ``references``: each point's ``m_r`` and the input perturbation ``‖a′ − a‖``."""
    out, refined, paces = reconstructions
    perturbation, input_perturb = references
    rows = []
    with torch.no_grad():
        for p, name in enumerate(names):
            m_r = perturbation[name]
            for r in range(out.shape[1]):
                emb = activations(model, names[: p + 1], out[p, r])[name]
                m_g = _norms(emb - targets[name])
                m_i = _norms(out[p, r] - images)
                m_g_ref, m_i_ref = m_g, m_i  # without refinement the refined reconstruction is a_g itself
                if cfg.refine_steps:
                    m_g_ref = _norms(activations(model, names[: p + 1], refined[p, r])[name] - targets[name])
                    m_i_ref = _norms(refined[p, r] - images)
                far = m_i_ref > cfg.nonunique_ratio * input_perturb
                nonunique = (m_g_ref < m_r) & far
                undecided = far & (m_g_ref >= m_r) & ~(paces[p, r].to(m_g_ref.device) <= SETTLED_PACE)  # NaN too
                for i in range(len(images)):
                    for metric, value in (("m_g", m_g[i]), ("m_i", m_i[i]), ("m_r", m_r[i]),
                                          ("m_g_refined", m_g_ref[i]), ("m_i_refined", m_i_ref[i]),
                                          ("input_perturbation", input_perturb[i]), ("nonunique", nonunique[i]),
                                          ("refine_pace", paces[p, r, i]), ("undecided", undecided[i])):
                        rows.append({"state": state, "image": i, "restart": r, "point": name, "layer": p + 1,
                                     "metric": metric, "value": float(value)})
            if out.shape[1] > 1:
                for i in range(len(images)):
                    flat = out[p, :, i].flatten(1).double()
                    rows.append({"state": state, "image": i, "restart": -1, "point": name, "layer": p + 1,
                                 "metric": "spread", "value": float(torch.pdist(flat).mean())})
    return pd.DataFrame(rows)


SUMMARY_KEY = "summary"  # the key of inversion.json that holds the per-layer means, after the config
INVERSION_FIGURES = ("inversion-grid-trained", "inversion-grid-untrained", "inversion-scores",
                     "inversion-trajectory")  # under figures/


SUMMARY_METRICS = ("m_g", "m_i", "m_r", "nonunique", "undecided")  # averaged per point by summarize_scores


def summarize_scores(scores: pd.DataFrame) -> dict:
    """Per model state (in the table's order) and point: mean m_g, m_i, m_r and the shares of
    non-unique and of undecided rows (NaN for a table saved before rows were judged undecided)."""
    out: dict = {}
    for state in dict.fromkeys(scores.state):
        t = scores[scores.state == state]
        per = t[t.metric.isin(SUMMARY_METRICS)].groupby(["layer", "point", "metric"]).value.mean()
        out[state] = [{"layer": int(layer), "point": point, **{m: float(per.get((layer, point, m), math.nan))
                       for m in SUMMARY_METRICS}}
                      for layer, point in sorted({(lay, p) for lay, p, _ in per.index})]
    return out


def summarize_inversions(inversions: list[Inversion]) -> dict:
    """Per model state and point: mean m_g, m_i, m_r and the shares of non-unique and undecided rows."""
    return summarize_scores(pd.concat([inv.table for inv in inversions], ignore_index=True))


@dataclass
class InversionResult(ExperimentResult):
    """The scores of one or more inversions (one per model state) and their config.

    It shares its directory with an analysis or a training run, so its files are its own:
    ``inversion.parquet`` (``scores``), ``figures/inversion-*`` and, written last and naming
    the kind, ``inversion.json`` (``config``, then the per-layer ``summary``): a directory
    with the table but without it holds a partial inversion and does not load."""

    kind: ClassVar[str] = "inversion"
    table_files: ClassVar[dict[str, str]] = {"scores": INVERSION_FILE}

    scores: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_inversions(cls, inversions: Sequence[Inversion], extra_config: dict | None = None) -> InversionResult:
        """The scores of ``inversions`` (the first one's settings as ``config["config"]``) and ``extra_config``."""
        scores = pd.concat([inv.table for inv in inversions], ignore_index=True)
        return cls(scores, {"config": inversions[0].config, **(extra_config or {})})

    def tables(self) -> dict[str, pd.DataFrame]:
        """``scores``: the tidy table of every inversion (state, image, restart, point, layer, metric, value)."""
        return {"scores": self.scores}

    @classmethod
    def from_tables(cls, tables: Mapping[str, pd.DataFrame], config: dict[str, Any]) -> InversionResult:
        """The result of a saved ``scores`` table and config (a saved ``summary`` is recomputed, not kept)."""
        return cls(tables["scores"], {k: v for k, v in config.items() if k not in (KIND_KEY, SUMMARY_KEY)})

    def summary(self) -> dict:
        """Per model state and point: mean m_g, m_i, m_r and the shares of non-unique and undecided rows."""
        return summarize_scores(self.scores)

    def saved_config(self) -> dict[str, Any]:
        """What ``inversion.json`` holds: the kind, ``config`` and, last, the :meth:`summary`."""
        return {**super().saved_config(), SUMMARY_KEY: self.summary()}

    def save(self, out: str | Path, overwrite: bool = False, figures: Mapping[str, Figure] | None = None
             ) -> list[Path]:
        """Write ``inversion.parquet``, the kind's figures and ``figures`` (more figures by name, such
        as the reconstruction grids) under ``out/figures``, and last ``inversion.json``; return the
        written paths. A directory already holding an inversion is refused unless ``overwrite``."""
        from ..io import atomic_write
        from ..report.experiments import draw_experiment

        config = self.saved_config()
        drawn = {**draw_experiment(self.kind, self.tables(), config), **(figures or {})}
        scores, stale = self.scores, [f"{FIGURES_DIR}/{name}" for name in INVERSION_FIGURES]
        with whole_or_nothing(out):  # a full disk or an error leaves no partial inversion
            folder = claim_inversion(out, overwrite)
            paths = [atomic_write(folder / INVERSION_FILE, lambda h: scores.to_parquet(h, index=False))]
            return paths + finish(folder, drawn, stale, folder / INVERSION_CONFIG, config)

    @classmethod
    def load(cls, out: str | Path) -> InversionResult:
        """Read an inversion written by :meth:`save`; refuses a partial one (no ``inversion.json``)."""
        folder = Path(out)
        path = folder / INVERSION_CONFIG
        if not (path.is_file() and (folder / INVERSION_FILE).is_file()):
            raise RunDirectoryError(f"{folder} holds a partial inversion or none ({INVERSION_CONFIG}, written last, "
                                    f"or {INVERSION_FILE} is missing): run tunnelscope invert again")
        try:
            config = json.loads(path.read_text())
            scores = pd.read_parquet(folder / INVERSION_FILE)
        except (OSError, ValueError) as exc:
            raise RunDirectoryError(f"cannot read the inversion in {folder}: {type(exc).__name__}: {exc}") from None
        recorded = config.get(KIND_KEY) if isinstance(config, dict) else None
        if not isinstance(config, dict) or recorded not in (None, cls.kind):
            raise RunDirectoryError(f"{path} does not describe an inversion (kind {recorded!r})")
        return cls.from_tables({"scores": scores}, config)


def claim_inversion(out: str | Path, overwrite: bool = False, create: bool = True) -> Path:
    """Take ``out`` for an inversion (beside an analysis or a training run, or alone) and return it.
    One already holding an inversion, finished or partial, is refused unless ``overwrite``, which
    removes ``inversion.json`` first so the directory reads as partial until the new one finishes."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise RunDirectoryError(f"{folder} is a file, not a directory; choose another --out")
    finished = (folder / INVERSION_CONFIG).exists()
    if (finished or (folder / INVERSION_FILE).exists()) and not overwrite:
        what = "an inversion" if finished else f"an inversion (a partial one: no {INVERSION_CONFIG})"
        raise RunDirectoryError(f"{folder} already holds {what}; pass --overwrite or choose another --out")
    if create:
        (folder / INVERSION_CONFIG).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_inversions(inversions: list[Inversion], out: str | Path, extra_config: dict | None = None,
                    overwrite: bool = False) -> list[Path]:
    """Write ``inversion.parquet``, the figures (scores and one reconstruction grid per model state)
    and ``inversion.json`` into ``out`` (:meth:`InversionResult.save`); returns the PNGs."""
    from ..report.figures import inversion_grid

    grids = {f"{FIGURES_DIR}/inversion-grid-{inv.config['state']}": inversion_grid(inv) for inv in inversions}
    paths = InversionResult.from_inversions(inversions, extra_config).save(out, overwrite, grids)
    return [p for p in paths if p.suffix == ".png"]


def invert_checkpoint(checkpoint: str | Path, data: str | Dataset, out: str | Path, *, images: int = 8,  # noqa: PLR0913 (a public facade: readable keywords)
                      points: str | list[str] = "blocks", config: InvertConfig | None = None, untrained: bool = True,
                      device: str | torch.device = "auto", overwrite: bool = False,
                      data_root: str | Path | None = None, progress: bool | None = None) -> list[Inversion]:
    """What ``tunnelscope invert`` does: reconstruct ``images`` test images of ``data`` (drawn
    with ``config.seed``) from every point of a checkpoint's model and, with ``untrained``, of
    a copy re-initialised with the same seed; write scores, figures and ``report.html`` into
    ``out``. Returns the inversions, the trained model's first. ``checkpoint`` may also be a
    model spec (``resnet18``): its random initialisation seeded by ``config.seed`` is inverted,
    as the one state ``untrained`` (Badger inverts untrained networks too)."""
    from .. import data as data_mod
    from ..data import sample_split
    from ..device import resolve_device
    from ..models import resolve_model
    from ..report.run import refresh_report

    out = claim_inversion(out, overwrite, create=False)  # refused before any work
    is_file = Path(checkpoint).suffix in (".pt", ".pth") or "/" in str(checkpoint)
    if is_file and not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist; give a file written by 'tunnelscope train'")
    cfg = config or InvertConfig()
    dev = resolve_device(device)
    dataset = data_mod.load(data, root=data_root) if isinstance(data, str) else data
    model, spec, info = resolve_model(checkpoint, dev, dataset, seed=cfg.seed)
    if images > len(dataset.test):
        raise ConfigError(f"--images {images} is more than the {len(dataset.test)} test images of {dataset.spec}")
    split, n = sample_split(dataset.test, images, cfg.seed)
    x = torch.cat([b for b, _ in split.batches(256, device=dev)])
    if not is_file:  # a spec at its initialisation: the untrained state only
        runs = [invert(model, x, points, cfg, dev, "untrained", progress)]
    else:
        runs = [invert(model, x, points, cfg, dev, "trained", progress)]
        if untrained:
            runs.append(invert(untrained_copy(model, cfg.seed), x, points, cfg, dev, "untrained", progress))
    source = {"checkpoint": str(checkpoint)} if is_file else {"init_seed": cfg.seed}
    save_inversions(runs, out, {**source, "model": spec, "data": dataset.spec, "images": n, "device": str(dev)},
                    overwrite)
    refresh_report(out, title=f"tunnelscope invert: {spec}")
    return runs


__all__ = ["INVERSION_CONFIG", "INVERSION_FILE", "InversionResult", "InvertConfig", "Inversion", "claim_inversion",
           "invert", "invert_checkpoint", "save_inversions", "summarize_inversions", "summarize_scores"]
