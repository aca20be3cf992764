"""CLI commands of the papers' experiments beyond one analysis: model agreement (Nguyen et
al.), interventions (Masarczyk et al., Nguyen et al.), continual learning (Masarczyk et al.)
and the dynamics of one training run. Registered on the ``tunnelscope`` group by
:mod:`tunnelscope.cli`; like it, each command imports torch-heavy modules only when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from .cli_support import (
    data_root_option,
    device_option,
    out_console,
    overwrite_option,
    points_option,
    print_frame,
    print_table,
)


# ----------------------------------------------------------------------------------------- agreement
@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data", "data_spec", required=True,
              help="Dataset spec the models were trained on (its classes and input shape must match theirs).")
@click.option("--group", "groups", multiple=True,
              help="The architecture of each model, in order; seeds of one architecture share it "
                   "(default: each model's spec).")
@click.option("--label", "labels", multiple=True, help="A label per model (default: spec and training seed).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=None,
              help="A seeded subset of the split, the one analyze draws (default: all of it).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the subset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--figure-groups", default=None,
              help="Two groups A,B for the per-class difference plot (default: the first two).")
@device_option
@data_root_option
@click.option("--out", type=click.Path(file_okay=False), default="runs/agreement", show_default=True,
              help="Folder for the CSV tables, agreement.png/.svg and config.json.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the model, pair and group tables as JSON.")
def agreement(models, data_spec, groups, labels, split, max_samples, seed, batch_size, figure_groups, device,
              data_root, out, overwrite, quiet, as_json) -> None:
    """Which examples and classes several models get wrong (Nguyen et al. 2021): accuracy with
    intervals, pairwise agreement and kappa, per-class differences between architectures set
    against the seed-to-seed spread, and the examples hard for all or for one architecture.

    \b
    Examples:
      tunnelscope agreement a0.pt a1.pt b0.pt b1.pt --data "fashion-mnist[classes=0-4]" --group mlp-4x64 --group mlp-4x64 --group mlp-8x64 --group mlp-8x64 --out runs/agree
      tunnelscope agreement ck1.pt ck2.pt --data cifar10 --max-samples 2000 --json
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    from .experiments.agreement import compare_predictions

    pair = None
    if figure_groups is not None:
        parts = [p.strip() for p in figure_groups.split(",")]
        if len(parts) != 2 or not all(parts):
            raise click.BadParameter(f"give two groups as A,B, not {figure_groups!r}", param_hint="--figure-groups")
        pair = (parts[0], parts[1])
    result = compare_predictions(list(models), data_spec, labels=labels or None, groups=groups or None, split=split,
                                 max_samples=max_samples, seed=seed, batch_size=batch_size, device=device,
                                 progress=False if (quiet or as_json) else None, data_root=data_root)
    paths = result.save(out, overwrite=overwrite, groups=pair)
    hard = {"all": len(result.hard_for_all()),
            **{g: len(result.hard_only_for(g)) for g in result.group_names if len(result.group_names) > 1}}
    if as_json:
        tables = {name: json.loads(getattr(result, name).to_json(orient="records"))
                  for name in ("models", "pairs", "group_pairs")}
        click.echo(json.dumps({"out": str(out), **tables, "hard_examples": hard}, indent=2))
        return
    if quiet:
        return
    print_frame(result.models, f"{len(result.targets)} {split} examples of {escape(data_spec)} (95% Wilson intervals)")
    print_frame(result.pairs[["model_a", "model_b", "agreement", "error_overlap", "kappa", "p_mcnemar"]],
                "model pairs")
    for row in result.group_pairs.itertuples():
        out_console.print(f"{row.group_a} vs {row.group_b}: accuracy {row.accuracy_a:.4f} vs {row.accuracy_b:.4f} "
                          f"(p over examples {row.p_examples:.3g}, over seeds {row.p_seeds:.3g}); per class, mean "
                          f"|difference| across groups {row.class_between_abs:.4f} vs between seeds "
                          f"{row.class_within_abs:.4f}; {row.classes_outside_seed_band} of {row.classes} classes "
                          "outside the seed band", markup=False)
    out_console.print("examples every model got wrong: " + str(hard.pop("all"))
                      + "".join(f"; wrong only for {g}: {n}" for g, n in hard.items()), markup=False)
    out_console.print(f"wrote {Path(out)} ({len(paths)} files)", markup=False)


