"""Figures of one run (and of several, for ``compare``), drawn on matplotlib Figures that
pyplot never sees: importing or drawing leaves the user's backend alone.

Each function takes a :class:`~tunnelscope.results.Results` and returns a Figure, or None
when the run lacks the metrics it needs. ``save_figures`` writes PNG and SVG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..io import atomic_write
from ..metrics import PRESENTATIONS, presentation
from ..probes import C_REFERENCE
from ..summary import BEST_TRANSFER_LAYER, TUNNEL_START, tunnel_claimed

TUNNEL_COLOUR = "#f4d58d"


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure and its axes, as ``plt.subplots`` gives, but not registered
    with pyplot: no backend is chosen or switched, and nothing has to be closed."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


NAMED_TICKS = 16  # up to this many layers, each tick also names its probe point


def _layer_axis(ax, results, label: str = "layer (probe point; 0 = the input)") -> None:
    """Layer ticks (at most 12 beyond 24 layers); up to :data:`NAMED_TICKS` layers, each names its
    point under the number, turned when the names are long."""
    first, n = _first_layer(results), len(results.points)
    ax.set_xlabel(label)
    ticks = list(range(first, n + 1)) if n <= 24 else list(np.linspace(first, n, 12).round().astype(int))
    ax.set_xticks(ticks)
    names = ([results.input_point] if first == 0 else []) + list(results.points)
    if n + 1 - first <= NAMED_TICKS and len(names) == n + 1 - first:
        long = max(len(name) for name in names) > 8
        ax.set_xticklabels([f"{t}\n{names[t - first]}" for t in ticks], fontsize=7, rotation=30 if long else 0,
                           ha="right" if long else "center")
    ax.grid(alpha=0.3)


def _first_layer(results) -> int:
    return 0 if results.input_point else 1


def _shade_tunnel(ax, results, n: int) -> None:
    """The tunnel shaded from its start when the verdict claims one (:func:`tunnel_claimed`);
    otherwise a dotted line where ID accuracy comes within 5% of its final value, named so."""
    start = results.summary.get(TUNNEL_START)
    if start is None or start >= n:
        return
    if tunnel_claimed(results.summary):
        ax.axvspan(start, n + 0.5, color=TUNNEL_COLOUR, alpha=0.5, lw=0, label=f"tunnel (from layer {start})")
    else:
        ax.axvline(start, color="0.4", ls=":", lw=1.2,
                   label=f"ID accuracy within 5% of its final value from layer {start} (no tunnel claimed)")


def _tunnel_axes(results, height: float):
    """A one-panel figure over the run's points with the tunnel shaded; ``(fig, ax, points)``."""
    fig, ax = subplots(figsize=(7, height))
    n = len(results.points)
    _shade_tunnel(ax, results, n)
    return fig, ax, n


def _plot(ax, results, metric: str, dataset: str = "id", split: str = "test", label: str = "",
          colour: str | None = None, **style) -> bool:
    """The model's curve with its 95% interval as a band, and the untrained reference's (when
    stored) dashed in the same colour. Returns False when the metric is absent."""
    try:
        rows = results.interval(metric, dataset, split)
    except KeyError:
        return False
    line = ax.plot(rows.layer, rows.value, **{"marker": "o", "ms": 4, "label": label, "color": colour, **style})[0]
    if rows.ci_lo.notna().any():
        ax.fill_between(rows.layer, rows.ci_lo, rows.ci_hi, color=line.get_color(), alpha=0.2, lw=0)
    for reference in results.references:
        if reference.startswith(C_REFERENCE):  # the probes' C grid: the report's sensitivity table, not a curve
            continue
        try:
            ref = results.interval(metric, dataset, split, reference=reference)
        except KeyError:
            continue
        ax.plot(ref.layer, ref.value, ls="--", lw=1, marker=".", color=line.get_color(), alpha=0.8,
                label=f"{label} ({reference})" if label else reference)
    return True


