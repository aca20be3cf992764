"""One benchmark case per process (run by bench/run.py): prints one JSON line.

    python bench/cases.py CASE DEVICE REPEATS        e.g.  python bench/cases.py stats-mlp12 cpu 1

Times are medians of ``REPEATS`` runs after a warm-up unless a case says otherwise, and every
ratio is against the forward-pass floor measured in the same process: one plain inference pass
of the same model over the same samples (both splits where the timed work reads both), with no
hooks left on the model. Peak memory is counted above what the process held once its data and
model were loaded (resident memory on CPU, allocated memory on CUDA).

A quick run (environment variable ``TUNNELSCOPE_BENCH_QUICK=1``, or ``bench/run.py --quick``)
reads at most 512 samples per split and uses untrained models, so that most cases finish within
a minute or two on two cores (width-4096 takes longer: its time goes to D x D decompositions,
which no sample cap shortens); its numbers are for checking the cases, not for the docs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tunnelscope as ts

ROOT = Path(__file__).resolve().parents[1]
MLP_DATA = "fashion-mnist[classes=0-4]"
MLP_SHAPE = (5, (1, 28, 28))  # classes and input shape of MLP_DATA
VGG_DATA = "fashion-mnist[classes=0-4,size=32,channels=3,test_per_class=200]"
BATCH = 256
FULL_SAMPLES = 10_000  # per split: analyze_layers' default max_samples
QUICK_SAMPLES = 512
QUICK_ENV = "TUNNELSCOPE_BENCH_QUICK"
LONG_RUN_S = 60.0  # a run this long is not repeated (see measure)
CACHED = " (input cached)"  # a metric set timed with layer 0 read from the cache its warm-up run wrote
STAT_SUBSETS = ("cka", "rank,pc1", "default", "default" + CACHED, "all", "all" + CACHED)  # of the statistics cases
WIDTHS = (256, 1024, 4096)  # of mlp-12xW in the width cases
HELP_RUNS = 5


def quick() -> bool:
    """Whether this is a quick run (``TUNNELSCOPE_BENCH_QUICK`` set, and not to 0)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def sample_cap(full: int = FULL_SAMPLES) -> int:
    """``full`` samples, or at most :data:`QUICK_SAMPLES` in a quick run."""
    return min(full, QUICK_SAMPLES) if quick() else full


# ---------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """The median wall time of ``runs`` timed calls, and the last call's result."""

    seconds: float
    runs: int
    result: Any = None


def measure(fn: Callable[[], Any], repeats: int, warmup: bool = True, long_s: float | None = None) -> Timing:
    """Time ``fn``: one untimed warm-up call (unless ``warmup`` is false), then the median of
    ``repeats`` calls.

    With ``long_s``, a warm-up call that alone takes longer than ``long_s`` seconds is the
    result (one run): warm-up effects are negligible at that length and repeating it would
    make the benchmark too long.
    """
    result = None
    if warmup:
        tic = time.perf_counter()
        result = fn()
        first = time.perf_counter() - tic
        if long_s is not None and first > long_s:
            return Timing(first, 1, result)
    times = []
    for _ in range(max(1, repeats)):
        tic = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - tic)
    return Timing(statistics.median(times), len(times), result)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median time of ``repeats`` calls of ``fn`` after a warm-up call."""
    return measure(fn, repeats).seconds


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def error_text(exc: BaseException) -> str:
    """One line naming an exception, for a result row."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# ---------------------------------------------------------------------------------- memory