# ------------------------------------------------------------------------------------- interventions
@click.group()
def intervene() -> None:
    """Interventions on a trained network: how far each layer's weights moved, and what
    resetting layers to initialisation or deleting residual blocks costs in test accuracy.

    \b
    Examples:
      tunnelscope intervene movement runs/mlp12 --out runs/mlp12/movement
      tunnelscope intervene reset runs/mlp12 --direction both --out runs/mlp12/resets
      tunnelscope intervene delete-blocks runs/res18 --range 6-9 --out runs/res18/deletions
    """


def _show_intervention(result, shown, title: str, paths, quiet: bool, as_json: bool) -> None:
    """Print an InterventionResult: its whole table as JSON, or the ``shown`` columns and the written files."""
    if as_json:
        click.echo(result.table.to_json(orient="records", indent=2))
    elif not quiet:
        print_frame(shown, title)
        out_console.print("wrote " + ", ".join(str(p) for p in paths), markup=False)


def _evaluation_options(f):
    """The options of a test-accuracy evaluation: sample cap, seed, batch size, device, data root."""
    for option in reversed([
        click.option("--max-samples", type=click.IntRange(min=1), default=None,
                     help="A seeded subset of the test split."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True),
        device_option, data_root_option]):
        f = option(f)
    return f


@intervene.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@points_option
@click.option("--head/--no-head", default=True, show_default=True,
              help="Also report the head (everything after the last probe point).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for movement.csv, interventions.png/.svg and config.json.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No table.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole table as JSON.")
def movement(run_dir: str, points: str, head: bool, out: str, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """How far each layer's weights moved from initialisation (and from the previous
    checkpoint), at every checkpoint of a training run (needs its step-0 checkpoint).

    \b
    Examples:
      tunnelscope intervene movement runs/mlp12 --out runs/mlp12/movement
    """
    from .experiments.interventions import InterventionResult, weight_movement

    result = InterventionResult.of(weight_movement(run_dir, points, include_head=head))
    paths = result.save(out, overwrite=overwrite)
    table = result.table
    last = table[table.step == table.step.max()]
    _show_intervention(result, last[["point", "layer", "parameters", "relative", "absolute", "step_relative"]],
                       f"weight movement at step {table.step.max()} (relative = ‖W_t − W_0‖ / ‖W_0‖)",
                       paths, quiet, as_json)


@intervene.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--checkpoint", default=None,
              help="In a run directory: a step number or a checkpoint file (default: the last).")
@click.option("--data", "data_spec", default=None, help="Dataset spec (default: the data the model was trained on).")
@click.option("--from-layer", "from_layers", type=click.IntRange(min=0), multiple=True,
              help="k (repeat; default every probe-point layer 1..L; L + 1 = the head alone, 0 = nothing).")
@click.option("--direction", type=click.Choice(["k..L", "1..k", "both"]), default="k..L", show_default=True,
              help="Reset layers k..L (from the top), 1..k (from the bottom), or each in turn.")
@click.option("--head/--no-head", default=True, show_default=True, help="With k..L, reset the head too.")
@click.option("--keep-buffers", is_flag=True, help="Keep the trained BatchNorm running statistics of reset layers.")
@points_option
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Initialisation checkpoint (default: step 0 of the same run).")
@_evaluation_options
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for reset.csv, interventions.png/.svg and config.json.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No table.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def reset(source, checkpoint, data_spec, from_layers, direction, head, keep_buffers, points, init, max_samples, seed,
          batch_size, device, data_root, out, overwrite, quiet, as_json) -> None:
    """Test accuracy after resetting layers k..L (or 1..k) to their values at initialisation.

    SOURCE is a training run directory or one of its checkpoints.

    \b
    Examples:
      tunnelscope intervene reset runs/mlp12 --out runs/mlp12/resets
      tunnelscope intervene reset runs/mlp12 --checkpoint 936 --direction both --no-head --out runs/i
    """
    from .experiments.interventions import InterventionResult, reset_layers

    step = int(checkpoint) if checkpoint is not None and checkpoint.isdigit() else checkpoint
    result = InterventionResult.of(reset_layers(
        source, data_spec, list(from_layers) or None, step, direction=direction, include_head=head,
        include_buffers=not keep_buffers, points=points, init=init, max_samples=max_samples, seed=seed,
        batch_size=batch_size, device=device, data_root=data_root))
    paths = result.save(out, overwrite=overwrite)
    table = result.table
    _show_intervention(result, table[["k", "point", "reset", "layers_reset", "accuracy"]],
                       f"reset to initialisation: trained {table.untouched_accuracy.iloc[0]:.4f}, "
                       f"initialisation {table.init_accuracy.iloc[0]:.4f} ({table.attrs['samples']} test samples)",
                       paths, quiet, as_json)


