"""The ``tunnelscope`` command line: a thin shell over the Python API.

Errors a user can cause print one line to standard error and exit with status 1 (2 for
usage errors), without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import TunnelscopeError

out_console = Console()
err_console = Console(stderr=True)

DEMO_MODEL = "mlp-12x256"
DEMO_DATA = "fashion-mnist[classes=0-4]"
DEMO_QUICK_DATA = "fashion-mnist[classes=0-4,per_class=1000,test_per_class=500]"
DEMO_EPOCHS, DEMO_QUICK_EPOCHS = 10, 2

data_root_option = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                                help="Folder searched first for dataset files (default: $TUNNELSCOPE_DATA).")
download_option = click.option("--download", is_flag=True,
                               help="Let torchvision download missing datasets (needs network access).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tunnelscope")
def cli() -> None:
    """tunnelscope: what every layer of a deep network does to its data.

    \b
    Examples:
      tunnelscope demo
      tunnelscope datasets
      tunnelscope train --model mlp-12x256 --data "fashion-mnist[classes=0-4]" --epochs 10 --out runs/mlp12
    """


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
    out_console.print(table)
    out_console.print("modifiers: classes=0-4, per_class=N, test_per_class=N, size=S, channels=1|3, aug=1, "
                      "seed=K; mnist1d also n=N, data_seed=K")


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
    from .models import FAMILIES, build, torchvision_names

    rows = []
    for family in FAMILIES:
        shape = (3, 32, 32)
        model = build(family.example, 10, shape) if family.name != "tv" else None
        counts = {k: len(v) for k, v in model.probe_sets.items()} if model is not None else {}
        rows.append({"family": family.name, "example": family.example, "description": family.description,
                     "blocks": counts.get("blocks"), "conv": counts.get("conv")})
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
    out_console.print(table)
    out_console.print("variants: vgg{11,13,16,19}[-wM], vggm{11,17}[-nopool][-wM], resnet{18,34}[-imagenet][-wM], "
                      "mlp-DxW, convnet-LxH, tv:NAME")
    if show_tv:
        out_console.print(", ".join(rows[-1]["torchvision"]))


def _train_options(f):
    options = [
        click.option("--recipe", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
                     help="sgd: momentum 0.9, wd 5e-4, lr 0.1, cosine; adamw: lr 1e-3, wd 0.05, warm-up + cosine, "
                          "label smoothing 0.1."),
        click.option("--lr", type=float, default=None, help="Learning rate (default: the recipe's)."),
        click.option("--weight-decay", type=float, default=None, help="Weight decay (default: the recipe's)."),
        click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default=None,
                     help="Learning-rate schedule (default cosine; onecycle with sgd only)."),
        click.option("--warmup-epochs", type=float, default=None, help="Warm-up epochs (adamw)."),
        click.option("--label-smoothing", type=float, default=None, help="Label smoothing (default: the recipe's)."),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--checkpoint-every", type=int, default=1, show_default=True, help="Checkpoint every K epochs."),
        click.option("--early-checkpoints/--no-early-checkpoints", default=True, show_default=True,
                     help="Checkpoints at steps 0, 1, 2, 4, 8, ... of the first epoch."),
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
@click.option("--epochs", type=int, default=10, show_default=True)
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
    from .progress import should_show
    from .train import train as train_fn

    def log_epoch(row: dict) -> None:  # one line per epoch where no progress bar is drawn
        err_console.print(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
                          f"test acc {row['test_acc']:.4f}, {row['seconds']:.1f} s")

    bars = False if (quiet or as_json) else None
    on_epoch = None if (quiet or as_json or should_show(bars)) else log_epoch
    result = train_fn(model_spec, data_spec, epochs, out, progress=bars, on_epoch=on_epoch, **kwargs)
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


def _print_history(history) -> None:
    table = Table(title="training history")
    for col in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"):
        table.add_column(col, justify="right")
    for row in history.to_dict("records"):
        table.add_row(str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_acc']:.4f}",
                      f"{row['test_loss']:.4f}", f"{row['test_acc']:.4f}", f"{row['lr']:.2e}", f"{row['seconds']:.1f}")
    out_console.print(table)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--quick", is_flag=True, help="A 2-epoch run on 1000 images per class, for tests.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@data_root_option
@download_option
@click.option("--overwrite", is_flag=True, help="Retrain even if --out already holds a finished demo run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on standard output.")
def demo(out: str, quick: bool, device: str, data_root: str | None, download: bool, overwrite: bool,
         quiet: bool, as_json: bool) -> None:
    """The main job on the embedded default: train mlp-12x256 on Fashion-MNIST classes 0-4.

    Trains for 10 epochs with checkpoints (log-spaced in the first epoch, then every epoch).
    A finished demo run already in --out is reused; an interrupted one is resumed.

    \b
    Examples:
      tunnelscope demo
      tunnelscope demo --quick --out /tmp/demo
    """
    from .train.loop import RESUME_FILE, RUN_FILE

    out_path = Path(out)
    data_spec = DEMO_QUICK_DATA if quick else DEMO_DATA
    epochs = DEMO_QUICK_EPOCHS if quick else DEMO_EPOCHS
    run_file = out_path / RUN_FILE
    resume = False
    if run_file.is_file() and not overwrite:
        run = json.loads(run_file.read_text())
        same = run.get("config", {}).get("data") == data_spec and run.get("config", {}).get("epochs") == epochs
        if same and run.get("status") == "finished":
            if not quiet:
                err_console.print(f"{out_path} already holds the finished demo run (test accuracy "
                                  f"{run['final']['test_acc']:.4f}); reusing it. Use --overwrite to retrain.", markup=False)
            if as_json:
                click.echo(json.dumps({"out": str(out_path), "test_accuracy": run["final"]["test_acc"],
                                       "final_checkpoint": str(out_path / run["final_checkpoint"]), "reused": True}))
            return
        resume = same and (out_path / RESUME_FILE).is_file()
        overwrite = not resume
    if not quiet and not as_json:
        err_console.print(f"demo: training {DEMO_MODEL} on {data_spec} for {epochs} epochs -> {out_path}", markup=False)
    _run_training(DEMO_MODEL, data_spec, epochs, out_path, quiet, as_json, device=device, data_root=data_root,
                  download=download, resume=resume, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and a non-zero exit."""
    try:
        cli.main(args=argv, prog_name="tunnelscope", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("tunnelscope: interrupted")
        return 130
    except TunnelscopeError as exc:
        click.echo(f"tunnelscope: error: {exc}", err=True)
        return 1
    except OSError as exc:
        click.echo(f"tunnelscope: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