def _status_mib(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mib() -> float:
    """``ru_maxrss``: this process's resident high-water mark since it started, in MiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak memory of this process above the baseline taken when it is made, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` above the memory allocated at the baseline;
    :meth:`reset` resets CUDA's peak. CPU: the resident high-water mark (``VmHWM``, the
    resettable form of ``ru_maxrss``) above the resident memory at the baseline; :meth:`reset`
    lowers the mark to the current resident memory through ``/proc/self/clear_refs`` where the
    kernel allows it, and otherwise the mark is ``ru_maxrss`` since the process started (an
    upper bound). Make it after the data and the model are loaded.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        sync(device)
        if self.cuda:
            self.baseline = torch.cuda.memory_allocated() / 2**20
        else:
            rss = _status_mib("VmRSS")
            self.baseline = rss if rss is not None else _maxrss_mib()

    def reset(self) -> None:
        """Start a new high-water mark at the current memory."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> float:
        """The high-water mark since the last :meth:`reset`, above the baseline, in MiB."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20 - self.baseline
        hwm = _status_mib("VmHWM")
        return (hwm if hwm is not None else _maxrss_mib()) - self.baseline


# ---------------------------------------------------------------------------------- hooks

# The per-module hook tables that torch.nn.Module.register_forward(_pre)_hook fills.
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def hook_count(model: torch.nn.Module) -> int:
    """Forward and forward-pre hooks registered on ``model`` and its submodules."""
    return sum(len(getattr(m, "_forward_hooks", {})) + len(getattr(m, "_forward_pre_hooks", {}))
               for m in model.modules())


@contextlib.contextmanager
def no_leftover_hooks(model: torch.nn.Module):
    """Remove, on leaving the block, every forward (pre-)hook registered on ``model`` inside it.

    Peers register hooks on the model they compare and do not all remove them (torch-cka
    0.21 never does): left there, each one slows every later pass of the model, the
    forward-pass floor included. Hooks that were there before the block stay.
    """
    before = {id(m): {t: set(getattr(m, t, {})) for t in _HOOK_TABLES} for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            known = before.get(id(m), {})
            for table in _HOOK_TABLES:
                hooks = getattr(m, table, None)
                if hooks is not None:
                    for key in [k for k in hooks if k not in known.get(table, set())]:
                        del hooks[key]


# ---------------------------------------------------------------------------------- models and passes


def trained_checkpoint(model_spec: str, data_spec: str, epochs: int, name: str) -> Path:
    """The final checkpoint of ``model_spec`` trained on ``data_spec`` in ``runs/NAME``, trained
    there on the first call (a finished run is reused)."""
    out = ROOT / "runs" / name
    info = out / "run.json"
    if info.is_file():
        run = json.loads(info.read_text())
        if run.get("status") == "finished":
            return out / run["final_checkpoint"]
    return Path(ts.train(model_spec, data_spec, epochs=epochs, out=out, overwrite=True, progress=False)
                .final_checkpoint)


def untrained(spec: str, classes: int, shape: tuple[int, ...], device: torch.device) -> torch.nn.Module:
    """``spec`` built with seed 0, on ``device``, in eval mode."""
    torch.manual_seed(0)
    return ts.models.build(spec, classes, shape).to(device).eval()


def mlp12(device: torch.device) -> tuple[torch.nn.Module, str]:
    """A trained MLP-12 (mlp-12x256, 10 epochs on Fashion-MNIST classes 0-4), trained here once;
    untrained in a quick run."""
    if quick():
        return untrained("mlp-12x256", *MLP_SHAPE, device), "mlp-12x256 (untrained; quick run)"
    model, _ = ts.load_model(trained_checkpoint("mlp-12x256", MLP_DATA, 10, "bench-mlp12"), device)
    return model.eval(), "mlp-12x256 (trained)"


def wide_mlp(width: int) -> Callable[[torch.device], tuple[torch.nn.Module, str]]:
    """A model function for an untrained mlp-12xWIDTH (timing and numerics only)."""
    def make(device: torch.device) -> tuple[torch.nn.Module, str]:
        return untrained(f"mlp-12x{width}", *MLP_SHAPE, device), f"mlp-12x{width} (untrained)"
    return make


def vgg(device: torch.device) -> tuple[torch.nn.Module, str]:
    """An untrained VGG-11 variant for 32x32 RGB inputs (timing only)."""
    return untrained("vggm11", 5, (3, 32, 32), device), "vggm11 (untrained; timing only)"


def first_samples(split, n: int):
    """The first ``n`` samples of ``split`` (the split itself when it is no longer)."""
    return split if len(split) <= n else split.subset(torch.arange(n))


def forward_pass(model: torch.nn.Module, splits: list, device: torch.device) -> Callable[[], None]:
    """The forward-pass floor: one plain inference pass of ``model`` over ``splits`` in batches
    of :data:`BATCH` (normalisation included, as every timed pass pays it too)."""
    @torch.inference_mode()
    def forward() -> None:
        for split in splits:
            for x, _ in split.batches(BATCH, device=device):
                model(x)
        sync(device)
    return forward


# ---------------------------------------------------------------------------------- 1-2. statistics pass


def statistics_pass(model: torch.nn.Module, ds, metrics: str, device: torch.device, n: int):
    """The whole statistics pass of the public API (train and test passes, every metric of
    ``metrics`` computed), on at most ``n`` samples per split; the input point computed, unless
    ``metrics`` ends in :data:`CACHED` (then read from the cache once an earlier run wrote it)."""
    from tunnelscope.engine import AnalysisSettings, analyze_layers

    cached = metrics.endswith(CACHED)
    with warnings.catch_warnings(), no_leftover_hooks(model):
        warnings.simplefilter("ignore")
        stats = analyze_layers(model, ds, metrics=metrics.removesuffix(CACHED), max_samples=n, device=device,
                               progress=False, settings=AnalysisSettings(input_cache=cached))
    sync(device)
    return stats


@dataclass
class Floor:
    """The forward-pass floor of each split: median seconds over ``samples`` samples."""

    seconds: dict[str, float]
    samples: dict[str, int]

    @property
    def total(self) -> float:
        """The floor over both splits."""
        return sum(self.seconds.values())

    def over(self, read: dict[str, int]) -> float:
        """The floor over the samples a pass read (``{"train": n, "test": m}``, 0: not read)."""
        return sum(self.seconds[k] * read.get(k, 0) / self.samples[k] for k in self.seconds)


def time_statistics(model: torch.nn.Module, ds, metrics: str, device: torch.device, repeats: int, n: int,
                    memory: PeakMemory, floor: Floor) -> dict:
    """One metric set's statistics pass: median time, its ratio to the forward floor over both
    splits (``ratio``) and over the samples the pass read (``ratio_read``; a CKA-only pass may
    read only the test split), peak memory above the baseline, the samples read and the config
    of the last run; a failure is a result (``error``)."""
    memory.reset()
    try:
        t = measure(lambda: statistics_pass(model, ds, metrics, device, n), repeats, long_s=LONG_RUN_S)
    except Exception as exc:  # a refusal ("exceeds 4096 dims") is what the row reports
        nan = float("nan")
        return {"metrics": metrics, "seconds": nan, "ratio": nan, "ratio_read": nan, "runs": 0, "peak_mib": nan,
                "samples": None, "error": error_text(exc), "config": None}
    read = t.result.config["samples"]
    return {"metrics": metrics, "seconds": t.seconds, "ratio": t.seconds / floor.total,
            "ratio_read": t.seconds / floor.over(read), "runs": t.runs, "peak_mib": memory.peak(),
            "samples": read, "error": None, "config": t.result.config}


def layout_of(rows: list[dict]) -> dict:
    """Points and total pooled dims, from the first row that ran."""
    config = next((r["config"] for r in rows if r["config"] is not None), None)
    if config is None:
        return {"points": None, "dims": None}
    return {"points": len(config["layout"]), "dims": sum(v["dims"] for v in config["layout"].values())}


def floor_and_statistics(model: torch.nn.Module, ds, subsets: tuple[str, ...], device: torch.device,
                         repeats: int) -> dict:
    """The forward floor over each split's samples, then the statistics pass for each metric set."""
    n = sample_cap()
    memory = PeakMemory(device)
    splits = {"train": first_samples(ds.train, n), "test": first_samples(ds.test, n)}
    hooks = hook_count(model)  # none expected: a hook left by anyone would slow the floor
    memory.reset()
    floor = Floor({k: timed(forward_pass(model, [split], device), repeats) for k, split in splits.items()},
                  {k: len(split) for k, split in splits.items()})
    peak_forward = memory.peak()
    rows = [time_statistics(model, ds, m, device, repeats, n, memory, floor) for m in subsets]
    out = {"device": str(device), "data": ds.spec, "max_samples": n, "samples": floor.samples, **layout_of(rows),
           "forward_s": floor.total, "forward_split_s": floor.seconds, "peak_mib_forward": peak_forward,
           "baseline_mib": memory.baseline, "hooks_at_forward": hooks, "hooks_after": hook_count(model)}
    for r in rows:
        del r["config"]
    return {**out, "rows": rows}


def case_stats(model_fn, data_spec: str, device: torch.device, repeats: int) -> dict:
    """statistics / forward for each metric set of :data:`STAT_SUBSETS`: the whole public
    ``analyze_layers`` pass (both splits) against a forward pass over the same samples."""
    ds = ts.data.load(data_spec)
    model, label = model_fn(device)
    return {"model": label, **floor_and_statistics(model, ds, STAT_SUBSETS, device, repeats)}


def case_width(width: int, device: torch.device, repeats: int) -> dict:
    """The default statistics of an untrained mlp-12xWIDTH: time over the forward floor and
    peak memory (a width of 4096 is one long run, see :func:`measure`)."""
    ds = ts.data.load(MLP_DATA)
    model, label = wide_mlp(width)(device)
    return {"model": label, "width": width, **floor_and_statistics(model, ds, ("default",), device, repeats)}


def scatter_floor(model: torch.nn.Module, splits: list, device: torch.device) -> Callable[[], None]:
    """The statistics' floor: the forward pass with the default points captured and reduced, and one
    centred float32 ``XᵀX`` per point per batch (a full matrix product), over ``splits``."""
    from tunnelscope.capture import capture_for

    example = next(splits[0].batches(2, device=device))[0]
    capture = capture_for(model, "blocks", example=example, include_input=True)

    @torch.inference_mode()
    def floor() -> None:
        for split in splits:
            for x, _ in split.batches(BATCH, device=device):
                for f in capture(x).values():
                    f = f.float()
                    centred = f - f.mean(0)
                    centred.T @ centred
        sync(device)
    return floor


def case_width_samples(width: int, samples: int, device: torch.device, repeats: int) -> dict:
    """The default statistics of an untrained mlp-12xWIDTH on ``samples`` samples per split, over
    the forward floor and over the statistics' floor (:func:`scatter_floor`), with peak memory."""
    from tunnelscope.engine import analyze_layers

    ds = ts.data.load(MLP_DATA)
    model, label = wide_mlp(width)(device)
    splits = [first_samples(ds.train, samples), first_samples(ds.test, samples)]
    forward = timed(forward_pass(model, splits, device), repeats)
    floor = timed(scatter_floor(model, splits, device), repeats)
    memory = PeakMemory(device)
    memory.reset()
    with warnings.catch_warnings(), no_leftover_hooks(model):
        warnings.simplefilter("ignore")
        run = measure(lambda: analyze_layers(model, ds, metrics="default", max_samples=samples, device=device,
                                             progress=False, memory_budget=None), repeats, long_s=LONG_RUN_S)
    return {"model": label, "width": width, "samples": samples, "device": str(device), "forward_s": forward,
            "floor_s": floor, "statistics_s": run.seconds, "runs": run.runs,
            "over_forward": run.seconds / forward, "over_floor": run.seconds / floor, "peak_mib": memory.peak(),
            "gram_side": bool(run.result.config.get("gram_side")), "planned_mib": run.result.config["planned_bytes"]
            / 2**20}


# ---------------------------------------------------------------------------------- 3. --help


def tunnelscope_command() -> list[str]:
    """The ``tunnelscope`` console script beside this interpreter, else ``python -m tunnelscope.cli``."""
    script = Path(sys.executable).with_name("tunnelscope")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tunnelscope.cli"]


def wall(cmd: list[str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``cmd`` as a subprocess, after one untimed run
    that warms the file cache. A failing command stops the case."""
    subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
    times = []
    for _ in range(runs):
        tic = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def import_times(module: str, top: int = 8, floor_s: float = 0.01) -> dict[str, float]:
    """Where ``import module`` spends its time: the cumulative import time (s) of each module it
    imports directly, slowest first, from one ``python -X importtime`` run (indicative only)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, cwd=ROOT)
    children: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header, or not an importtime line
        name, indent = parts[2].strip(), len(parts[2]) - len(parts[2].lstrip())
        if indent == 1:  # a top-level import finished: its direct imports were the lines just before
            if name == module:
                slow = sorted(((t, n) for n, t in children.items() if t >= floor_s), reverse=True)[:top]
                return {n: t for t, n in slow}
            children = {}
        elif indent == 3:
            children[name] = int(parts[1]) / 1e6
    return {}


def case_help() -> dict:
    """``tunnelscope --help`` wall time (median of :data:`HELP_RUNS` fresh processes), beside
    the interpreter's own start-up and ``import tunnelscope.cli``."""
    cmd = tunnelscope_command() + ["--help"]
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), "runs": HELP_RUNS,
            "help_s": wall(cmd, HELP_RUNS),
            "import_s": wall([sys.executable, "-c", "import tunnelscope.cli"], HELP_RUNS),
            "python_s": wall([sys.executable, "-c", "pass"], HELP_RUNS),
            "imports": import_times("tunnelscope.cli")}