@intervene.command("delete-blocks")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--data", "data_spec", default=None, help="Dataset spec (default: the data the model was trained on).")
@click.option("--block", "blocks", multiple=True,
              help="A block deleted alone: a name (layer2.1) or layer index (repeat; default every deletable block).")
@click.option("--range", "ranges", multiple=True,
              help="Blocks deleted together: FIRST-LAST layer indices (e.g. a CKA block structure) or NAME:NAME "
                   "(repeat).")
@click.option("--no-singles", is_flag=True, help="Only the --range deletions, no block alone.")
@click.option("--projection", type=click.Choice(["skip", "keep"]), default="skip", show_default=True,
              help="Blocks with a projection shortcut: leave them alone, or delete their branch and keep the "
                   "projection.")
@_evaluation_options
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for deletion.csv, interventions.png/.svg and config.json.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No table.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def delete_blocks(checkpoint, data_spec, blocks, ranges, no_singles, projection, max_samples, seed, batch_size, device,
                  data_root, out, overwrite, quiet, as_json) -> None:
    """Test accuracy of a residual network with residual blocks deleted (only the skip
    connection left), one at a time and in ranges (Nguyen et al. 2021).

    CHECKPOINT is a checkpoint file or a run directory (its last checkpoint).

    \b
    Examples:
      tunnelscope intervene delete-blocks runs/res18 --out runs/res18/deletions
      tunnelscope intervene delete-blocks runs/res18/checkpoints/step-0003910.pt --range 6-9 --range 2-4 --out runs/d
    """
    from .experiments.interventions import InterventionResult
    from .experiments.interventions import delete_blocks as delete

    result = InterventionResult.of(delete(
        checkpoint, data_spec, [] if no_singles else (list(blocks) or None), ranges=list(ranges),
        projection=projection, max_samples=max_samples, seed=seed, batch_size=batch_size, device=device,
        data_root=data_root))
    paths = result.save(out, overwrite=overwrite)
    table = result.table
    _show_intervention(result, table[["deleted", "first_layer", "last_layer", "blocks", "kept", "accuracy", "drop"]],
                       f"residual blocks deleted: untouched accuracy {table.untouched_accuracy.iloc[0]:.4f} "
                       f"({table.attrs['samples']} test samples)", paths, quiet, as_json)


# ------------------------------------------------------------------------------------------ dynamics
@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_spec", default=None,
              help="ID dataset spec (default: the data the run was trained on, from run.json).")
@click.option("--ood", multiple=True, help="An OOD dataset spec (repeat for several); adapted to the input shape.")
@click.option("--metrics", default="default", show_default=True,
              help="Comma list of metrics, e.g. probe,rank,nc1 (a wrong name lists them all); or default/all.")
@click.option("--steps", default="all", show_default=True,
              help="Checkpoints to analyse: all, final, every:K (every K-th), log:N (about N spread evenly on "
                   "log(1 + step)) or a comma list of steps such as 0,1,2,16.")
@points_option
@click.option("--reduce", default="pool2", show_default=True, help="pool2, poolK, gap, flatten or project:D.")
@click.option("--protocol", type=click.Choice(["lbfgs", "harun", "ridge"]), default="lbfgs", show_default=True,
              help="Linear probe protocol (see 'tunnelscope analyze --help').")