def probe_figure(results) -> Figure | None:
    """ID and OOD probe accuracy against layer (95% bands; layer 0 = the input; dashed: the
    untrained reference); the tunnel shaded, the best transfer layer marked."""
    if not results.has("probe_acc"):
        return None
    fig, ax, n = _tunnel_axes(results, height=5.2)
    for i, dataset in enumerate(results.datasets):
        is_id = dataset == results.id_dataset
        label = "ID " + results.summary.get("data", "") if is_id else "OOD " + dataset
        _plot(ax, results, "probe_acc", dataset, label=label, colour=f"C{i}", lw=2 if is_id else 1.5)
    best = results.summary.get(BEST_TRANSFER_LAYER)
    if best:
        ax.axvline(best, color="k", ls="--", lw=1, label=f"best layer to transfer from ({best})")
    ax.set_ylabel("linear probe accuracy (test, 95% interval)")
    ax.set_title(results.summary.get("model", ""))
    _layer_axis(ax, results)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncol=1, frameon=False)
    return fig


def normalised_probe_figure(results) -> Figure | None:
    """Each dataset's probe accuracy divided by its own maximum over the layers (Harun et al.'s
    view): where each curve peaks and how much of its peak it keeps at the last layer."""
    if not results.has("probe_acc"):
        return None
    fig, ax, n = _tunnel_axes(results, height=4.2)
    for i, dataset in enumerate(results.datasets):
        curve = results.interval("probe_acc", dataset)
        peak = curve.value.max()
        if not peak > 0:
            continue
        is_id = dataset == results.id_dataset
        ax.plot(curve.layer, curve.value / peak, marker="o", ms=4, color=f"C{i}",
                label="ID" if is_id else "OOD " + dataset, lw=2 if is_id else 1.5)
    ax.set_ylabel("probe accuracy / its maximum (test)")
    _layer_axis(ax, results)
    ax.legend(fontsize=8)
    return fig


def rank_figure(results) -> Figure | None:
    """Numerical and effective rank against layer (test split)."""
    metrics = [m for m in ("rank", "erank") if results.has(m)]
    if not metrics:
        return None
    fig, ax, n = _tunnel_axes(results, height=4)
    for i, m in enumerate(metrics):
        _plot(ax, results, m, label=presentation(m).title, colour=f"C{i}")
    ax.set_ylabel("rank of the representation (test)")
    ax.set_yscale("log")
    _layer_axis(ax, results)
    ax.legend(fontsize=8)
    return fig


def collapse_figure(results) -> Figure | None:
    """NC1, CDNV (log scale) and NCC accuracy (train and test) against layer."""
    panels = [m for m in ("nc1", "cdnv", "ncc_acc") if results.has(m)]
    if not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, m in zip(axes[0], panels):
        _curve_panel(ax, results, m)
    return fig


def _curve_panel(ax, results, metric: str) -> None:
    """One metric against layer on its train and test splits (those measured), as its
    registered presentation says: title, log scale, tunnel shaded."""
    shown, n = presentation(metric), len(results.points)
    _shade_tunnel(ax, results, n)
    for i, split in enumerate(("train", "test")):
        _plot(ax, results, metric, split=split, label=split, colour=f"C{i}", ms=3)
    if shown.log_scale:
        ax.set_yscale("log")
    ax.set_title(shown.title, fontsize=10)
    _layer_axis(ax, results, "layer")
    ax.legend(fontsize=8)


def _generic(results, shape: str) -> list[str]:
    """The registered rows of ``shape`` in the run that no hand-drawn figure shows, in registration order."""
    return [row for row, shown in PRESENTATIONS.items()
            if shown.shape == shape and not shown.figure and results.has(row)]