# ---------------------------------------------------------------------------------- 4. analyze breakdown

# Phases of analyze() and save_run, timed by wrapping the functions that do them while the
# case runs: "module:attribute" (an attribute path may go through a class, e.g. a method). Each
# phase lists the names its function is called by; every one that exists is wrapped. A phase
# none of whose names exists is reported as not instrumented: add the new name here when a
# module moves.
ANALYZE_PHASES = {
    "statistics": ("tunnelscope.engine.analyze:layer_statistics",),
    "probes": ("tunnelscope.engine.analyze:probe_statistics",),
    # inside the probes: reading and adapting the OOD sets, not analysis
    "ood_loads": ("tunnelscope.engine.probing:_datasets",),
    "figures": ("tunnelscope.report.run:save_run_figures",),
    "html": ("tunnelscope.report.run:write_report",),
}
# What `tunnelscope demo` analyses, if the library no longer says (see demo_settings).
DEMO_FALLBACK = {"model": "vgg11-w0.125", "data": "fashion-mnist[classes=0-4]", "epochs": 4,
                 "ood": ["fashion-mnist[classes=5-9]", "digits[size=28]"],
                 "quick_data": "fashion-mnist[classes=0-4,per_class=1000,test_per_class=500]",
                 "quick_ood": ["fashion-mnist[classes=5-9,per_class=1000,test_per_class=500]", "digits[size=28]"]}


def _accumulating(fn: Callable, phase: str, seconds: dict[str, float], depth: dict[str, int]) -> Callable:
    """``fn``, adding the wall time of each outermost call of ``phase`` to ``seconds[phase]``
    (a call made inside another call of the same phase is already counted)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth[phase] += 1
        tic = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            depth[phase] -= 1
            if depth[phase] == 0:
                seconds[phase] += time.perf_counter() - tic
    return wrapper


def _resolve(target: str) -> tuple[Any, str, Any] | None:
    """``(owner, attribute, value)`` of a ``"module:attribute.path"``, or None if it does not exist."""
    module_name, _, path = target.partition(":")
    *parents, attr = path.split(".")
    try:
        owner = importlib.import_module(module_name)
        for parent in parents:
            owner = getattr(owner, parent)
        return owner, attr, getattr(owner, attr)
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def phase_timers(targets: dict[str, tuple[str, ...]]):
    """Time the calls of every existing target of each phase (phase -> ``"module:attribute"``
    names) while the block runs; yields ``(seconds per phase, phases with no target found)``.
    Plain functions and methods only; the originals are put back on leaving."""
    seconds: dict[str, float] = {}
    depth: dict[str, int] = {}
    missing: list[str] = []
    undo = []
    for phase, names in targets.items():
        found = [r for r in map(_resolve, names) if r is not None]
        if not found:
            missing.append(phase)
            continue
        seconds[phase], depth[phase] = 0.0, 0
        for owner, attr, original in found:
            setattr(owner, attr, _accumulating(original, phase, seconds, depth))
            undo.append((owner, attr, original))
    try:
        yield seconds, missing
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)


def demo_settings() -> dict:
    """Model, data, OOD sets and epochs of `tunnelscope demo` (of `demo --quick` in a quick run),
    read from the library so that the two cannot drift apart."""
    s = dict(DEMO_FALLBACK)
    for module in ("tunnelscope.experiments.demo",):  # the constants' home
        try:
            m = importlib.import_module(module)
            s = {"model": m.DEMO_MODEL, "data": m.DEMO_DATA, "ood": list(m.DEMO_OOD), "epochs": m.DEMO_EPOCHS,
                 "quick_data": m.DEMO_QUICK_DATA, "quick_ood": list(m.DEMO_QUICK_OOD)}
            break
        except (ImportError, AttributeError):
            continue
    if quick():
        s["data"], s["ood"] = s["quick_data"], s["quick_ood"]
    return s


def timed_analyze(model, s: dict, device: torch.device, reference: bool) -> dict:
    """Load the ID data, run ``tunnelscope.analyze`` as the demo does and save its run
    directory, with every phase of :data:`ANALYZE_PHASES` timed (s: :func:`demo_settings`)."""
    with phase_timers(ANALYZE_PHASES) as (phase, missing), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tic = time.perf_counter()
        ds = ts.data.load(s["data"])
        load_s = time.perf_counter() - tic
        tic = time.perf_counter()
        results = ts.analyze(model, ds, ood=s["ood"], untrained_reference=reference, max_samples=sample_cap(),
                             device=device, progress=False)
        sync(device)
        analyze_s = time.perf_counter() - tic
        with tempfile.TemporaryDirectory() as tmp:
            tic = time.perf_counter()
            from tunnelscope.report import save_run

            save_run(results, Path(tmp) / "run")
            save_s = time.perf_counter() - tic
    nan = float("nan")
    stats_s, probes_all = phase.get("statistics", nan), phase.get("probes", nan)
    ood_s = phase.get("ood_loads", 0.0)
    return {"load_s": load_s, "statistics_s": stats_s, "probes_s": probes_all - ood_s, "ood_load_s": ood_s,
            "analyze_other_s": analyze_s - stats_s - probes_all, "analyze_s": analyze_s,
            "figures_s": phase.get("figures", nan), "html_s": phase.get("html", nan), "save_s": save_s,
            "analysis_s": stats_s + probes_all - ood_s, "not_instrumented": missing}


def case_analyze_demo(device: torch.device) -> dict:
    """Where the demo's analysis spends its time, in one fresh process (so lazy imports count).

    ``tunnelscope analyze`` as the demo runs it (its trained model, OOD sets and untrained
    reference), from outside: the import of ``tunnelscope.cli`` (median of fresh processes),
    loading the ID data, ``tunnelscope.analyze`` with its statistics and probe passes timed by
    :func:`phase_timers` (OOD data loads inside the probes counted apart), and
    ``tunnelscope.report.save_run`` with its figures and HTML. A quick run analyses the untrained model on
    the quick demo's data. Should the analysis with the untrained reference fail, the failure
    is recorded (``reference_error``) and the breakdown is of the analysis without it.
    bench/run.py takes the median over fresh processes.
    """
    s = demo_settings()
    if quick():
        model, label = s["model"], f"{s['model']} (untrained; quick run)"
    else:
        model = str(trained_checkpoint(s["model"], s["data"], s["epochs"], "bench-demo"))
        label = f"{s['model']} (trained)"
    import_s = wall([sys.executable, "-c", "import tunnelscope.cli"], 3)
    reference_error = None
    try:
        phases = timed_analyze(model, s, device, reference=True)
    except Exception as exc:  # a library failure is a result; the breakdown goes on without the reference
        reference_error = error_text(exc)
        phases = timed_analyze(model, s, device, reference=False)
    total_s = import_s + phases["load_s"] + phases["analyze_s"] + phases["save_s"]
    return {"model": label, "data": s["data"], "ood": s["ood"], "device": str(device), "max_samples": sample_cap(),
            "untrained_reference": reference_error is None, "reference_error": reference_error,
            "import_s": import_s, **phases, "total_s": total_s,
            "analysis_share_of_analyze": phases["analysis_s"] / phases["analyze_s"],
            "analysis_share": phases["analysis_s"] / total_s}


def ranks_run(processes: int, model: str, s: dict, kind: str = "analyze", samples: int | None = None,
              env: dict[str, str] | None = None) -> dict:
    """:file:`bench/ranks_worker.py` (``kind``: analyze or statistics) in one process or under
    ``torchrun`` with ``processes``, one thread each, with ``env`` added to the environment; its
    JSON report."""
    cap = sample_cap() if samples is None else samples
    worker = [str(ROOT / "bench" / "ranks_worker.py"), kind, model, s["data"], json.dumps(s["ood"]), str(cap)]
    launch = ([sys.executable] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([*launch, *worker], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(launch[-2:])} {kind} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_analyze_ranks(device: torch.device, repeats: int) -> dict:
    """The demo's ``analyze`` (its trained model and OOD sets, no untrained reference) in one
    process and shared by two under ``torchrun`` (gloo, one thread each): the speed-up of the
    slower process over one, and each process's peak RSS; and two independent one-process runs at
    once, whose slower time gives the machine's ceiling for the speed-up (``2 · one / pair``: the
    most two processes that share nothing could gain). Median over ``repeats`` runs each."""
    if device.type != "cpu":
        raise ValueError("analyze-ranks measures CPU processes (gloo); run it with device cpu")
    s = demo_settings()
    model = (s["model"] if quick() else
             str(trained_checkpoint(s["model"], s["data"], s["epochs"], "bench-demo")))
    from concurrent.futures import ThreadPoolExecutor

    pairs: list[float] = []  # two independent one-process runs at once: what sharing the machine costs

    def pair_run() -> None:
        with ThreadPoolExecutor(2) as pool:
            pair = list(pool.map(lambda _: ranks_run(1, model, s), range(2)))
        pairs.append(max(r["per_process"][0]["seconds"] for r in pair))

    runs, out = one_and_two(model, s, repeats, after_each=pair_run)
    return {**out, "model": model, "ood": s["ood"], "max_samples": sample_cap(), "pair_s": float(np.median(pairs)),
            "ceiling": 2 * out["one_process_s"] / float(np.median(pairs)),
            "same_probe_mean": all(r["probe_acc_mean"] == runs[1][0]["probe_acc_mean"] for r in runs[1] + runs[2])}


def one_and_two(model: str, s: dict, repeats: int, kind: str = "analyze", samples: int | None = None,
                after_each=None) -> tuple[dict[int, list[dict]], dict]:
    """``repeats`` runs of :func:`ranks_run` in one process and in two (then ``after_each()``): the
    runs, and the medians of the one process and of the slower of two, their ratio and peak RSS."""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(max(1, repeats)):
        for processes in (1, 2):
            runs[processes].append(ranks_run(processes, model, s, kind=kind, samples=samples))
        if after_each is not None:
            after_each()
    one = float(np.median([r["per_process"][0]["seconds"] for r in runs[1]]))
    two = float(np.median([max(p["seconds"] for p in r["per_process"]) for r in runs[2]]))
    return runs, {"data": s["data"], "device": "cpu", "runs": len(runs[1]), "one_process_s": one,
                  "two_processes_s": two, "speedup": one / two,
                  "peak_rss_mib_one": max(r["per_process"][0]["peak_rss_mib"] for r in runs[1]),
                  "peak_rss_mib_two": [max(r["per_process"][k]["peak_rss_mib"] for r in runs[2]) for k in range(2)]}


WIDE_RANKS_MODEL, WIDE_RANKS_SAMPLES = "mlp-6x2048", 5000


def case_stats_ranks_wide(device: torch.device, repeats: int) -> dict:
    """The default statistics (``analyze_layers``) of an untrained ``mlp-6x2048`` (wide points, whose
    eigenvalues, PC1 and ridge weights dominate) on 5,000 samples per split of the demo's data, in one
    process and shared by two under ``torchrun`` (one thread each): the speed-up of the slower
    process over one, and each process's peak RSS. Median over ``repeats`` runs each."""
    if device.type != "cpu":
        raise ValueError("ranks-wide measures CPU processes (gloo); run it with device cpu")
    s = {"data": demo_settings()["data"], "ood": []}
    samples = sample_cap(WIDE_RANKS_SAMPLES)
    _, out = one_and_two(WIDE_RANKS_MODEL, s, repeats, kind="statistics", samples=samples)
    return {**out, "model": f"{WIDE_RANKS_MODEL} (untrained)", "max_samples": samples}


