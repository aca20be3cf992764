"""The ``tunnelscope`` command line: a thin shell over the Python API.

Errors a user can cause print one line to standard error (``tunnelscope: error: ...``) and
exit with status 1 (2 for usage errors: a missing or malformed option), without a traceback.

Only click, rich and light tunnelscope modules are imported here; each command imports what it
needs (torch, pandas, matplotlib) when it runs, so that ``--help`` answers at once.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .cli_experiments import EXPERIMENT_COMMANDS
from .cli_support import (
    data_root_option,
    device_option,
    download_option,
    err_console,
    out_console,
    points_option,
    print_frame,
    print_table,
)
from .errors import CheckpointError, TunnelscopeError

# the demo's settings, re-exported: bench/ reads them here
from .experiments.demo import DEMO_DATA, DEMO_EPOCHS, DEMO_MODEL, DEMO_OOD, DEMO_QUICK_DATA, DEMO_QUICK_OOD  # noqa: F401

# examples for --metrics' help: the full list lives in the metric registry, which needs torch
METRIC_EXAMPLES = ("probe", "rank", "nc1", "cka")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tunnelscope")
def cli() -> None:
    """tunnelscope: what every layer of a deep network does to its data.

    \b
    Examples:
      tunnelscope demo
      tunnelscope datasets
      tunnelscope analyze --checkpoint runs/demo/checkpoints/step-0000936.pt --data "fashion-mnist[classes=0-4]" --out runs/a
      tunnelscope report runs/demo
      tunnelscope compare runs/demo runs/a
      tunnelscope train --model mlp-12x256 --data "fashion-mnist[classes=0-4]" --epochs 10 --out runs/mlp12
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)


@cli.command()
@data_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets(data_root: str | None, as_json: bool) -> None:
    """List the datasets, their modifiers, and whether each is available offline.

    \b
    Examples:
      tunnelscope datasets
      tunnelscope datasets --data-root ~/data --json
    """
    from .data import list_datasets

    rows = list_datasets(data_root)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="datasets (spec: NAME\\[modifier=value,...])")
    for col in ("name", "available", "where", "description"):
        table.add_column(col)
    for row in rows:
        status = "[green]yes[/]" if row["available"] else "[yellow]no[/]"
        table.add_row(row["name"], status, row["where"], row["description"])
    print_table(table)
    out_console.print("modifiers: classes=0-4, per_class=N, test_per_class=N, noise=F, size=S, channels=1|3, "
                      "aug=1, seed=K; mnist1d also n=N, data_seed=K; synthetic: train=N, test=N, n_classes=K, "
                      "size=S, channels=C, spread=F, seed=K")


