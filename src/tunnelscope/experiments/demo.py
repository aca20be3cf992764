"""The demo: train a small VGG on Fashion-MNIST classes 0-4, then analyse it with two OOD sets
beside an untrained copy. What ``tunnelscope demo`` runs, callable from Python::

    from tunnelscope.experiments.demo import run_demo
    run = run_demo("runs/demo", quick=True)
    run.results.summary["verdict"]

A finished training run or analysis already in ``out`` is reused; an interrupted training
run is resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..results import Results

DEMO_MODEL = "vgg11-w0.125"
DEMO_DATA = "fashion-mnist[classes=0-4]"
DEMO_QUICK_DATA = "fashion-mnist[classes=0-4,per_class=1000,test_per_class=500]"
DEMO_EPOCHS, DEMO_QUICK_EPOCHS = 4, 2
DEMO_OOD = ("fashion-mnist[classes=5-9]", "digits[size=28]")
DEMO_QUICK_OOD = ("fashion-mnist[classes=5-9,per_class=1000,test_per_class=500]", "digits[size=28]")


def demo_settings(quick: bool = False) -> tuple[str, tuple[str, ...], int]:
    """The demo's ID dataset spec, OOD dataset specs and training epochs (``quick``: 1000
    images per class, OOD sets capped too, 2 epochs)."""
    if quick:
        return DEMO_QUICK_DATA, DEMO_QUICK_OOD, DEMO_QUICK_EPOCHS
    return DEMO_DATA, DEMO_OOD, DEMO_EPOCHS


@dataclass
class DemoRun:
    """What :func:`run_demo` produced: the analysis, the checkpoint it analysed and that
    checkpoint's test accuracy, and which of the two steps were reused from ``out``."""

    results: Results
    checkpoint: Path
    test_accuracy: float
    training_reused: bool
    analysis_reused: bool

    def training_summary(self) -> dict:
        """The ``training`` entry of ``tunnelscope demo --json``."""
        return {"test_accuracy": self.test_accuracy, "reused": self.training_reused,
                "analysis_reused": self.analysis_reused, "checkpoint": str(self.checkpoint)}


def run_demo(out: str | Path = "runs/demo", quick: bool = False, *, device: str = "auto",  # noqa: PLR0913 (a public facade: readable keywords)
             data_root: str | Path | None = None, download: bool = False, overwrite: bool = False,
             progress: bool | None = None, log: Callable[[str], None] | None = None,
             on_epoch: Callable[[dict], None] | None = None) -> DemoRun:
    """Train :data:`DEMO_MODEL` and analyse it into ``out`` (run directory and analysis side by side).

    ``overwrite`` retrains and re-analyses even when ``out`` holds the demo; ``progress`` as
    in :func:`tunnelscope.train`; ``log`` receives one line per step taken or reused;
    ``on_epoch`` receives each epoch's history row."""
    from ..engine.analyze import analyze
    from ..report import save_run
    from ..train import train
    from ..train.loop import resume_hint

    say = log or (lambda text: None)
    out = Path(out)
    data_spec, ood, epochs = demo_settings(quick)
    finished, resume = (None, False) if overwrite else _reusable_training(out, data_spec, epochs, say)
    training_reused = finished is not None
    if finished is None:
        say(f"demo: training {DEMO_MODEL} on {data_spec} for {epochs} epochs -> {out}")
        with resume_hint(f"run the demo again with the same --out ({out}): it resumes the interrupted training"):
            result = train(DEMO_MODEL, data_spec, epochs, out, progress=progress, on_epoch=on_epoch, device=device,
                           data_root=data_root, download=download, resume=resume, overwrite=overwrite or not resume)
        finished = result.final_checkpoint, result.test_accuracy
        say(f"demo: trained to test accuracy {result.test_accuracy:.4f}")
    checkpoint, accuracy = finished
    # analyses of an earlier model in out are stale once the model is retrained
    results = _reusable_analysis(out, checkpoint, say) if training_reused else None
    analysis_reused = results is not None
    if results is None:
        say(f"demo: analysing {checkpoint} with OOD sets {', '.join(ood)}")
        results = analyze(checkpoint, data_spec, ood=list(ood), device=device, data_root=data_root, progress=progress,
                          untrained_reference=True)  # the default metrics, blocks and reduction
        save_run(results, out, overwrite=True)
    return DemoRun(results, Path(checkpoint), accuracy, training_reused, analysis_reused)


def _reusable_training(out: Path, data_spec: str, epochs: int, say: Callable[[str], None]
                       ) -> tuple[tuple[Path, float] | None, bool]:
    """``((final checkpoint, its test accuracy), False)`` when ``out`` holds this demo's finished
    training run; else ``(None, resume)``, ``resume`` saying whether a run of this demo was
    interrupted there."""
    from ..rundir import RESUME_FILE, RUN_FILE
    from ..train.loop import read_run

    if not (out / RUN_FILE).is_file():
        return None, False
    run = read_run(out)
    if not run:  # damaged or foreign run.json: train afresh
        say(f"{out / RUN_FILE} is unreadable; training the demo again")
    config = run.get("config", {})
    same = config.get("data") == data_spec and config.get("epochs") == epochs
    if same and run.get("status") == "finished":
        accuracy = run["final"]["test_acc"]
        say(f"{out} already holds the finished demo training run (test accuracy {accuracy:.4f}); reusing it. "
            "Use --overwrite to retrain.")
        return (out / run["final_checkpoint"], accuracy), False
    return None, same and (out / RESUME_FILE).is_file()


def _reusable_analysis(out: Path, checkpoint: Path, say: Callable[[str], None]) -> Results | None:
    """The analysis saved in ``out`` when it is of ``checkpoint``; else None."""
    from ..errors import RunDirectoryError
    from ..results import Results

    try:
        results = Results.load(out)
    except RunDirectoryError:
        return None
    if results.config.get("model", {}).get("checkpoint") != str(checkpoint):
        return None
    say(f"{out} already holds the demo's analysis; reusing it. Use --overwrite to re-analyse.")
    return results


__all__ = ["DEMO_MODEL", "DemoRun", "demo_settings", "run_demo"]