STREAM_DATA = "synthetic[train=1000000,test=200000,size=8]"


def case_stream(repeats: int) -> dict:
    """The default statistics (``analyze_layers``: rank, spectra, collapse, NCC, ridge, CKA) of an
    untrained ``mlp-4x64`` on every sample of a generated dataset of 10^6 training and 2·10^5 test
    images (3 x 8 x 8), shared by two processes under ``torchrun``: seconds and each process's
    peak RSS (goal: under 2 GB). A quick run uses a tenth of the samples."""
    data = "synthetic[train=100000,test=20000,size=8]" if quick() else STREAM_DATA
    runs = [ranks_run(2, "mlp-4x64", {"data": data, "ood": []}, kind="statistics", samples=0)
            for _ in range(max(1, min(repeats, 2)))]
    return {"model": "mlp-4x64 (untrained)", "data": data, "device": "cpu", "processes": 2,
            "seconds": float(np.median([max(p["seconds"] for p in r["per_process"]) for r in runs])),
            "peak_rss_mib": [max(r["per_process"][k]["peak_rss_mib"] for r in runs) for k in range(2)],
            "runs": len(runs)}


SHARD_SAMPLES = 100_000  # training images of the stream-shards case (test: a fifth)


def write_png_shards(root: Path, train: int, test: int, per_shard: int = 10_000, classes: int = 10) -> None:
    """Grey 8 x 8 PNGs (brightness by class, plus noise) in WebDataset tar shards,
    ``root/train/*.tar`` and ``root/test/*.tar``: ``KEY.png`` and ``KEY.cls`` per sample."""
    import io
    import tarfile

    from PIL import Image

    def member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    rng = np.random.default_rng(0)
    for sub, count in (("train", train), ("test", test)):
        (root / sub).mkdir(parents=True)
        for first in range(0, count, per_shard):
            with tarfile.open(root / sub / f"part-{first // per_shard:05d}.tar", "w") as tar:
                for i in range(first, min(first + per_shard, count)):
                    label = int(rng.integers(classes))
                    pixels = np.clip(rng.normal(20 + 20 * label, 25, (8, 8)), 0, 255).astype(np.uint8)
                    png = io.BytesIO()
                    Image.fromarray(pixels).save(png, format="PNG")
                    member(tar, f"{sub}{i:08d}.png", png.getvalue())
                    member(tar, f"{sub}{i:08d}.cls", str(label).encode())