@cli.command()
@click.option("--torchvision", "show_tv", is_flag=True, help="Also list torchvision's model names (tv:NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(show_tv: bool, as_json: bool) -> None:
    """List the model families, with probe-point counts of each example at 32x32 RGB.

    \b
    Examples:
      tunnelscope models
      tunnelscope models --torchvision
    """
    from .models import FAMILIES, torchvision_names

    rows: list[dict[str, Any]] = []  # JSON rows: one per family, then the torchvision names
    for family in FAMILIES:  # the example's point counts are declared (and tested): nothing is built here
        blocks, conv = family.example_points
        rows.append({"family": family.name, "example": family.example, "description": family.description,
                     "blocks": blocks, "conv": conv})
    if show_tv:
        rows.append({"torchvision": [f"tv:{n}" for n in torchvision_names()]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="model specs")
    for col in ("family", "example", "blocks", "conv", "description"):
        table.add_column(col)
    for row in rows:
        if "family" in row:
            table.add_row(row["family"], row["example"], str(row["blocks"] or "-"), str(row["conv"] or "-"),
                          row["description"])
    print_table(table)
    out_console.print("variants: vgg{11,13,16,19}[-wM], vggm{11,17}[-nopool][-wM], resnet{18,34}[-imagenet][-wM], "
                      "cifar-resnet-D[xK], vit-t[-pP][-dL], mlp-DxW, linear-mlp-DxW, convnet-LxH, tv:NAME, "
                      "timm:NAME[.TAG][-pP][-dL][-wW], hf:{vit,convnext}[-pP][-dL][-wW], hf:ORG/NAME",
                      markup=False)
    if show_tv:
        out_console.print(", ".join(rows[-1]["torchvision"]))


def _train_options(f):
    options = [
        click.option("--recipe", type=click.Choice(["sgd", "adamw"]), default=None,
                     help="sgd: momentum 0.9, wd 5e-4, lr 0.1, cosine; adamw: lr 1e-3, wd 0.05, warm-up + cosine, "
                          "label smoothing 0.1 (default: adamw for vit-* and linear-mlp-*, sgd otherwise)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Learning rate (default: the recipe's)."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
                     help="Weight decay (default: the recipe's)."),
        click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default=None,
                     help="Learning-rate schedule (default cosine; onecycle with sgd only)."),
        click.option("--warmup-epochs", type=click.FloatRange(min=0), default=None, help="Warm-up epochs (adamw)."),
        click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
                     help="Label smoothing (default: the recipe's)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads (default: torch's); recorded, since it changes the last digits of a run."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Checkpoint every K epochs."),
        click.option("--early-checkpoints/--no-early-checkpoints", default=True, show_default=True,
                     help="Checkpoints at steps 0, 1, 2, 4, 8, ... of the first epoch."),
        click.option("--dense-steps", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Also checkpoint every step 0..N (the first moments of training; 0: none)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--amp/--no-amp", default=None, help="bfloat16 autocast on CUDA (default: on with CUDA)."),
        data_root_option, download_option,
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
        click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on standard output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.option("--model", "model_spec", required=True, help="Model spec, e.g. mlp-12x256, vgg19-w0.5, resnet18.")
@click.option("--data", "data_spec", required=True, help="Dataset spec, e.g. 'fashion-mnist[classes=0-4]'.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@_train_options
def train(model_spec: str, data_spec: str, epochs: int, out: str, quiet: bool, as_json: bool, **kwargs) -> None:
    """Train a model and write checkpoints, run.json and history.csv to --out.

    \b
    Examples:
      tunnelscope train --model mlp-12x256 --data "fashion-mnist[classes=0-4]" --epochs 10 --out runs/mlp12
      tunnelscope train --model vggm11 --data "fashion-mnist[size=32,channels=3]" --epochs 1 --out runs/vggm11
      tunnelscope train --model resnet18 --data "cifar10[aug=1]" --recipe adamw --epochs 100 --out runs/r18 --download
      tunnelscope train --model mlp-12x256 --data "fashion-mnist[classes=0-4]" --out runs/mlp12 --resume
    """
    _run_training(model_spec, data_spec, epochs, Path(out), quiet, as_json, **kwargs)


def _run_training(model_spec: str, data_spec: str, epochs: int, out: Path, quiet: bool, as_json: bool,
                  **kwargs) -> None:
    from .train import train as train_fn

    bars = False if (quiet or as_json) else None
    result = train_fn(model_spec, data_spec, epochs, out, progress=bars, on_epoch=_epoch_logger(epochs, bars),
                      **kwargs)
    summary = {"out": str(result.out), "test_accuracy": result.test_accuracy,
               "final_checkpoint": str(result.final_checkpoint), "checkpoints": len(result.checkpoints),
               "history": str(result.out / "history.csv"), "run": str(result.out / "run.json")}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        _print_history(result.history)
        out_console.print(f"test accuracy [bold]{result.test_accuracy:.4f}[/] after {len(result.history)} epochs; "
                          f"{len(result.checkpoints)} checkpoints in {escape(str(result.out / 'checkpoints'))}")
        out_console.print(f"final checkpoint: {result.final_checkpoint}", markup=False)


def _epoch_logger(epochs: int, bars: bool | None):
    """One line per epoch on standard error where no progress bar is drawn (and output is not off)."""
    from .progress import should_show

    def log_epoch(row: dict) -> None:
        err_console.print(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
                          f"test acc {row['test_acc']:.4f}, {row['seconds']:.1f} s")

    return None if (bars is False or should_show(bars)) else log_epoch


def _print_history(history) -> None:
    table = Table(title="training history")
    for col in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
        table.add_column(col, justify="right")
    for row in history.to_dict("records"):
        table.add_row(str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_acc']:.4f}",
                      f"{row['test_loss']:.4f}", f"{row['test_acc']:.4f}", f"{row['lr']:.2e}", f"{row['seconds']:.1f}")
    print_table(table)


@cli.command()
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@data_root_option
def fetch(specs: tuple[str, ...], data_root: str | None) -> None:
    """Download datasets that torchvision can fetch (needs network access), so that every other
    command finds them offline.

    \b
    Examples:
      tunnelscope fetch cifar10 cifar100
      tunnelscope fetch svhn --data-root ~/data
    """
    from .data import load

    for spec in specs:
        ds = load(spec, root=data_root, download=True)
        out_console.print(f"{spec}: ready ({len(ds.train)} training and {len(ds.test)} test samples)")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--quick", is_flag=True, help="A 2-epoch run on 1000 images per class (OOD sets capped too), for tests.")
@device_option
@data_root_option
@download_option
@click.option("--overwrite", is_flag=True, help="Retrain and re-analyse even if --out already holds the demo.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard output.")
def demo(out: str, quick: bool, device: str, data_root: str | None, download: bool, overwrite: bool,
         quiet: bool, as_json: bool) -> None:
    """The main job on the embedded default: train vgg11-w0.125 (8 conv blocks, widths 8-64) on
    Fashion-MNIST classes 0-4 for 4 epochs, then analyse it with OOD sets Fashion-MNIST classes
    5-9 and digits, beside an untrained copy of the same architecture.

    Writes the training run (checkpoints, history) and the analysis (results.parquet,
    summary.json, config.json, figures/, report.html) to --out. A finished demo already
    in --out is reused; an interrupted training run is resumed.

    \b
    Examples:
      tunnelscope demo
      tunnelscope demo --quick --out /tmp/demo
      tunnelscope demo --json
    """
    from .experiments.demo import demo_settings, run_demo

    silent = quiet or as_json
    say = None if silent else (lambda text: err_console.print(text, markup=False))
    bars = False if silent else None
    run = run_demo(out, quick, device=device, data_root=data_root, download=download, overwrite=overwrite,
                   progress=bars, log=say, on_epoch=_epoch_logger(demo_settings(quick)[2], bars))
    _print_results(run.results, quiet, as_json, {"training": run.training_summary()})


def _analyze(model, data_spec: str, ood, metrics: str, settings, out: Path, overwrite: bool, **options):
    """Run :func:`tunnelscope.analyze` with ``settings`` and save the run directory (refusing a
    taken one first); ``options``: ``weights``, ``untrained_reference``. Under ``torchrun`` the
    processes share the passes and rank 0 alone writes; the others return None."""
    from .engine.analyze import analyze
    from .engine.distributed import launched_group
    from .report import save_run
    from .rundir import check_free

    check_free(out, overwrite)  # before the model runs, not after (every process: the same answer)
    with launched_group(settings.device) as world:
        if not world.leader:
            settings = settings.replace(progress=False)
        results = analyze(model, data_spec, ood=list(ood), metrics=metrics, settings=settings, **options)
    if not world.leader:
        return None
    save_run(results, out, overwrite=overwrite)
    return results


def _print_results(results, quiet: bool, as_json: bool, extra: dict | None = None) -> None:
    """The per-layer table, the headline numbers and the verdict; or JSON (with ``extra``); or nothing."""
    from .report import summary_lines
    from .results import column_dataset
    from .rundir import REPORT_FILE

    report = results.path / REPORT_FILE if results.path else None
    if as_json:
        from .io import jsonable

        click.echo(json.dumps(jsonable({**results.summary, "report": str(report) if report else None,
                                        "out": str(results.path) if results.path else None, **(extra or {})}),
                              indent=2, default=str))
        return
    if quiet:
        return
    table, ood = _layer_table(results)
    print_table(table)
    for i, c in enumerate(ood):
        out_console.print(f"OOD{i + 1} = {column_dataset(c)}", markup=False)
    for label, value in summary_lines(results.summary):
        out_console.print(f"{label}: {value}", markup=False)
    out_console.print(f"[bold]{escape(results.summary.get('verdict', ''))}[/]")
    if report:
        out_console.print(f"report: {report}", markup=False)


def _layer_table(results) -> tuple[Table, list[str]]:
    """The terminal's per-layer table: the ID probe with its interval, each OOD probe, then every
    metric whose registered presentation asks for a terminal column; and the OOD columns."""
    from .metrics import PRESENTATIONS, presentation
    from .results import column_dataset, column_metric, column_name, lower, upper

    layers = results.layer_table(intervals=True)
    ood = [c for c in (column_name("probe_acc", d) for d in results.datasets if d != results.id_dataset)
           if c in layers.columns]
    shown = {row: p for row, p in PRESENTATIONS.items() if p.terminal and row in layers.columns}
    names = {**{row: p.column for row, p in shown.items()}, **{c: f"OOD{i + 1}" for i, c in enumerate(ood)}}
    columns = list(dict.fromkeys(c for c in ["probe_acc", *ood, *shown] if c in names))
    table = Table(title="per layer, test split (layer 0 = the input; * = probe not converged)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("layer", justify="right")
    table.add_column("point", no_wrap=True)
    for c in columns:
        table.add_column(names[c], justify="right", no_wrap=True)
        if c == "probe_acc" and lower("probe_acc") in layers.columns:
            table.add_column("ID 95%", justify="right", no_wrap=True)
    t = results.table
    bad = t[(t.metric == "probe_converged") & (t.value < 1) & t.reference.isna()]
    unconverged = set(zip(bad.point, bad.dataset))

    def cells(row: dict, c: str) -> list[str]:
        text = f"{row[c]:.{presentation(column_metric(c)).digits}f}"
        dataset = column_dataset(c) or results.id_dataset
        text += " *" if c.startswith("probe_acc") and (row["point"], dataset) in unconverged else ""
        if c == "probe_acc" and lower("probe_acc") in row:
            return [text, f"{row[lower('probe_acc')]:.3f}-{row[upper('probe_acc')]:.3f}"]
        return [text]

    for row in layers.to_dict("records"):
        table.add_row(str(row["layer"]), row["point"], *(x for c in columns for x in cells(row, c)))
    return table, ood


def _metrics_help() -> str:
    return (f"Comma list of metrics, e.g. {','.join(METRIC_EXAMPLES)} (a wrong name lists them all); aliases "
            "nc/collapse; or default/all. Options in brackets: ncc[eps=0.05], cka[passes=10], ridge[alpha=0.01].")


@cli.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A checkpoint written by train.")
@click.option("--model", "model_spec", default=None,
              help="A model spec instead of --checkpoint (random init or --weights).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict for --model.")
@click.option("--data", "data_spec", required=True, help="ID dataset spec, e.g. 'fashion-mnist[classes=0-4]'.")
@click.option("--ood", multiple=True, help="An OOD dataset spec (repeat for several); adapted to the input shape.")
@click.option("--metrics", default="default", show_default=True, help=_metrics_help())
@points_option
@click.option("--reduce", default="pool2", show_default=True, help="pool2, poolK, gap, flatten or project:D.")
@click.option("--protocol", type=click.Choice(["lbfgs", "harun", "ridge"]), default="lbfgs", show_default=True,
              help="Linear probe protocol: lbfgs (standardised logistic regression run to convergence), harun "
                   "(the papers' AdamW protocol, a fixed budget), ridge (closed form).")
@click.option("--select", type=click.Choice(["last", "val", "test"]), default="last", show_default=True,
              help="Probe epoch selection; 'test' is the papers' behaviour and is labelled so.")
@click.option("--probe-epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Epochs of the harun protocol.")
@click.option("--probe-c", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fix the lbfgs probe's C (inverse L2 strength, scikit-learn's; fitted on every training row). "
                   "Default: chosen per point from 0.01, 0.1, 1, 10 by accuracy on a held-out 10% of the training "
                   "split, with the headline under each C in the report's sensitivity table.")
@click.option("--probe-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Probes per point (harun: other seeds; lbfgs/ridge: bootstrap resamples of the training rows); "
                   "their spread joins the intervals.")
@click.option("--resamples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples of the test samples behind every 95% interval (0: no intervals).")
@click.option("--untrained-reference", is_flag=True,
              help="Also analyse the same architecture re-initialised (seed --seed), drawn beside the model.")
@click.option("--no-input", "no_input", is_flag=True, help="Leave out layer 0 (the input, reduced like the layers).")
@click.option("--no-input-cache", "no_input_cache", is_flag=True,
              help="Compute layer 0's statistics even when an earlier analysis of the same samples kept them in "
                   "the user cache ($TUNNELSCOPE_CACHE); the results are the same, bit for bit.")
@click.option("--max-samples", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Samples read per split (a seeded subset; 0 for all).")
@click.option("--max-train", type=click.IntRange(min=1), default=None,
              help="Training samples per dataset for the probes (default: --max-samples, so that one pass per "
                   "ID split serves the statistics and the probes).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--ncc-eps", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="NCC train error at or below which a layer counts for the effective depth (Galanti et al.).")
@click.option("--cka-passes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shuffled passes over the test split feeding minibatch CKA (Nguyen et al. use 10).")
@click.option("--max-dim", type=click.IntRange(min=0), default=8000, show_default=True,
              help="Coordinates kept per point after the reduction (a seeded subset beyond it); 0: no cap, e.g. "
                   "NCC/CDNV on whole flattened maps with --reduce flatten --metrics probe,ncc,cdnv.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace analysis results already in --out.")
@data_root_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard output.")
def analyze(checkpoint, model_spec, weights, data_spec, ood, metrics, points, reduce, protocol, select, probe_epochs,
            probe_c, probe_seeds, resamples, untrained_reference, no_input, no_input_cache, max_samples, max_train,
            batch_size, ncc_eps, cka_passes, max_dim, seed, device, out, overwrite, data_root, quiet, as_json) -> None:
    """Analyse every layer of a model: probes in and out of distribution, rank, neural
    collapse, CKA; write results, figures and report.html to --out.

    \b
    Examples:
      tunnelscope analyze --checkpoint runs/demo/checkpoints/step-0000936.pt \\
          --data "fashion-mnist[classes=0-4]" --ood "fashion-mnist[classes=5-9]" --ood digits --out runs/a
      tunnelscope analyze --model vggm11 --data "fashion-mnist[size=32,channels=3]" --metrics rank,nc,cka --out runs/init
      tunnelscope analyze --checkpoint ck.pt --data cifar10 --metrics probe --protocol harun --probe-seeds 3 --json --out runs/b
    """  # noqa: E501  (click prints \b blocks verbatim: each example stays one line)
    if (checkpoint is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --checkpoint PATH or --model SPEC")
    if weights is not None and model_spec is None:
        raise click.UsageError("--weights goes with --model")
    if checkpoint is not None and not Path(checkpoint).is_file():  # before importing torch: seconds saved
        raise CheckpointError(f"checkpoint {checkpoint} does not exist; give a file written by 'tunnelscope train'")
    from .engine.settings import AnalysisSettings
    from .probes import ProbeConfig

    settings = AnalysisSettings.from_dict({
        "points": points, "reduce": reduce, "device": device, "data_root": data_root,
        "max_samples": max_samples or None, "max_train": max_train, "batch_size": batch_size, "seed": seed,
        "resamples": resamples,
        "include_input": not no_input, "input_cache": not no_input_cache, "ncc_eps": ncc_eps,
        "cka_passes": cka_passes, "max_dim": max_dim or None,
        "progress": False if (quiet or as_json) else None,
        "probe": ProbeConfig(protocol=protocol, select=select, epochs=probe_epochs, seed=seed, seeds=probe_seeds,
                             C=probe_c)})
    results = _analyze(checkpoint or model_spec, data_spec, ood, metrics, settings, Path(out), overwrite,
                       weights=weights, untrained_reference=untrained_reference)
    if results is not None:  # None on the other processes of a torchrun launch
        _print_results(results, quiet, as_json)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report's path and figure count as JSON.")
def report(run_dir: str, quiet: bool, as_json: bool) -> None:
    """Rebuild figures/ and report.html of a saved run (an analysis, an inversion or an
    experiment: dynamics, a monitored training, continual learning ...), without running a model.

    \b
    Examples:
      tunnelscope report runs/demo
    """
    from .rundir import kind_of

    if kind_of(run_dir) not in (None, "analysis", "training", "unknown"):
        from .experiments.base import refresh_experiment

        written = refresh_experiment(run_dir)
        page = next(p for p in written if p.name == "report.html")
        if as_json:
            click.echo(json.dumps({"report": str(page), "figures": sum(p.suffix == ".png" for p in written)}))
        elif not quiet:
            out_console.print(f"{kind_of(run_dir)} report {page}", markup=False)
        return
    from .report import refresh_report

    path, figures = refresh_report(run_dir, redraw=True)
    if as_json:
        click.echo(json.dumps({"report": str(path), "figures": figures}))
    elif not quiet:
        analysis = (Path(run_dir) / "summary.json").exists()
        out_console.print(f"{figures} figures and {path}" if analysis else f"inversion report {path}", markup=False)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="runs/compare", show_default=True,
              help="Folder for compare.png/.svg and compare.csv.")
@click.option("--label", "labels", multiple=True, help="A label per run (default: model and folder name).")
@click.option("--quiet", "-q", is_flag=True, help="No table.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison table as JSON.")
def compare(run_dirs, out, labels, quiet, as_json) -> None:
    """Overlay several saved runs (depths, widths, checkpoints) in one figure and one table,
    with layers aligned by index and by relative depth.

    \b
    Examples:
      tunnelscope compare runs/mlp6 runs/mlp12 --out runs/compare
      tunnelscope compare runs/a runs/b --label "epoch 1" --label "epoch 10"
    """
    from .report.compare import compare_runs

    summary, paths = compare_runs(run_dirs, out, labels or None)
    if as_json:
        click.echo(summary.to_json(orient="records", indent=2))
        return
    if quiet:
        return
    _print_frame(summary, "runs")
    out_console.print("wrote " + ", ".join(str(p) for p in paths), markup=False)


@cli.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A checkpoint written by train.")
@click.option("--model", "model_spec", default=None,
              help="Or a model spec (resnet18): its random initialisation, seeded by --seed, is inverted.")
@click.option("--data", "data_spec", required=True, help="Dataset spec; images are drawn from its test split.")
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True, help="How many test images.")
@points_option
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Gradient steps (default: InvertConfig's, 500 as in the paper).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random starts per image and layer (their spread is reported).")
@click.option("--starts", type=click.Choice(["badger", "diverse"]), default="badger", show_default=True,
              help="badger: every start near 0.7 (the paper's); diverse: restarts after the first uniform over the "
                   "images' value range, so that restarts begin far apart.")
@click.option("--tv", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a total-variation prior.")
@click.option("--no-blur", is_flag=True, help="Skip the 3x3 Gaussian blur after each step.")
@click.option("--refine-steps", type=click.IntRange(min=0), default=None,
              help="L-BFGS iterations at most on the embedding distance before non-uniqueness is judged; it stops "
                   "once every row is below m_r or has settled (default: InvertConfig's, 2000; 0: judge the "
                   "protocol's reconstruction, as the paper does).")
@click.option("--untrained/--no-untrained", default=True, show_default=True,
              help="Also invert a re-initialised copy of the model, side by side.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an inversion already in --out.")
@data_root_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no table.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer summary as JSON.")
def invert(checkpoint, model_spec, data_spec, images, points, steps, restarts, starts, tv, no_blur, refine_steps,
           untrained, seed, device, out, overwrite, data_root, quiet, as_json) -> None:
    """Reconstruct test images from each layer's full activations (Badger 2022), for the
    trained model and a re-initialised copy (or a model spec's random initialisation); write
    scores, figures and report.html.

    \b
    Examples:
      tunnelscope invert --checkpoint runs/demo/checkpoints/step-0000936.pt --data "fashion-mnist[classes=0-4]" \\
          --images 8 --out runs/demo
      tunnelscope invert --checkpoint ck.pt --data cifar10 --points conv --restarts 3 --steps 200 --out runs/inv
      tunnelscope invert --model resnet18 --data "synthetic[pattern=0,test=100]" --images 4 --out runs/inv-noise
    """
    if (checkpoint is None) == (model_spec is None):
        raise click.UsageError("give exactly one of --checkpoint and --model")
    if checkpoint is not None and not Path(checkpoint).is_file():  # before importing torch: seconds saved
        raise CheckpointError(f"checkpoint {checkpoint} does not exist; give a file written by 'tunnelscope train'")
    from .experiments.inversion import InvertConfig, invert_checkpoint, summarize_inversions
    from .rundir import REPORT_FILE

    out_path = Path(out)
    given = {k: v for k, v in (("steps", steps), ("refine_steps", refine_steps)) if v is not None}
    cfg = InvertConfig(restarts=restarts, starts=starts, tv_weight=tv, blur=not no_blur, seed=seed, **given)
    pts = points
    runs = invert_checkpoint(checkpoint or model_spec, data_spec, out_path, images=images, points=pts, config=cfg,
                             untrained=untrained, device=device, overwrite=overwrite, data_root=data_root,
                             progress=False if (quiet or as_json) else None)
    summary = summarize_inversions(runs)
    if as_json:
        click.echo(json.dumps({"out": str(out_path), "summary": summary}, indent=2))
    elif not quiet:
        table = Table(title="input reconstruction, mean over images (m_i: input distance)")
        for col in ("model", "layer", "point", "m_g", "m_i", "m_r", "non-unique", "undecided"):
            table.add_column(col, justify="right")
        for state, rows in summary.items():
            for r in rows:
                table.add_row(state, str(r["layer"]), r["point"],
                              *(f"{r[m]:.3g}" for m in ("m_g", "m_i", "m_r", "nonunique", "undecided")))
        print_table(table)
        if any(r["undecided"] > 0 for rows in summary.values() for r in rows):
            err_console.print(f"warning: some rows are undecided: their refinement stopped after {cfg.refine_steps} "
                              "iterations before m_g had settled (it was still falling); rerun with a larger "
                              "--refine-steps", markup=False)
        out_console.print(f"report: {out_path / REPORT_FILE}", markup=False)


SWEEP_ACTIONS = ("run", "status", "collect")


@cli.command()
@click.argument("first")
@click.argument("spec_file", required=False)
@click.option("--address", default=None,
              help="Run the cells as tasks on a Ray cluster (host:port, ray://host:port, or auto for one started on "
                   "this machine with `ray start --head`); default: local worker processes, no network service.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Cells running at once (default: as Ray schedules).")
@click.option("--device", default="auto", show_default=True, help="Device inside each cell (GPU cells: auto/cuda).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="collect: the Parquet (or .csv) file to write (default STORE/collected.parquet, "
                   "STORE/collected-ood.parquet with --level ood).")
@click.option("--level", type=click.Choice(["layer", "ood"]), default="layer", show_default=True,
              help="collect: layer = every analysis row (point x metric); ood = one row per cell x checkpoint x "
                   "OOD set with % retained, Pearson, alignment and the design variables, for `tunnelscope explain`.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no tables.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on standard output.")
def sweep(first: str, spec_file: str | None, address, max_concurrent, device, out, level, quiet, as_json) -> None:
    """Run a YAML sweep of cells (SPEC.yaml) locally or on a Ray cluster, or show its status, or collect its table.

    \b
    tunnelscope sweep SPEC.yaml          run every unfinished cell; write STORE/report.html
    tunnelscope sweep status SPEC.yaml   one row per cell: pending, running, dead, finished or failed
    tunnelscope sweep collect SPEC.yaml  every finished cell's rows in one tidy table
    tunnelscope sweep collect SPEC.yaml --level ood   one row per cell x checkpoint x OOD set

    \b
    Examples:
      tunnelscope sweep examples/mlp-depth-width.yaml
      tunnelscope sweep examples/harun-cifar.yaml --address ray://head:10001 --max-concurrent 8
      tunnelscope sweep collect examples/mlp-depth-width.yaml --out mlp.parquet
    """
    from .sweep import Store, SweepSpec

    action, path = (first, spec_file) if first in SWEEP_ACTIONS else ("run", first)
    if path is None or (first not in SWEEP_ACTIONS and spec_file is not None):
        raise click.UsageError("usage: tunnelscope sweep [run|status|collect] SPEC.yaml")
    spec = SweepSpec.load(path)
    store = Store(spec.store)
    if action == "status":
        status = store.status(spec)
        if as_json:
            click.echo(status.to_json(orient="records", indent=2))
        elif not quiet:
            _print_frame(status, f"sweep {spec.name}: {len(status)} cells in {spec.store}")
        return
    if action == "collect":
        _collect(spec, store, level, out, quiet, as_json)
        return
    from .report.sweep import write_sweep_report
    from .sweep.run import run_sweep

    outcome = run_sweep(spec, address=address, max_concurrent=max_concurrent, device=device,
                        progress=False if (quiet or as_json) else None)
    report = write_sweep_report(spec, store)
    summary = {"cells": len(spec.cells), "ran": len(outcome.ran), "already_finished": len(outcome.skipped),
               "failed": outcome.failed, "store": str(spec.store), "report": str(report)}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        out_console.print(f"sweep {spec.name}: {len(outcome.ran)} cells run, {len(outcome.skipped)} already finished, "
                          f"{len(outcome.failed)} failed", markup=False)
        for key, error in outcome.failed.items():
            out_console.print(f"  failed {key}: {error}", markup=False)
        out_console.print(f"report: {report}", markup=False)
    if outcome.failed:  # the one error line, whatever was printed above (even with --quiet or --json)
        key, error = next(iter(outcome.failed.items()))
        more = f" (and {len(outcome.failed) - 1} more)" if len(outcome.failed) > 1 else ""
        click.echo(f"tunnelscope: error: {len(outcome.failed)} of {len(spec.cells)} cells failed; cell {key}: "
                   f"{_one_line(error)}{more}; 'tunnelscope sweep status {spec.source or spec.name}' lists them",
                   err=True)
        raise click.exceptions.Exit(1)


def _collect(spec, store, level: str, out: str | None, quiet: bool, as_json: bool) -> None:
    """``sweep collect``: write the store's table at ``level`` and say what was written."""
    from .io import atomic_write
    from .sweep import collect

    table = collect(spec, level, store)
    target = Path(out) if out else spec.store / ("collected-ood.parquet" if level == "ood" else "collected.parquet")
    atomic_write(target, (lambda h: table.to_csv(h, index=False)) if target.suffix == ".csv"
                 else (lambda h: table.to_parquet(h, index=False)))
    cells = int(table["cell"].nunique()) if len(table) else 0
    hint = None
    if level == "ood" and len(table):
        from .sweep.ood_table import explain_arguments

        chosen, categorical = explain_arguments(table)
        options = [*(f"--vars {c}" for c in chosen), *(f"--categorical {c}" for c in categorical),
                   "--cluster cell", f"--out {spec.store / 'explain'}"]
        hint = f"tunnelscope explain {target} --target retained {' '.join(options)}" if chosen else None
    if as_json:
        click.echo(json.dumps({"rows": len(table), "cells": cells, "level": level, "out": str(target),
                               "explain": hint}))
    elif not quiet:
        out_console.print(f"{len(table)} rows from {cells} cells -> {target}", markup=False)
        if hint:
            out_console.print(f"explain it: {hint}", markup=False)


_print_frame = print_frame


def _one_line(text: object) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A library warning as the CLI shows it: one line, no source location."""
    return f"tunnelscope: warning: {_one_line(str(message))}\n"


for _command in EXPERIMENT_COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and a non-zero exit.

    An unexpected exception (a bug) is one line too, with exit status 70; ``TUNNELSCOPE_DEBUG=1``
    shows its traceback."""
    import os

    from . import interrupts

    interrupts.install()  # SIGTERM cleans up like Ctrl-C: temporary files go, a training run can resume
    warnings.formatwarning = _warning_line
    try:
        code = cli.main(args=argv, prog_name="tunnelscope", standalone_mode=False)
        if isinstance(code, int):  # a command's click.exceptions.Exit, returned in non-standalone mode
            return code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:  # one line, like every other error, and a pointer to the help
        command = exc.ctx.command_path if exc.ctx else "tunnelscope"
        click.echo(f"tunnelscope: error: {_one_line(exc.format_message())} (see '{command} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"tunnelscope: error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("tunnelscope: interrupted")
        return 130
    except TunnelscopeError as exc:
        click.echo(f"tunnelscope: error: {_one_line(exc)}", err=True)
        return 1
    except OSError as exc:
        click.echo(f"tunnelscope: error: {_one_line(exc.strerror or exc)}: {exc.filename or ''}".rstrip(": "), err=True)
        return 1
    except Exception as exc:  # a bug: say so in one line
        if os.environ.get("TUNNELSCOPE_DEBUG"):
            raise
        click.echo(f"tunnelscope: internal error: {type(exc).__name__}: {_one_line(exc)[:300]} (a bug: please "
                   "report it; TUNNELSCOPE_DEBUG=1 shows the traceback)", err=True)
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