@click.option("--resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples behind every 95% interval (0: no intervals).")
@click.option("--max-samples", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Samples read per split (a seeded subset; 0 for all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--heatmap", "heatmaps", multiple=True,
              help="A metric drawn as a layer x step heatmap (repeat; default probe_acc, on every dataset, and rank).")
@device_option
@data_root_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write (default: RUN_DIR/dynamics). Checkpoints already analysed there are skipped.")
@click.option("--overwrite", is_flag=True, help="Discard results already in --out (other settings) and start afresh.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-step table as JSON on standard output.")
def dynamics(run_dir, data_spec, ood, metrics, steps, points, reduce, protocol, resamples, max_samples, batch_size,
             seed, heatmaps, device, data_root, out, overwrite, quiet, as_json) -> None:
    """Analyse the checkpoints of one training run (the tunnel over training): per-step tables,
    steps.csv, layer x step heatmaps and the tunnel start against step, in RUN_DIR/dynamics.

    A second call with the same --out analyses only the checkpoints not yet done there.

    \b
    Examples:
      tunnelscope dynamics runs/mlp8 --ood "digits[size=28]" --steps log:8
      tunnelscope dynamics runs/mlp8 --ood "digits[size=28]" --steps all --max-samples 2000 --resamples 200
      tunnelscope dynamics runs/mlp8 --metrics rank,nc --steps 0,1,2,4,8,16 --heatmap rank --heatmap ncc_acc --out runs/nc
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    from .engine.settings import AnalysisSettings
    from .experiments.dynamics import analyze_run
    from .probes import ProbeConfig

    settings = AnalysisSettings(points=points, reduce=reduce, device=device, max_samples=max_samples or None,
                                probe=ProbeConfig(protocol=protocol, seed=seed), resamples=resamples,
                                batch_size=batch_size, seed=seed, data_root=data_root)
    result = analyze_run(run_dir, data_spec, ood=list(ood), metrics=metrics, steps=steps, out=out,
                         overwrite=overwrite, progress=False if (quiet or as_json) else None,
                         heatmaps=list(heatmaps) or None, settings=settings)
    if as_json:
        from .io import jsonable

        rows = result.steps.to_dict("records")
        click.echo(json.dumps(jsonable({"out": str(result.path), "steps": rows}), indent=2, default=str))
        return
    if quiet:
        return
    _print_steps(result.steps)
    figures = ", ".join(p.name for p in result.figures) or "none"
    out_console.print(f"{len(result.steps)} checkpoints in {result.path}; figures: {figures}", markup=False)


def _print_steps(steps) -> None:
    """One row per analysed checkpoint: epoch, model accuracy, tunnel start and mean % retained with intervals."""
    import math

    from rich import box
    from rich.table import Table

    from .results import lower, upper
    from .summary import MEAN_RETAINED, TUNNEL_START

    def number(value, digits: int) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    def interval(row: dict, key: str, digits: int) -> str:
        return f"{number(row.get(lower(key)), digits)}-{number(row.get(upper(key)), digits)}"

    table = Table(title="per checkpoint (tunnel start at τ = 0.95; 95% intervals)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col in ("step", "epoch", "model acc", "tunnel start", "95%", "% retained", "95% "):
        table.add_column(col, justify="right", no_wrap=True)
    for row in steps.to_dict("records"):
        table.add_row(str(row["step"]), number(row.get("epoch"), 3), number(row.get("model_accuracy"), 3),
                      number(row.get(TUNNEL_START), 0), interval(row, TUNNEL_START, 0),
                      number(row.get(MEAN_RETAINED), 1), interval(row, MEAN_RETAINED, 1))
    print_table(table)


# ------------------------------------------------------------------------------------ cross-model CKA
@click.command("cross-cka")
@click.argument("model_a")
@click.argument("model_b")
@click.option("--data", "data_spec", required=True, help="Dataset spec both models take as input.")
@points_option
@click.option("--reduce", default="pool2", show_default=True, help="pool2, poolK, gap, flatten or project:D.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Samples read (a seeded subset; 0 for all).")
@click.option("--batch-size", type=click.IntRange(min=4), default=256, show_default=True,
              help="The CKA minibatch size n.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--cka-passes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over the split feeding minibatch CKA, each after the first shuffled (Nguyen et al. use 10).")
@device_option
@data_root_option
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for cross_cka.csv, cross_cka.png/.svg and config.json.")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix and the settings as JSON.")
def cross_cka(model_a, model_b, data_spec, points, reduce, split, max_samples, batch_size, seed, cka_passes, device,
              data_root, out, overwrite, quiet, as_json) -> None:
    """Minibatch CKA between every layer of MODEL_A and every layer of MODEL_B, read on the
    same batches (Nguyen et al. 2021): which layers of two models (of any depths, drawn at
    their relative depth) represent the data alike. MODEL_A/B are checkpoints or model specs.

    \b
    Examples:
      tunnelscope cross-cka runs/mlp6/checkpoints/step-0002340.pt runs/mlp12/checkpoints/step-0002340.pt --data "fashion-mnist[classes=0-4]" --out runs/cross
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    from .engine.settings import AnalysisSettings
    from .experiments.cross_cka import cross_cka as run_cross_cka

    settings = AnalysisSettings(points=points, reduce=reduce, batch_size=batch_size, device=device,
                                max_samples=max_samples or None, seed=seed, data_root=data_root,
                                progress=False if (quiet or as_json) else None, cka_passes=cka_passes)
    result = run_cross_cka(model_a, model_b, data_spec, split=split, settings=settings)
    paths = result.save(out, overwrite=overwrite)
    matrix, best = result.matrix, result.best_matches()
    if as_json:
        click.echo(json.dumps({"out": str(out), "settings": result.config,
                               "matrix": json.loads(matrix.to_json(orient="split")),
                               "best_match": dict(zip(best["point_a"], best["point_b"]))}, indent=2))
        return
    if quiet:
        return
    columns = [f"A point ({matrix.index.name})", f"most similar B point ({matrix.columns.name})", "CKA"]
    print_frame(best.set_axis(columns, axis=1),
                f"minibatch CKA across models, {result.config['samples']} {split} samples")
    out_console.print(f"wrote {Path(out)} ({len(paths)} files)", markup=False)


# ------------------------------------------------------------------------------------------- explain
@click.command()
@click.argument("table", type=click.Path(dir_okay=False))
@click.option("--target", required=True, help="The metric column to explain (numeric).")
@click.option("--vars", "variables", multiple=True,
              help="A design-variable column; repeat it (default: every other column with 2 to 20 distinct values).")
@click.option("--categorical", multiple=True, help="A variable to one-hot encode rather than order; repeat it.")
@click.option("--pair", default=None, help="A variable whose levels are compared on paired rows.")
@click.option("--pair-on", "pair_on", multiple=True,
              help="A column that must be equal within a pair; repeat it (default: every other variable).")
@click.option("--l1-normalise", is_flag=True, help="Divide the SHAP slopes by the sum of their absolute values.")
@click.option("--cluster", default=None,
              help="A column whose equal values mark rows that are not independent (e.g. cell: the OOD sets of one "
                   "sweep cell): means and intervals over cluster means, held-out R² over whole clusters.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for the CSV tables, explain.png/.svg and config.json.")
@overwrite_option
@click.option("--json", "as_json", is_flag=True, help="Print the tables and the SHAP-model R² as JSON.")
def explain(table, target, variables, categorical, pair, pair_on, l1_normalise, cluster, out, overwrite,
            as_json) -> None:
    """Which design variables explain a metric across a sweep (Harun et al. 2024): group means
    with 95% t intervals, paired Wilcoxon tests with Cliff's delta, and SHAP slopes of a
    gradient-boosted model (needs shap: pip install 'tunnelscope[explain]').

    \b
    Examples:
      tunnelscope explain results.csv --target pct_retained --vars augment --vars resolution --vars arch --categorical arch --pair augment --out runs/explain
      tunnelscope explain results.parquet --target pearson --l1-normalise --out runs/explain --json
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    from .experiments.explain import explain as explain_table
    from .experiments.explain import read_table

    result = explain_table(read_table(table), target, variables=list(variables) or None, categorical=categorical,
                           pair=pair, pair_on=list(pair_on) or None, l1_normalise=l1_normalise, cluster=cluster)
    paths = result.save(out, overwrite=overwrite)
    if as_json:
        tables = {"group_means": result.group_means, "slopes": result.slopes, "paired": result.paired}
        shap_info = result.config["shap"]
        click.echo(json.dumps({"out": str(out), "r2": shap_info["r2"], "r2_cv": shap_info["r2_cv"],
                               **{name: None if frame is None else json.loads(frame.to_json(orient="records"))
                                  for name, frame in tables.items()}}, indent=2))
        return
    over = f", over {cluster} means" if cluster else ""
    print_frame(result.group_means, f"{target}: mean per level (95% Student t intervals{over})")
    if result.paired is not None:
        print_frame(result.paired[["level_a", "level_b", "n_pairs", "mean_difference", "p_wilcoxon", "cliffs_delta",
                                   "magnitude"]], f"paired comparison of {pair}")
    shap_info = result.config["shap"]
    print_frame(result.slopes, f"SHAP slopes (model R² {shap_info['r2']:.3f} in-sample, "
                               f"{shap_info['r2_cv']:.3f} on held-out {'clusters' if cluster else 'rows'})")
    out_console.print(f"wrote {Path(out)} ({len(paths)} files)", markup=False)


# ----------------------------------------------------------------------------------- continual learning
@click.command()
@click.option("--model", "model_specs", required=True, multiple=True,
              help="Model spec, e.g. mlp-6x128, vgg19-w0.5, resnet18; repeat it (one architecture at several depths) "
                   "to measure forgetting against depth.")
@click.option("--task1", required=True, help="Task 1 dataset spec, e.g. 'fashion-mnist[classes=0-4]'.")
@click.option("--task2", required=True,
              help="Task 2 dataset spec with as many classes and the same inputs, e.g. 'fashion-mnist[classes=5-9]'.")
@click.option("--heads", type=click.Choice(["per-task", "shared"]), default="per-task", show_default=True,
              help="per-task: task 2 trains a fresh classifier head and each task is scored through its own (the "
                   "papers' protocol); shared: one head serves both tasks.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Training epochs per task.")
@click.option("--split-at", type=click.IntRange(min=1), default=None,
              help="Probe point (1 = the first) where the extractor ends (default: M1's tunnel start on task 1; one "
                   "model only).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=5, show_default=True,
              help="Epochs of training E2+T1's tunnel on task 1 with E2 frozen (0: skip).")
@points_option
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", "seeds", type=click.IntRange(min=0), multiple=True, default=(0,), show_default=True,
              help="Training seed; repeat it, with several models, for an interval over seeds.")
@device_option
@click.option("--out", type=click.Path(file_okay=False), default="runs/continual", show_default=True,
              help="Directory to write (M1 and M2 runs, swaps.csv, forgetting.csv, continual.png, config.json; with "
                   "several models one such folder per run under runs/, and depth.csv, depth_runs.csv, "
                   "depth_layers.csv, continual-depth.png).")
@click.option("--overwrite", is_flag=True, help="Replace a continual-learning run already in --out.")
@data_root_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print the tables and the split as JSON.")
def continual(model_specs: tuple[str, ...], task1: str, task2: str, heads: str, epochs: int, split_at: int | None,
              finetune_epochs: int, points: str, batch_size: int, seeds: tuple[int, ...], device: str, out: str,
              overwrite: bool, data_root: str | None, quiet: bool, as_json: bool) -> None:
    """Train on task 1 (M1), then on task 2 (M2); swap the extractor and the tunnel of the two
    models and report each combination's accuracy on both tasks (Masarczyk et al. 2023), and
    the per-layer forgetting of task 1. With several --model, run the experiment for each (and
    each --seed) and tabulate the network's forgetting of task 1 against depth.

    \b
    Examples:
      tunnelscope continual --model mlp-6x128 --task1 "fashion-mnist[classes=0-4]" --task2 "fashion-mnist[classes=5-9]" --epochs 3
      tunnelscope continual --model vgg11-w0.25 --task1 "fashion-mnist[classes=0-4]" --task2 "fashion-mnist[classes=5-9]" --split-at 4 --out runs/cl
      tunnelscope continual --model mlp-3x64 --model mlp-6x64 --model mlp-12x64 --task1 "fashion-mnist[classes=0-4]" --task2 "fashion-mnist[classes=5-9]" --epochs 3 --out runs/cl-depth
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    options: dict[str, Any] = {"epochs": epochs, "finetune_epochs": finetune_epochs, "points": points,
                               "device": device, "data_root": data_root, "batch_size": batch_size, "heads": heads,
                               "progress": False if (quiet or as_json) else None, "overwrite": overwrite}
    if len(model_specs) > 1 or len(seeds) > 1:
        _continual_depth(model_specs, seeds, task1, task2, out, split_at, options, quiet, as_json)
        return
    from .experiments.continual import continual as run_continual

    result = run_continual(model_specs[0], task1, task2, split_at=split_at, out=out, seed=seeds[0], **options)
    if as_json:
        _print_json({"out": str(out), "split": {"layer": result.split_layer, "point": result.split_point,
                                                "source": result.split_source, "reason": result.split_reason},
                     "swaps": result.swaps.reset_index().to_dict("records"),
                     "forgetting": result.forgetting.to_dict("records"),
                     "checkpoints": {"M1": str(result.m1_checkpoint), "M2": str(result.m2_checkpoint)}})
    elif not quiet:
        _print_continual(result, out)


def _print_json(value: object) -> None:
    from .io import jsonable

    click.echo(json.dumps(jsonable(value), indent=2))


def _print_continual(result, out: str) -> None:
    """The swap table and the layer that forgot most, on standard output."""
    import math

    from rich import box
    from rich.table import Table

    table = Table(title=f"test accuracy, extractor (E) and tunnel (T) of M1 and M2 swapped at layer "
                        f"{result.split_layer} ({result.split_point}), {result.config['heads']} heads",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("combination", "task 1", "task 2"):
        table.add_column(col, justify="left" if col == "combination" else "right", no_wrap=True)
    for name, row in result.swaps.iterrows():
        cells = (row["task1_acc"], row["task2_acc"])
        table.add_row(str(name), *(f"{v:.4f}" if math.isfinite(v) else "-" for v in cells))
    print_table(table)
    out_console.print(f"split: {result.split_reason}", markup=False)
    worst = result.forgetting.iloc[int(result.forgetting["forgetting"].to_numpy().argmax())]
    out_console.print(f"most forgetting at layer {worst['layer']} ({worst['point']}): task-1 probe accuracy "
                      f"{worst['acc_M1']:.4f} -> {worst['acc_M2']:.4f}", markup=False)
    out_console.print(f"wrote {Path(out) / 'swaps.csv'}, forgetting.csv, continual.png, config.json", markup=False)


def _continual_depth(models: tuple[str, ...], seeds: tuple[int, ...], task1: str, task2: str, out: str,
                     split_at: int | None, options: dict, quiet: bool, as_json: bool) -> None:
    """``continual`` over several models (and seeds): forgetting against depth."""
    from .experiments.continual_depth import continual_depth

    result = continual_depth(models, task1, task2, seeds=seeds, out=out, split_at=split_at, **options)
    if as_json:
        _print_json({"out": str(out), "depth": result.depth.to_dict("records"),
                     "runs": result.runs.to_dict("records")})
    elif not quiet:
        columns = ["model", "probe_points", "seeds", "forgetting", "forgetting_lo", "forgetting_hi", "task1_M1",
                   "task2_M2"]
        from .uncertainty import LEVEL

        print_frame(result.depth[columns], f"forgetting of task 1 against depth ({options['heads']} heads; "
                                           f"task-1 accuracy of M1 minus M2, {LEVEL:.0%} interval)")
        out_console.print(f"wrote {Path(out) / 'depth.csv'}, depth_runs.csv, depth_layers.csv, continual-depth.png, "
                          "and one continual experiment per run under runs/", markup=False)


# ---------------------------------------------------------------------------------------- reproduce
@click.command()
@click.argument("paper")
@click.option("--scale", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True,
              help="tiny: synthetic stand-ins of the same shapes and class counts (minutes on a laptop); full: the "
                   "paper's data and models.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the sweep store and report, the inversion (default: runs/reproduce/PAPER-SCALE).")
@click.option("--address", default=None, help="Run the sweep's cells as tasks on a Ray cluster (ray://HOST:10001).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Cells running at once.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print what ran and where as JSON.")
def reproduce(paper, scale, out, address, max_concurrent, device, quiet, as_json) -> None:
    """Run one paper's recipe (examples/papers/PAPER.yaml: masarczyk, harun, galanti, nguyen,
    badger): its sweep and report, or its training and inversion. Run again to resume.

    \b
    Examples:
      tunnelscope reproduce nguyen --scale tiny
      tunnelscope reproduce masarczyk --scale full --address ray://head:10001 --max-concurrent 8
      tunnelscope reproduce examples/papers/galanti.yaml --out runs/galanti
    """
    from .experiments.reproduce import reproduce as run_recipe

    done = run_recipe(paper, scale, out, address=address, max_concurrent=max_concurrent, device=device,
                      progress=False if (quiet or as_json) else None)
    if as_json:
        click.echo(json.dumps(done, indent=2))
    elif not quiet:
        reports = [part["report"] for part in (done.get("sweep"), done.get("invert")) if part]
        out_console.print(f"{done['paper']} at scale {scale}: {', '.join(reports)}", markup=False)


EXPERIMENT_COMMANDS: list[click.Command] = [agreement, cross_cka, intervene, dynamics, continual, explain, reproduce]

__all__ = ["EXPERIMENT_COMMANDS", "agreement", "continual", "cross_cka", "dynamics", "explain", "intervene",
           "reproduce"]