def case_stream_shards(repeats: int) -> dict:
    """The default statistics of an untrained ``mlp-4x64`` on every sample of WebDataset tar
    shards (10^5 training and 2·10^4 test PNGs, 8 x 8), shared by two processes under ``torchrun``,
    each decoding its own batches in DataLoader workers: seconds (the first run indexes the shards,
    later runs read the index from the cache) and each process's peak RSS (its DataLoader workers are
    forked copies of it, not counted)."""
    import tempfile

    train = SHARD_SAMPLES // 10 if quick() else SHARD_SAMPLES
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "shards", Path(tmp) / "cache"
        tic = time.perf_counter()
        write_png_shards(root, train, train // 5)
        write_s = time.perf_counter() - tic
        data = f"webdataset:{root}[norm=none]"
        env = {"XDG_CACHE_HOME": str(cache)}
        runs = [ranks_run(2, "mlp-4x64", {"data": data, "ood": []}, kind="statistics", samples=0, env=env)
                for _ in range(1 + max(1, min(repeats, 2)))]
    first, rest = runs[0], runs[1:]
    return {"model": "mlp-4x64 (untrained)", "data": f"webdataset: {train} + {train // 5} PNGs (8 x 8) in shards of "
            "10,000", "device": "cpu", "processes": 2, "write_s": write_s,
            "first_s": max(p["seconds"] for p in first["per_process"]),
            "seconds": float(np.median([max(p["seconds"] for p in r["per_process"]) for r in rest])),
            "peak_rss_mib": [max(r["per_process"][k]["peak_rss_mib"] for r in runs) for k in range(2)],
            "runs": len(rest)}


# ---------------------------------------------------------------------------------- 5. CKA against peers


def hsic1_matrix(grams: np.ndarray) -> np.ndarray:
    """Unbiased HSIC₁ (Song et al., 2012; METRICS.md §7) between every pair of the ``(L, n, n)``
    float64 Gram matrices: an ``(L, L)`` matrix.

    With the diagonals zeroed (K̃): (tr K̃L̃ + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1) / (n(n-3)),
    where for symmetric Grams tr K̃L̃ is the sum of their elementwise product and 1ᵀK̃L̃1 the dot
    product of their row sums.
    """
    count, n, _ = grams.shape
    g = grams.copy()
    g[:, np.arange(n), np.arange(n)] = 0.0
    flat = g.reshape(count, -1)
    rows = g.sum(2)
    totals = rows.sum(1)
    trace = flat @ flat.T
    return (trace + np.outer(totals, totals) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows @ rows.T) / (n * (n - 3))


def cka_from_hsic(h: np.ndarray) -> np.ndarray:
    """CKA from summed HSIC₁: ``h[i, j] / sqrt(h[i, i] h[j, j])``."""
    d = np.sqrt(np.diag(h))
    return h / np.outer(d, d)


def reference_cka(capture, split, device: torch.device) -> dict[str, np.ndarray]:
    """Float64 numpy minibatch CKA on the same batches and the same captured float32 features.

    ``centred``: each batch's features are centred before their Grams (HSIC₁ is unchanged by
    that shift), the reference. ``uncentred``: the same float64 formula on uncentred Grams,
    to show what float64 alone loses when features have large means.
    """
    names = capture.names
    sums = {kind: np.zeros((len(names), len(names))) for kind in ("centred", "uncentred")}
    with torch.inference_mode():
        for x, _ in split.batches(BATCH, device=device):
            if len(x) < 4:  # as MinibatchCKA, which skips batches HSIC₁ is undefined for
                continue
            feats = {k: v.double().cpu().numpy() for k, v in capture(x).items()}
            for kind in sums:
                fs = [feats[k] - feats[k].mean(0) if kind == "centred" else feats[k] for k in names]
                sums[kind] += hsic1_matrix(np.stack([f @ f.T for f in fs]))
    return {kind: cka_from_hsic(h) for kind, h in sums.items()}


def torch_cka_matrix(model: torch.nn.Module, names: list[str], loader, device: torch.device) -> np.ndarray:
    """torch-cka 0.21: the model compared with itself (its API takes two models)."""
    from torch_cka import CKA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(model, model, model1_layers=names, model2_layers=names, device=str(device))
        cka.compare(loader)
    return cka.export()["CKA"].cpu().numpy()


def pytorch_cka_matrix(model: torch.nn.Module, names: list[str], loader, device: torch.device) -> np.ndarray:
    """pytorch-cka (imported as ``cka``): ``compute_cka`` of the model with itself, which it
    recognises as one model and runs once per batch."""
    from cka import compute_cka

    return compute_cka(model, model, loader, layers=names, device=device, progress=False)[0].cpu().numpy()


PEERS = {"torch-cka": (torch_cka_matrix, "torch_cka"), "pytorch-cka": (pytorch_cka_matrix, "cka")}


def time_peer(fn: Callable, module: str, model: torch.nn.Module, names: list[str], loader, device: torch.device,
              repeats: int) -> dict:
    """A peer's median time (its hooks removed after every run) and matrix, or why it has none."""
    if importlib.util.find_spec(module) is None:
        return {"seconds": float("nan"), "matrix": None, "error": f"not installed (no module {module!r})"}

    def once() -> np.ndarray:
        with no_leftover_hooks(model):
            out = fn(model, names, loader, device)
        sync(device)
        return out

    try:
        t = measure(once, repeats)
    except Exception as exc:  # the peer's own failure is a result
        return {"seconds": float("nan"), "matrix": None, "error": error_text(exc)}
    return {"seconds": t.seconds, "matrix": t.result, "error": None}


def case_cka_peer(model_fn, data_spec: str, reduce: str, device: torch.device, repeats: int, limit: int,
                  offset: float = 0.0) -> dict:
    """Within-model CKA heatmap: tunnelscope against torch-cka and pytorch-cka, each against
    the float64 numpy reference, on at most ``limit`` test samples.

    ``offset`` is added to every probe point's output (by a forward hook all tools see), as
    in ReLU features with large means. The forward floor is measured first, before any peer
    touched the model, and every peer's hooks are removed after each of its runs.
    """
    from tunnelscope.capture import Capture
    from tunnelscope.engine import run_pass
    from tunnelscope.metrics.cka import MinibatchCKA

    ds = ts.data.load(data_spec)
    model, label = model_fn(device)
    if offset:
        modules = dict(model.named_modules())
        for name in ts.models.probe_points(model, "blocks"):
            modules[name].register_forward_hook(lambda m, i, out: out + offset)
        label += f", probe outputs + {offset:g}"
    split = first_samples(ds.test, sample_cap(limit))
    capture = Capture(model, "blocks", reduce=reduce, max_dim=10**7)
    names = capture.names
    hooks = hook_count(model)  # the offset hooks only
    t_fwd = timed(forward_pass(model, [split], device), repeats)

    def ours() -> np.ndarray:
        acc = MinibatchCKA(names)
        run_pass(capture, split, [acc], BATCH, device)
        sync(device)
        return acc.compute().cpu().numpy()

    t_ours = measure(ours, repeats)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*[torch.cat(t) for t in zip(*split.batches(BATCH))]), batch_size=BATCH)
    peers = {name: time_peer(fn, module, model, names, loader, device, repeats) for name, (fn, module) in PEERS.items()}
    refs = reference_cka(capture, split, device)
    ref = refs["centred"]
    for p in peers.values():
        mat = p.pop("matrix")
        p["ratio"] = p["seconds"] / t_fwd
        p["max_err"] = float(np.abs(mat - ref).max()) if mat is not None else float("nan")
    return {"model": label, "data": data_spec, "reduce": reduce, "samples": len(split), "points": len(names),
            "dims": sum(v["dims"] for v in capture.layout.values()), "device": str(device), "repeats": repeats,
            "forward_s": t_fwd, "hooks_at_forward": hooks, "leftover_peer_hooks": hook_count(model) - hooks,
            "ours_s": t_ours.seconds, "ours_ratio": t_ours.seconds / t_fwd,
            "ours_max_err": float(np.abs(t_ours.result - ref).max()), "peers": peers,
            "uncentred_f64_max_err": float(np.abs(refs["uncentred"] - ref).max()), "ref_min": float(ref.min())}


# ---------------------------------------------------------------------------------- 6. probes