def metrics_figure(results) -> Figure | None:
    """Every registered per-point metric of the run that no other figure draws (a metric
    registered without a figure of its own, e.g. the ridge proxy or tr Σ_W), a panel each."""
    rows = _generic(results, "curve")
    if not rows:
        return None
    columns = min(len(rows), 3)
    fig, axes = subplots(-(-len(rows) // columns), columns, figsize=(4 * columns, 3.6 * -(-len(rows) // columns)),
                         squeeze=False)
    for ax, row in zip(axes.ravel(), rows):
        _curve_panel(ax, results, row)
    for ax in axes.ravel()[len(rows):]:
        ax.set_axis_off()
    return fig


def matrices_figure(results) -> Figure | None:
    """Every registered points x points metric of the run that no other figure draws (e.g.
    full-data CKA), a heatmap each (test split)."""
    rows = _generic(results, "matrix")
    if not rows:
        return None
    fig, axes = subplots(1, len(rows), figsize=(5.4 * len(rows), 4.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        _heatmap(fig, ax, results.matrix(row), results, presentation(row).title, f"{presentation(row).title} (test)")
    return fig


def pc1_figure(results) -> Figure | None:
    """Share of variance on the first principal component against layer and, when measured,
    Nguyen et al.'s PC1 similarity between layers (|cos| of the PC1 scores, training split)."""
    if not results.has("pc1"):
        return None
    if not results.has("pc1_sim"):
        fig, ax, n = _tunnel_axes(results, height=3.6)
    else:
        fig, (ax, right) = subplots(1, 2, figsize=(11, 4.2), width_ratios=(1.4, 1))
        n = len(results.points)
        _shade_tunnel(ax, results, n)
        _heatmap(fig, right, results.matrix("pc1_sim", split="train"), results, "|cos| of PC1 scores",
                 "PC1 similarity (train)")
    _plot(ax, results, "pc1", colour="C3")
    ax.set_ylabel(f"{presentation('pc1').title} (test)")
    ax.set_ylim(0, 1)
    _layer_axis(ax, results)
    return fig


def _heatmap(fig: Figure, ax, mat, results, label: str, title: str) -> None:
    """A layers x layers matrix in [0, 1] (layer 0 = the input, when read)."""
    first = _first_layer(results) if results.input_point in mat.index or not results.input_point else 1
    n = len(mat)
    lo = first - 0.5
    im = ax.imshow(mat.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1, origin="lower",
                   extent=(lo, lo + n, lo, lo + n))
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)


NULL_LEVEL = 0.05  # a CKA cell with a permutation p-value at or above this is marked as not above the null


NULL_MARKS = (("cka_null", "×", "not above the permutation null", lambda p: p >= NULL_LEVEL),
              ("cka_random", "○", "not above the random networks", lambda p: p > NULL_LEVEL))  # p = (1 + b)/(K + 1)


def _mark_null(ax, results, mat) -> int:
    """Mark the cells of a CKA heatmap that are not above a null at :data:`NULL_LEVEL` (the diagonal
    is never marked): × for the permutation null (``cka_null``, p >= level), ○ for the
    re-initialised networks (``cka_random``, p > level: its p-values are ranks); returns how many marks."""
    first = _first_layer(results) if results.input_point in mat.index or not results.input_point else 1
    marked, said = 0, []
    for metric, symbol, meaning, not_above in NULL_MARKS:
        if not results.has(metric):
            continue
        p = results.matrix(metric).reindex(index=mat.index, columns=mat.columns).to_numpy(dtype=float)
        for i in range(len(p)):
            for j in range(len(p)):
                if i != j and np.isfinite(p[i, j]) and not_above(p[i, j]):
                    ax.text(first + j, first + i, symbol, ha="center", va="center", color="white", fontsize=7)
                    marked += 1
        said.append(f"{symbol} {meaning}")
    if said:
        ax.set_title(f"{ax.get_title()}; {', '.join(said)} (at {NULL_LEVEL:g})", fontsize=9)
    return marked


def cka_figure(results) -> Figure | None:
    """Minibatch CKA between every pair of probe points (layer 0 = the input, when read), and
    beside it, when measured, the same after removing each point's PC1 (Nguyen et al.); the cells
    not above the permutation null (``cka_null``) are marked ×, those not above the random
    networks (``cka_random``) ○."""
    if not results.has("cka"):
        return None
    cka = results.matrix("cka")
    if not results.has("cka_nopc1"):
        fig, ax = subplots(figsize=(5.4, 4.6))
        _heatmap(fig, ax, cka, results, "CKA", "minibatch CKA (test)")
        _mark_null(ax, results, cka)
        return fig
    fig, (ax, right) = subplots(1, 2, figsize=(10.8, 4.6))
    _heatmap(fig, ax, cka, results, "CKA", "minibatch CKA (test)")
    _mark_null(ax, results, cka)
    _heatmap(fig, right, results.matrix("cka_nopc1"), results, "CKA", "without each layer's PC1 (test)")
    return fig


FIGURES = {"probes": probe_figure, "probes_normalised": normalised_probe_figure, "rank": rank_figure,
           "collapse": collapse_figure, "pc1": pc1_figure, "cka": cka_figure, "metrics": metrics_figure,
           "matrices": matrices_figure}


def run_figures(results) -> dict[str, Figure]:
    """Every figure the run's metrics allow, by name."""
    out = {}
    for name, draw in FIGURES.items():
        fig = draw(results)
        if fig is not None:
            out[name] = fig
    return out


def save_figures(figures: dict[str, Figure], folder: str | Path, replace: Sequence[str] = ()) -> list[Path]:
    """Write each figure as ``NAME.png`` (150 dpi) and ``NAME.svg`` (one layout for both); return the PNG paths.

    ``replace`` names figures of an earlier run to delete first, so none of them outlives it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in replace:
        for fmt in ("png", "svg"):
            (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    pngs = []
    for name, fig in figures.items():
        for fmt in ("png", "svg"):
            def write(handle: IO[bytes], fig: Figure = fig, fmt: str = fmt) -> None:
                fig.savefig(handle, format=fmt, dpi=150)

            atomic_write(folder / f"{name}.{fmt}", write)
            fig.set_layout_engine("none")  # the layout the PNG computed serves the SVG: laid out once
        pngs.append(folder / f"{name}.png")
    return pngs


def _compare_rows(runs: Sequence, accuracy: Sequence[str | None]) -> list[str]:
    """The panel rows some run has the metrics for: ``accuracy``, ``ood`` (the mean probe accuracy
    over a run's OOD sets), ``ncc_train``, ``rank``, in that order."""
    ncc = any(r.has("ncc_acc") for r in runs)
    rows = [name for name, present in (("accuracy", any(accuracy)), ("ood", any(_ood_sets(r) for r in runs)),
                                       ("ncc_train", ncc), ("rank", any(r.has("rank") for r in runs))) if present]
    if not rows:
        raise ConfigError("none of the runs has probe, NCC or rank results to compare; analyse them with "
                          "--metrics including probe, ncc or rank")
    return rows


def _seed_lines(labels: Sequence[str], groups: Sequence[str | None]) -> list[tuple[str, list[int]]]:
    """One ``(label, member indices)`` per line to draw: runs sharing a group key are one line, labelled
    by the group's first run."""
    lines: list[tuple[str, list[int]]] = []
    seen: dict[str, int] = {}
    for i, (label, group) in enumerate(zip(labels, groups)):
        if group is None:
            lines.append((label, [i]))
        elif group in seen:
            lines[seen[group]][1].append(i)
        else:
            seen[group] = len(lines)
            lines.append((label, [i]))
    return lines


def _ood_sets(run) -> list[str]:
    """The OOD sets a run has probe curves for."""
    return [d for d in run.datasets if d != run.id_dataset] if run.has("probe_acc") else []


def _run_curve(run, kind: str, metric: str | None, split: str) -> np.ndarray:
    """One run's curve for a row of the compare figure (points 1 … last): ``metric`` on ``split``,
    or for ``ood`` the mean test probe accuracy over its OOD sets."""
    if kind == "ood":
        return np.mean([run.curve("probe_acc", d, with_input=False).to_numpy() for d in _ood_sets(run)], axis=0)
    return run.curve(metric, split=split, with_input=False).to_numpy()


def _seed_mean_curve(seeds: Sequence, kind: str, metric: str | None, split: str,
                     label: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean of a row's curve over the seeds and the half-width of its 95% Student-t interval."""
    from ..uncertainty import mean_ci

    curves = [_run_curve(run, kind, metric, split) for run in seeds]
    if len({len(c) for c in curves}) != 1:
        raise ConfigError(f"runs grouped as seeds of {label} have different numbers of points")
    stacked = np.stack(curves)
    mean_half = [mean_ci(stacked[:, j]) for j in range(stacked.shape[1])]
    return np.array([m for m, _ in mean_half]), np.array([h for _, h in mean_half])


def _seed_line_name(seeds: Sequence, label: str) -> str:
    """The legend entry of a line: its label, or the model and the number of seeds for a seed group."""
    return f"{seeds[0].summary.get('model', label)} ({len(seeds)} seeds)" if len(seeds) > 1 else label


def _plot_seed_line(row, mean: np.ndarray, half: np.ndarray, banded: bool, colour: str, name: str) -> None:
    """Draw the mean curve against layer index (left) and relative depth (right), with its band if ``banded``."""
    layers = np.arange(1, len(mean) + 1)
    for ax, x in ((row[0], layers), (row[1], layers / len(mean))):
        ax.plot(x, mean, marker="o", ms=3, color=colour, label=name)
        if banded:
            ax.fill_between(x, mean - half, mean + half, color=colour, alpha=0.2, lw=0)


def _mark_mean_tunnel_start(row, seeds: Sequence, points: int, colour: str) -> None:
    """A dotted line at the seeds' mean tunnel start on both panels, when every seed has one inside the curve."""
    starts = [run.summary.get(TUNNEL_START) for run in seeds]
    if all(s is not None for s in starts):
        start = float(np.mean(starts))
        if start < points:
            row[0].axvline(start, color=colour, ls=":", lw=1)
            row[1].axvline(start / points, color=colour, ls=":", lw=1)


def _label_compare_row(row, kind: str) -> None:
    """Axis labels, grid and legend of one row; numerical rank on a log scale."""
    ylabels = {"accuracy": "ID accuracy (test): probe, or NCC where marked",
               "ood": "OOD probe accuracy (test; mean over the OOD sets)", "ncc_train": "NCC accuracy (train)",
               "rank": "numerical rank (test)"}
    for ax, xlabel in zip(row, ("layer index", "relative depth (layer / points)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabels[kind])
        ax.grid(alpha=0.3)
        if kind == "rank":
            ax.set_yscale("log")
    row[0].legend(fontsize=8)


def compare_figure(runs: Sequence, labels: Sequence[str], groups: Sequence[str | None] | None = None) -> Figure:
    """ID probe accuracy (NCC accuracy for a run without probes), the mean OOD probe accuracy, NCC
    accuracy on the training split (Galanti et al.'s effective depth: where it reaches 1 − ε) and
    numerical rank of several runs, against layer index (left) and relative depth (right). Runs sharing a ``groups`` key
    (repeats with other training seeds) are drawn as their mean with a 95% Student-t band."""
    groups = list(groups) if groups is not None else [None] * len(runs)
    accuracy = [next((m for m in ("probe_acc", "ncc_acc") if r.has(m)), None) for r in runs]
    rows = _compare_rows(runs, accuracy)
    fig, axes = subplots(len(rows), 2, figsize=(11, 3.8 * len(rows)), squeeze=False)
    metric_of = {"ncc_train": ("ncc_acc", "train"), "rank": ("rank", "test"), "ood": ("probe_acc", "test")}
    lines = _seed_lines(labels, groups)
    for row, kind in zip(axes, rows):
        for colour, (label, members) in enumerate(lines):
            seeds = [runs[m] for m in members]
            metric, split = (accuracy[members[0]], "test") if kind == "accuracy" else metric_of[kind]
            if metric is None or not seeds[0].has(metric) or (kind == "ood" and not all(map(_ood_sets, seeds))):
                continue
            mean, half = _seed_mean_curve(seeds, kind, metric, split, label)
            name = _seed_line_name(seeds, label) + (" (NCC)" if kind == "accuracy" and metric == "ncc_acc" else "")
            _plot_seed_line(row, mean, half, len(seeds) > 1, f"C{colour}", name)
            if kind == rows[0]:
                _mark_mean_tunnel_start(row, seeds, len(mean), f"C{colour}")
        _label_compare_row(row, kind)
    banded = any(len(members) > 1 for _, members in lines)
    fig.suptitle("dotted lines: first layer within 5% of the final ID accuracy (τ = 0.95"
                 + ("; mean over seeds); bands: 95% interval over training seeds" if banded else ")"), fontsize=9)
    return fig


def inversion_grid(inv, max_images: int = 8) -> Figure:
    """Originals on top, then one row per point of reconstructions (first restart); each
    column shares the original's grey scale."""
    points = list(inv.reconstructions)
    n = min(max_images, len(inv.images))
    fig, axes = subplots(len(points) + 1, n, figsize=(1.3 * n + 1.2, 1.3 * (len(points) + 1)),
                         squeeze=False)
    rows = [("original", inv.images)] + [(p, inv.reconstructions[p][0]) for p in points]
    for r, (label, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            original = inv.images[c]
            ax.imshow(_displayable(batch[c]), cmap="gray" if batch[c].shape[0] == 1 else None,
                      vmin=float(original.min()), vmax=float(original.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"reconstructions from each layer ({inv.config.get('state', '')} model)", fontsize=9)
    return fig


def _displayable(x) -> np.ndarray:
    x = x.detach().cpu().float()
    if x.dim() == 3 and x.shape[0] == 3:  # RGB: scale jointly into [0, 1]
        x = (x - x.min()) / (x.max() - x.min() + 1e-12)
        return x.permute(1, 2, 0).numpy()
    return x.reshape(x.shape[-2], x.shape[-1]).numpy() if x.dim() >= 2 else x.reshape(1, -1).numpy()


__all__ = ["FIGURES", "compare_figure", "inversion_grid", "run_figures", "save_figures"]