def plain_probe(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, num_classes: int, cfg) -> float:
    """One layer's probe the way the papers' code trains it: an ``nn.Linear`` with PyTorch's
    default initialisation, autograd, ``torch.optim.AdamW``, shuffled minibatches; the same
    protocol (epochs, batch, lr, label smoothing) as tunnelscope's joint trainer."""
    lin = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.AdamW(lin.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=g).to(x.device)
        for lo in range(0, len(y), cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(lin(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((lin(xt).argmax(1) == yt).float().mean())


def case_probes(device: torch.device, repeats: int, epochs: int) -> dict:
    """All-layer probes: the joint trainer against the per-layer loop of the same protocol
    (the papers' way) and against scikit-learn's LogisticRegression per layer; every time is
    the median of ``repeats`` runs (no warm-up: each run is long)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tunnelscope.capture import Capture
    from tunnelscope.data import sample_split
    from tunnelscope.probes import ProbeConfig, train_probes

    model, label = mlp12(device)
    ds = ts.data.load(MLP_DATA)
    capture = Capture(model, "blocks")
    names = capture.names

    def features(split, n):
        split = sample_split(split, n, 0)[0]
        out, ys = {k: [] for k in names}, []
        with torch.inference_mode():
            for x, y in split.batches(1024, device=device):
                f = capture(x)
                for k in names:
                    out[k].append(f[k])
                ys.append(y)
        return {k: torch.cat(v) for k, v in out.items()}, torch.cat(ys)

    train, y = features(ds.train, sample_cap(15000))
    test, yt = features(ds.test, sample_cap(5000))
    C = ds.num_classes
    cfg = ProbeConfig(protocol="harun", epochs=epochs)

    def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
        def go():
            out = fn()
            sync(device)
            return out
        return go

    def sklearn_probes() -> dict[str, float]:
        sk = {}
        for k in names:
            scaler = StandardScaler().fit(train[k].cpu().numpy())
            clf = LogisticRegression(max_iter=1000).fit(scaler.transform(train[k].cpu().numpy()), y.cpu().numpy())
            sk[k] = clf.score(scaler.transform(test[k].cpu().numpy()), yt.cpu().numpy())
        return sk

    lbfgs = measure(synced(lambda: train_probes(train, y, test, yt, C, ProbeConfig(C=1.0), device=device,
                                                progress=False)),
                    repeats, warmup=False)
    joint = measure(synced(lambda: train_probes(train, y, test, yt, C, cfg, device=device, progress=False)),
                    repeats, warmup=False)
    loop = measure(synced(lambda: {k: train_probes({k: train[k]}, y, {k: test[k]}, yt, C, cfg, device=device,
                                                   progress=False).accuracy[k] for k in names}), repeats, warmup=False)
    plain = measure(synced(lambda: {k: plain_probe(train[k], y, test[k], yt, C, cfg) for k in names}), repeats,
                    warmup=False)
    sk = measure(sklearn_probes, repeats, warmup=False)
    acc = joint.result.accuracy
    return {"model": label, "data": MLP_DATA, "device": str(device), "points": len(names), "train": len(y),
            "test": len(yt), "epochs": epochs, "repeats": joint.runs, "joint_s": joint.seconds,
            "loop_s": loop.seconds, "sklearn_s": sk.seconds, "plain_s": plain.seconds,
            "speedup_plain": plain.seconds / joint.seconds, "speedup_loop": loop.seconds / joint.seconds,
            "speedup_sklearn": sk.seconds / joint.seconds,
            "max_diff_loop_pp": 100 * max(abs(acc[k] - loop.result[k]) for k in names),
            "max_diff_plain_pp": 100 * max(abs(acc[k] - plain.result[k]) for k in names),
            "mean_acc_joint": float(np.mean([acc[k] for k in names])),
            "lbfgs_s": lbfgs.seconds, "mean_acc_lbfgs": float(np.mean([lbfgs.result.accuracy[k] for k in names])),
            "lbfgs_converged": len(names) - len(lbfgs.result.unconverged),
            "max_diff_lbfgs_sklearn_pp": 100 * max(abs(lbfgs.result.accuracy[k] - sk.result[k]) for k in names),
            "mean_acc_sklearn": float(np.mean([sk.result[k] for k in names])),
            "acc_joint": [acc[k] for k in names], "acc_sklearn": [sk.result[k] for k in names]}


def probe_width_row(d: int, c: int, n: int, m: int, points: int, epochs: int, device: torch.device,
                    repeats: int) -> dict:
    """The joint harun trainer against the per-layer loop on ``points`` synthetic Gaussian class
    features of width ``d`` with ``c`` classes (``n`` train and ``m`` test rows)."""
    from tunnelscope.probes import ProbeConfig, train_probes

    cfg = ProbeConfig(protocol="harun", epochs=epochs)
    g = torch.Generator().manual_seed(d + c)
    centres = torch.randn(c, d, generator=g)
    y, yt = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)
    train = {f"p{i}": (centres[y] + 3 * torch.randn(n, d, generator=g)).to(device) for i in range(points)}
    test = {k: (centres[yt] + 3 * torch.randn(m, d, generator=g)).to(device) for k in train}
    y, yt = y.to(device), yt.to(device)

    def joint() -> None:
        train_probes(train, y, test, yt, c, cfg, device=device, progress=False)
        sync(device)

    def loop() -> None:
        for k in train:
            plain_probe(train[k], y, test[k], yt, c, cfg)
        sync(device)

    t_joint, t_loop = timed(joint, repeats), timed(loop, repeats)
    return {"dims": d, "classes": c, "joint_s": t_joint, "loop_s": t_loop, "speedup": t_loop / t_joint}


def case_probe_widths(device: torch.device, repeats: int, epochs: int = 2, points: int = 4) -> dict:
    """The joint harun trainer against the papers' per-layer loop at widths D x classes C, on
    synthetic Gaussian class features (speed only): median of ``repeats`` after a warm-up."""
    n, m = sample_cap(10_000), sample_cap(2000)
    rows = [probe_width_row(d, c, n, m, points, epochs, device, repeats) for d in (256, 2048) for c in (10, 100)]
    return {"device": str(device), "points": points, "train": n, "test": m, "epochs": epochs, "repeats": repeats,
            "rows": rows}


def layer_like_features(d: int, c: int, n: int, m: int, points: int, seed: int = 0) -> tuple[dict, torch.Tensor,
                                                                                             dict, torch.Tensor]:
    """``points`` synthetic layers shaped like a network's: class clusters in a 64-dimensional latent
    code (noise growing with depth, so accuracy falls from point to point), mixed into ``d``
    post-ReLU units, plus a little unit noise; correlated and of low effective rank, as real
    layers are. ``n`` train and ``m`` test rows per point."""
    g = torch.Generator().manual_seed(seed + d + c)
    rank = 64
    centres, mix = torch.randn(c, rank, generator=g), torch.randn(rank, d, generator=g) / rank**0.5
    y, yt = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)

    def layer(labels: torch.Tensor, noise: float) -> torch.Tensor:
        latent = centres[labels] + noise * torch.randn(len(labels), rank, generator=g)
        return torch.relu(latent @ mix + 0.1 * torch.randn(len(labels), d, generator=g))

    train = {f"p{i}": layer(y, 1 + 0.25 * i) for i in range(points)}
    test = {f"p{i}": layer(yt, 1 + 0.25 * i) for i in range(points)}
    return train, y, test, yt


def pass_floor_s(n: int, d: int, c: int, repeats: int = 5) -> float:
    """One evaluation's unavoidable work: the two float32 passes over ``(n, d)`` features (logits,
    then the gradient) in the layout the solver uses; median of ``repeats``."""
    x, w, r = torch.randn(n, d), torch.randn(c, d), torch.randn(c, n)
    xt = x.t().contiguous()
    return timed(lambda: (w @ xt, r @ x), repeats)


def sklearn_probe(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, tol: float = 1e-4) -> tuple[float, int]:
    """The plain per-layer probe a user writes: StandardScaler, then LogisticRegression (lbfgs, C = 1);
    its test accuracy and iterations."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=20_000, tol=tol).fit(scaler.transform(x), y)
    return float(clf.score(scaler.transform(xt), yt)), int(clf.n_iter_[0])


def probe_solver_row(d: int, c: int, n: int, m: int, points: int, repeats: int) -> dict:
    """The default probe (``lbfgs``) on ``points`` layer-like feature sets against a per-layer
    scikit-learn loop at its defaults (timed), and against scikit-learn run to the optimum
    (``tol = 1e-7``, timed once): seconds, accuracy differences, iterations, and the floor."""
    from tunnelscope.probes import ProbeConfig, train_probes

    train, y, test, yt = layer_like_features(d, c, n, m, points)
    np_train = {k: v.double().numpy() for k, v in train.items()}
    np_test = {k: v.double().numpy() for k, v in test.items()}
    yn, ytn = y.numpy(), yt.numpy()
    ours = measure(lambda: train_probes(train, y, test, yt, c, ProbeConfig(C=1.0), progress=False), repeats)
    default = measure(lambda: {k: sklearn_probe(np_train[k], yn, np_test[k], ytn) for k in train}, repeats)
    optimum = measure(lambda: {k: sklearn_probe(np_train[k], yn, np_test[k], ytn, tol=1e-7) for k in train}, 1,
                      warmup=False)
    res = ours.result
    evaluations = sum(res.iterations.values())  # iterations; the line search adds a few evaluations
    floor = evaluations * pass_floor_s(n, d, c)
    diff = lambda ref: max(100 * abs(res.accuracy[k] - ref.result[k][0]) for k in train)  # noqa: E731
    return {"dims": d, "classes": c, "ours_s": ours.seconds, "sklearn_s": default.seconds,
            "sklearn_optimum_s": optimum.seconds, "speedup": default.seconds / ours.seconds,
            "speedup_optimum": optimum.seconds / ours.seconds, "floor_s": floor, "over_floor": ours.seconds / floor,
            "max_diff_default_pp": diff(default), "max_diff_optimum_pp": diff(optimum),
            "sklearn_default_off_optimum_pp": max(100 * abs(default.result[k][0] - optimum.result[k][0])
                                                  for k in train),
            "converged": points - len(res.unconverged), "iterations": [res.iterations[k] for k in train],
            "sklearn_iterations": [default.result[k][1] for k in train],
            "acc": [res.accuracy[k] for k in train], "acc_optimum": [optimum.result[k][0] for k in train]}


def case_probe_solver(device: torch.device, repeats: int, points: int = 8) -> dict:
    """The default probe against scikit-learn at D x C in {256, 2048} x {10, 100}, N = 10,000, on one
    thread (torch and the BLAS under scikit-learn), as the per-layer loop a user would write."""
    from threadpoolctl import threadpool_limits

    n, m = sample_cap(10_000), sample_cap(2000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            rows = [probe_solver_row(d, c, n, m, points, repeats) for d in (256, 2048) for c in (10, 100)]
    finally:
        torch.set_num_threads(threads)
    return {"device": "cpu", "threads": 1, "points": points, "train": n, "test": m, "repeats": repeats, "rows": rows}


def probe_select_row(d: int, c: int, n: int, m: int, points: int, repeats: int) -> dict:
    """The default probe choosing C on a held-out 10% against the same choice made by a scikit-learn
    loop (``StandardScaler`` on every training row, ``LogisticRegression`` at each C of the grid
    on the other 90%, best held-out accuracy, ties to the lower held-out log-loss), and against the
    probe at a fixed C = 1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    from tunnelscope.probes import ProbeConfig, train_probes, validation_split

    train, y, test, yt = layer_like_features(d, c, n, m, points)
    cfg = ProbeConfig()
    fit_rows, held_out = (i.numpy() for i in validation_split(n, cfg))
    yn, ytn = y.numpy(), yt.numpy()

    def sklearn_select() -> dict[str, tuple[float, float, dict[float, float]]]:
        out = {}
        for k in train:
            scaler = StandardScaler().fit(train[k].double().numpy())
            xs, xts = scaler.transform(train[k].double().numpy()), scaler.transform(test[k].double().numpy())
            scored = []
            for value in cfg.c_grid:
                clf = LogisticRegression(C=value, max_iter=1000).fit(xs[fit_rows], yn[fit_rows])
                loss = log_loss(yn[held_out], clf.predict_proba(xs[held_out]), labels=clf.classes_)
                scored.append((clf.score(xs[held_out], yn[held_out]), -loss, value, clf.score(xts, ytn)))
            best = max(scored)  # the best held-out accuracy, ties to the lower held-out cross-entropy
            out[k] = (best[2], best[3], {value: acc for acc, _, value, _ in scored})
        return out

    ours = measure(lambda: train_probes(train, y, test, yt, c, cfg, progress=False), repeats)
    fixed = measure(lambda: train_probes(train, y, test, yt, c, ProbeConfig(C=1.0), progress=False), repeats)
    loop = measure(sklearn_select, repeats)
    res = ours.result
    return {"dims": d, "classes": c, "ours_s": ours.seconds, "fixed_s": fixed.seconds, "sklearn_s": loop.seconds,
            "speedup": loop.seconds / ours.seconds, "cost_vs_fixed": ours.seconds / fixed.seconds,
            "same_c": sum(res.c[k] == loop.result[k][0] for k in train),
            # scikit-learn's held-out accuracy at its choice minus at ours (0: our choice ties its best)
            "max_held_out_gap_pp": max(100 * (loop.result[k][2][loop.result[k][0]] - loop.result[k][2][res.c[k]])
                                       for k in train),
            "max_diff_pp": max(100 * abs(res.accuracy[k] - loop.result[k][1]) for k in train),
            "chosen": [res.c[k] for k in train], "sklearn_chosen": [loop.result[k][0] for k in train],
            "converged": points - len(res.unconverged)}


def case_probe_select(device: torch.device, repeats: int, points: int = 4) -> dict:
    """Choosing the probe's C on data (the default) against the scikit-learn loop a user would write
    for it, at D x C in {256, 2048} x {10, 100} (issue 22's points), N = 10,000, on one thread."""
    from threadpoolctl import threadpool_limits

    n, m = sample_cap(10_000), sample_cap(2000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            rows = [probe_select_row(d, c, n, m, points, repeats) for d in (256, 2048) for c in (10, 100)]
    finally:
        torch.set_num_threads(threads)
    return {"device": "cpu", "threads": 1, "points": points, "train": n, "test": m, "repeats": repeats, "rows": rows}


def split_features(capture, split, n: int, seed: int, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Every point's features of a seeded sample of at most ``n`` rows of ``split`` (as ``analyze`` samples)."""
    from tunnelscope.data import sample_split

    chosen = sample_split(split, n, seed)[0]
    out: dict[str, list] = {k: [] for k in capture.names}
    labels = []
    with torch.inference_mode():
        for x, y in chosen.batches(BATCH, device=device):
            feats = capture(x)
            for k in capture.names:
                out[k].append(feats[k].float().cpu())
            labels.append(y.cpu())
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)


def case_probes_demo(device: torch.device) -> dict:
    """The default probe against scikit-learn (default tolerance and tol 1e-7) on the demo's own
    features: the demo model trained as ``tunnelscope demo`` trains it, its ID and OOD sets
    sampled as ``analyze`` samples them, every point; accuracy differences per probe."""
    from tunnelscope.capture import capture_for
    from tunnelscope.data.objects import ood_dataset
    from tunnelscope.experiments.demo import DEMO_DATA, DEMO_EPOCHS, DEMO_MODEL, DEMO_OOD
    from tunnelscope.probes import ProbeConfig, train_probes

    model, _ = ts.load_model(trained_checkpoint(DEMO_MODEL, DEMO_DATA, DEMO_EPOCHS, "bench-demo"), device)
    model.eval()
    ds = ts.data.load(DEMO_DATA)
    example = next(ds.test.batches(2, device=device))[0]
    capture = capture_for(model, "blocks", example=example, include_input=True)
    rows = []
    sets = {"id": ds, **{spec: ood_dataset(spec, ds.input_shape, None)[1] for spec in DEMO_OOD}}
    for key, data in sets.items():
        train, y = split_features(capture, data.train, FULL_SAMPLES, 0, device)
        test, yt = split_features(capture, data.test, FULL_SAMPLES, 1, device)
        tic = time.perf_counter()
        ours = train_probes(train, y, test, yt, data.num_classes, ProbeConfig(C=1.0), progress=False)
        ours_s = time.perf_counter() - tic
        tic = time.perf_counter()
        default = {k: sklearn_probe(train[k].double().numpy(), y.numpy(), test[k].double().numpy(), yt.numpy())
                   for k in train}
        sklearn_s = time.perf_counter() - tic
        for k in train:
            optimum = sklearn_probe(train[k].double().numpy(), y.numpy(), test[k].double().numpy(), yt.numpy(), 1e-7)
            rows.append({"dataset": key, "point": k, "dims": train[k].shape[1], "ours": ours.accuracy[k],
                         "sklearn": default[k][0], "optimum": optimum[0], "iterations": ours.iterations[k],
                         "sklearn_iterations": default[k][1], "converged": ours.converged[k]})
        rows[-1].update({"ours_s": ours_s, "sklearn_s": sklearn_s})
    diffs = [100 * abs(r["ours"] - r["sklearn"]) for r in rows]
    return {"model": DEMO_MODEL, "data": DEMO_DATA, "ood": list(DEMO_OOD), "device": str(device), "rows": rows,
            "max_diff_sklearn_pp": max(diffs), "max_diff_optimum_pp": max(100 * abs(r["ours"] - r["optimum"])
                                                                          for r in rows),
            "converged": sum(r["converged"] for r in rows), "probes": len(rows)}


# ---------------------------------------------------------------------------------- input reconstruction


def case_invert(device: torch.device, images: int = 4, steps: int = 100) -> dict:
    """Input reconstruction of images × layers in one batched optimisation against the original
    protocol's loop (one image and one layer per run), same starts and steps."""
    from tunnelscope.experiments.inversion import InvertConfig, invert

    model, label = mlp12(device)
    ds = ts.data.load(MLP_DATA)
    x = next(ds.test.batches(images, device=device))[0]
    names = ts.models.probe_points(model, "blocks")
    cfg = InvertConfig(steps=steps, refine_steps=0)  # the protocol's descent: the same work in both
    tic = time.perf_counter()
    batched = invert(model, x, names, cfg, device, progress=False)
    sync(device)
    t_batched = time.perf_counter() - tic
    tic = time.perf_counter()
    diffs = []
    for i in range(images):  # the loop starts each run where the batched one started that image
        for name in names:
            alone = invert(model, x[i : i + 1], [name], cfg, device, progress=False,
                           starts=batched.starts[:, i : i + 1])
            diffs.append(float((alone.reconstructions[name][0, 0] - batched.reconstructions[name][0, i]).abs().max()))
    sync(device)
    t_loop = time.perf_counter() - tic
    rows = images * len(names)
    return {"model": label, "device": str(device), "images": images, "points": len(names), "steps": steps,
            "batched_s": t_batched, "loop_s": t_loop, "rows_per_s_batched": rows / t_batched,
            "rows_per_s_loop": rows / t_loop, "speedup": t_loop / t_batched, "max_abs_diff_first_image": diffs[0],
            "max_abs_diff": max(diffs)}


def _monitored_loop(ds, device: torch.device, steps: int, batch: int,
                    monitor_options: dict | None) -> tuple[float, Any]:
    """Seconds of ``steps`` SGD steps on the demo's model (a fresh seeded copy), with a Monitor
    of ``monitor_options`` watching when given; and the monitor."""
    from tunnelscope.experiments.demo import DEMO_MODEL
    from tunnelscope.experiments.monitor import Monitor

    torch.manual_seed(0)
    net = ts.models.build(DEMO_MODEL, ds.num_classes, ds.input_shape).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    batches = list(ds.train.batches(batch, shuffle=True, generator=torch.Generator().manual_seed(0), device=device,
                                    drop_last=True))
    batches = (batches * math.ceil(steps / len(batches)))[:steps]
    monitor = Monitor(net, ds, **monitor_options) if monitor_options is not None else None
    sync(device)
    tic = time.perf_counter()
    for x, y in (monitor.watch(batches) if monitor else batches):
        net.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - tic, monitor


def case_monitor(device: torch.device, repeats: int, every: int = 50, batch: int = 128) -> dict:
    """The training monitor's cost: a plain loop of SGD steps on the demo's model and data
    (batch 128) alone and watched by a Monitor with its defaults (256 samples per split reduced
    by GAP, a ridge probe, rank, NCC, CKA) at ``every`` steps, without and with the dense early
    steps; the three loops interleaved, medians of ``repeats``."""
    from tunnelscope.experiments.demo import DEMO_DATA

    ds = ts.data.load(DEMO_DATA)
    steps = 100 if quick() else 300
    _monitored_loop(ds, device, 20, batch, None)  # warm-up
    settings: dict[str, dict | None] = {"alone": None, "steady": {"dense_early": False}, "dense": {"dense_early": True}}
    runs: dict[str, list] = {label: [] for label in settings}
    for _ in range(repeats):  # interleaved, so that a noisy neighbour slows every setting alike
        for label, options in settings.items():
            runs[label].append(_monitored_loop(ds, device, steps, batch,
                                               None if options is None else {"every": every, **options}))
    alone = statistics.median(t for t, _ in runs["alone"])
    out: dict[str, Any] = {"device": str(device), "model": "demo VGG (vgg11-w0.125)", "steps": steps, "batch": batch,
                           "every": every, "train_s": alone, "train_step_s": alone / steps}
    for label in ("steady", "dense"):
        seconds = statistics.median(t for t, _ in runs[label])
        monitor = runs[label][0][1]
        out |= {f"{label}_s": seconds, f"{label}_measurements": len(monitor.seconds),
                f"{label}_overhead": (seconds - alone) / alone,
                f"{label}_measurement_s": statistics.median(monitor.seconds)}
    out["measurement_over_step"] = out["steady_measurement_s"] / out["train_step_s"]
    return out


# ---------------------------------------------------------------------------------- dispatch

CASES: dict[str, Callable[[torch.device, int], dict]] = {
    "stats-mlp12": lambda dev, r: case_stats(mlp12, MLP_DATA, dev, r),
    "stats-vgg": lambda dev, r: case_stats(vgg, VGG_DATA, dev, r),
    **{f"width-{w}": functools.partial(case_width, w) for w in WIDTHS},
    **{f"width-{w}-n{n}": functools.partial(case_width_samples, w, n) for w in (256, 1024, 4096, 8192)
       for n in (1000, 10_000)},
    "help-time": lambda dev, r: case_help(),
    "analyze-demo": lambda dev, r: case_analyze_demo(dev),
    "analyze-ranks": lambda dev, r: case_analyze_ranks(dev, r),
    "ranks-wide": lambda dev, r: case_stats_ranks_wide(dev, r),
    "stream-1m": lambda dev, r: case_stream(r),
    "stream-shards": lambda dev, r: case_stream_shards(r),
    "cka-mlp12": lambda dev, r: case_cka_peer(mlp12, MLP_DATA, "pool2", dev, r, limit=5000),
    "cka-mlp12-offset": lambda dev, r: case_cka_peer(mlp12, MLP_DATA, "pool2", dev, r, limit=5000, offset=20.0),
    "cka-mlp12x4096": lambda dev, r: case_cka_peer(wide_mlp(4096), MLP_DATA, "pool2", dev, r, limit=2048),
    "cka-vgg": lambda dev, r: case_cka_peer(vgg, VGG_DATA, "flatten", dev, max(1, r // 2), limit=512),
    "probes-mlp12": lambda dev, r: case_probes(dev, r, epochs=10),
    "probes-widths": lambda dev, r: case_probe_widths(dev, max(3, r)),
    "probes-solver": lambda dev, r: case_probe_solver(dev, r),
    "probes-select": lambda dev, r: case_probe_select(dev, r),
    "probes-demo": lambda dev, r: case_probes_demo(dev),
    "invert-mlp12": lambda dev, r: case_invert(dev, steps=20 if quick() else 100),
    "monitor-demo": lambda dev, r: case_monitor(dev, r),
}


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in CASES:
        raise SystemExit(f"usage: python bench/cases.py CASE DEVICE REPEATS; CASE is one of {', '.join(CASES)}")
    name, device, repeats = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    out = CASES[name](device, repeats)
    out["case"] = name
    out["quick"] = quick()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
