"""Benchmarks, written to docs/benchmarks.md. Run with `make bench`.

Every case runs in a fresh process (bench/cases.py) so that peak memory belongs to it.
Figures are ratios against the forward-pass floor measured in the same process: one plain
inference pass of the same model over the same samples; seconds are context only.

    python bench/run.py                        # every case, 3 repeats -> docs/benchmarks.md
    python bench/run.py --cases width-256 help-time
    python bench/run.py --quick                # <= 512 samples a split, untrained models,
                                               # 1 repeat -> runs/benchmarks-quick.md
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tunnelscope as ts
from tunnelscope.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from cases import CACHED, LONG_RUN_S, QUICK_ENV, QUICK_SAMPLES, timed  # noqa: E402
from cases import CASES as KNOWN_CASES  # noqa: E402

CASES = ["stats-mlp12", "stats-vgg", "width-256", "width-1024", "width-4096", "help-time", "analyze-demo",
         "analyze-ranks", "ranks-wide", "stream-1m", "stream-shards", "cka-mlp12", "cka-mlp12-offset",
         "cka-mlp12x4096", "cka-vgg",
         "probes-mlp12", "probes-widths",
         "probes-solver", "probes-select", "probes-demo", "invert-mlp12", "monitor-demo",
         *[f"width-{w}-n{n}" for n in (1000, 10_000) for w in (256, 1024, 4096, 8192)
           if not (n == 10_000 and w > 1024)]]
# nothing in these runs on a device: measured once
CPU_ONLY = {"help-time", "probes-solver", "probes-select", "analyze-ranks", "ranks-wide", "stream-1m",
            "stream-shards"}
FRESH_RUNS = {"analyze-demo"}  # repeated in fresh processes (cold imports count); medians taken here
DEFAULT_OUT, QUICK_OUT = ROOT / "docs" / "benchmarks.md", ROOT / "runs" / "benchmarks-quick.md"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table: the header, its separator, and one line per row of cells; "Not run."
    when there is no row."""
    if not rows:
        return ["Not run."]
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


@functools.cache
def bench_cache() -> Path:
    """A user cache folder of this bench run only, so that a case measured with the input point
    cached reads only what its own warm-up wrote."""
    return Path(tempfile.mkdtemp(prefix="tunnelscope-bench-cache-"))


def run_case(name: str, device: str, repeats: int, quick: bool) -> dict:
    """One case in a fresh process: its JSON line, or ``{"case", "device", "case_failed"}``
    with the end of its error output when it fails (the other cases still run)."""
    print(f"bench: {name} on {device} ...", file=sys.stderr, flush=True)
    env = {**os.environ, QUICK_ENV: "1" if quick else "0"}
    env.setdefault("TUNNELSCOPE_CACHE", str(bench_cache()))  # the input point's cache: this bench run's own
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cases.py"), name, device, str(repeats)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        print(f"bench case {name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        return {"case": name, "device": device, "case_failed": f"exit status {proc.returncode}: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_result(runs: list[dict]) -> dict:
    """One result from several runs of a case: the median of every number, the first run's
    value of everything else, and ``fresh_runs``."""
    out = dict(runs[0])
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["fresh_runs"] = len(runs)
    return out


def run_cases(names: list[str], devices: list[str], repeats: int, quick: bool) -> list[dict]:
    """Every case on every device (once for :data:`CPU_ONLY`); :data:`FRESH_RUNS` cases run
    ``repeats`` times, each in its own process."""
    results = []
    for dev in devices:
        for name in names:
            if name in CPU_ONLY and dev != "cpu":
                continue
            if name in FRESH_RUNS:
                runs = [run_case(name, dev, 1, quick) for _ in range(repeats)]
                failed = [r for r in runs if "case_failed" in r]
                results.append(failed[0] if failed else median_result(runs))
            else:
                results.append(run_case(name, dev, repeats, quick))
    return results


def bench_training(model_spec: str, data_spec: str, device: torch.device, batch: int, repeats: int) -> dict:
    """Batching alone and an SGD epoch, against the forward floor over the same test split."""
    ds = ts.data.load(data_spec)
    model = ts.models.build(model_spec, ds.num_classes, ds.input_shape).to(device)

    def batches_only():
        for _ in ds.test.batches(batch, device=device):
            pass

    @torch.inference_mode()
    def forward():
        model.eval()
        for x, _ in ds.test.batches(batch, device=device):
            model(x)

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_pass():
        model.train()
        for x, y in ds.test.batches(batch, device=device, drop_last=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t_fwd = timed(forward, repeats)
    return {"model": model_spec, "data": data_spec, "samples": len(ds.test), "device": str(device),
            "forward_s": t_fwd, "batching_ratio": timed(batches_only, repeats) / t_fwd,
            "train_ratio": timed(train_pass, repeats) / t_fwd}


def missing(x) -> bool:
    """None or NaN: a number that was not measured."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if missing(x) else f"{x:.{digits}f}"


def sci(x: float) -> str:
    return "n/a" if missing(x) else f"{x:.1e}"


def pct(x: float) -> str:
    return "n/a" if missing(x) else f"{100 * x:.0f}%"


def peer_version(dist: str) -> str:
    """The installed version of a peer's distribution, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def of_case(results: list[dict], *prefixes: str) -> list[dict]:
    """The results of the cases that ran and whose name starts with one of ``prefixes``."""
    return [r for r in results if r["case"].startswith(prefixes) and "case_failed" not in r]


def failures_section(results: list[dict]) -> list[str]:
    """The cases that failed, with the last line of their error output."""
    failed = [r for r in results if "case_failed" in r]
    if not failed:
        return []
    return ["## Failed cases", "", "These cases stopped with an error; their rows are missing above.", ""] + md_table(
        ["case", "device", "error"], [[f"`{r['case']}`", r["device"], r["case_failed"]] for r in failed]) + [""]


# ---------------------------------------------------------------------------------- report sections


def statistics_section(results: list[dict]) -> list[str]:
    """statistics / forward for MLP-12 and VGG with metric subsets."""
    rows = of_case(results, "stats-")
    subsets = [r["metrics"] for r in rows[0]["rows"]] if rows else []
    lines = [
        "## 1. The statistics pass against the forward pass",
        "",
        "The whole statistics pass of the public API, `tunnelscope.engine.analyze_layers(model, data,",
        "metrics=..., max_samples=N)`, for several metric sets: both splits' passes (train and test, the",
        "model's own accuracy included), every metric asked for computed, the table built. Each ratio is",
        "over the forward-pass floor: one plain inference pass over the same number of samples of both",
        "splits, timed in the same process before any statistics ran and with no hook on the model. Default",
        "`blocks` probe points and `pool2` reduction, batches of 256. Peak memory is the high-water mark",
        "while each metric set ran, above what the process held once data and model were loaded.",
        f"Every set computes the input point (layer 0) except those marked `{CACHED.strip()}`, which read",
        "its statistics from the user cache written by their warm-up run, as every analysis after the",
        "first of the same samples does (`engine/input_cache.py`); the numbers are the same.",
        "A metric set that refuses to run shows its error. In brackets, for a pass that read fewer samples",
        "than both splits (a CKA-only pass needs the test split alone), the ratio over the forward floor",
        "of the samples it read.",
        "",
    ]

    def cell(row: dict, key: str, digits: int = 2) -> str:
        return f"fails: {row['error']}" if row["error"] else fmt(row[key], digits)

    def ratio(row: dict) -> str:
        partial = row["samples"] is not None and not missing(row.get("ratio_read")) and (
            abs(row["ratio_read"] - row["ratio"]) > 1e-6 * row["ratio"])
        return cell(row, "ratio") + (f" ({fmt(row['ratio_read'])})" if partial else "")

    lines += md_table(
        ["device", "model", "samples train + test", "points (dims)", "forward (s)"]
        + [f"`{m}` / forward" for m in subsets] + [f"peak MiB forward / {' / '.join(f'`{m}`' for m in subsets)}"],
        [[r["device"], r["model"], f"{r['samples']['train']} + {r['samples']['test']}",
          f"{r['points']} ({r['dims']})", fmt(r["forward_s"], 3)]
         + [ratio(s) for s in r["rows"]]
         + [" / ".join([fmt(r["peak_mib_forward"], 0)] + [cell(s, "peak_mib", 0) for s in r["rows"]])]
         for r in rows])
    return lines + [
        "",
        "`cka` and `rank,pc1` show what a request for those metrics alone costs. A pass that computes only",
        "what was asked should cost little more than the forward floor of what it must read: the test split",
        "for CKA, both splits for the moments behind rank and PC1.",
        "",
    ]


def width_section(results: list[dict]) -> list[str]:
    """mlp-12 at widths 256/1024/4096: time ratio, growth exponent and peak memory."""
    rows = sorted((r for r in of_case(results, "width-") if "samples" not in r or isinstance(r["samples"], dict)),
                  key=lambda r: (r["device"], r["width"]))
    lines = [
        "## 2. Width: mlp-12 at 256, 1024 and 4096 units",
        "",
        "The default statistics (`analyze_layers`, as in section 1) of untrained `mlp-12xW`, at most",
        f"{rows[0]['max_samples'] if rows else 'N'} samples per split, against the forward floor over the same",
        "samples. `time ∝ W^p` gives the exponent p of the statistics' time from the previous width; the",
        "forward pass itself grows as W^2 once the hidden layers dominate. Peak memory is above the",
        "process's memory after loading data and model (CUDA: allocated memory). A run longer than",
        f"{LONG_RUN_S:.0f} s is timed once (`runs`).",
        "",
    ]
    table: list[list] = []
    previous: dict[str, tuple[int, float]] = {}
    for r in rows:
        s = r["rows"][0]
        prev = previous.get(r["device"])
        grows = (math.log(s["seconds"] / prev[1]) / math.log(r["width"] / prev[0])
                 if prev and not s["error"] and not missing(prev[1]) else float("nan"))
        previous[r["device"]] = (r["width"], s["seconds"])
        table.append([r["device"], f"`mlp-12x{r['width']}`", f"{r['samples']['train']} + {r['samples']['test']}",
                      fmt(r["forward_s"], 3),
                      f"fails: {s['error']}" if s["error"] else fmt(s["seconds"], 2), f"**{fmt(s['ratio'])}**",
                      s["runs"], fmt(grows, 1), fmt(r["peak_mib_forward"], 0), fmt(s["peak_mib"], 0)])
    lines += md_table(["device", "model", "samples train + test", "forward (s)", "statistics (s)",
                       "statistics / forward", "runs", "time ∝ W^p", "peak MiB forward", "peak MiB statistics"], table)
    return lines + [""] + width_samples_lines(results)


def width_samples_lines(results: list[dict]) -> list[str]:
    """mlp-12 at four widths and fixed sample counts: statistics over the forward pass and over
    the statistics' own floor, with peak memory."""
    rows = sorted((r for r in of_case(results, "width-") if isinstance(r.get("samples"), int)),
                  key=lambda r: (r["device"], r["samples"], r["width"]))
    if not rows:
        return []
    lines = [
        "At fixed sample counts per split (the first N of each split; the test split of the data has 5,000),",
        "the default statistics against two floors timed in the same process: the forward pass, and the",
        "statistics' floor (the same pass with the default points captured and one centred float32 `XᵀX`",
        "per point per batch). `gram side`: the points were wider than the samples and were computed from",
        "the N x N side. Peak memory is above the process's memory once data and model were loaded.",
        "",
    ]
    lines += md_table(
        ["device", "model", "samples per split", "forward (s)", "floor (s)", "statistics (s)", "statistics / forward",
         "statistics / floor", "gram side", "peak MiB", "runs"],
        [[r["device"], f"`mlp-12x{r['width']}`", r["samples"], fmt(r["forward_s"], 3), fmt(r["floor_s"], 3),
          fmt(r["statistics_s"], 2), f"**{fmt(r['over_forward'])}**", f"**{fmt(r['over_floor'])}**",
          "yes" if r["gram_side"] else "no", fmt(r["peak_mib"], 0), r["runs"]] for r in rows])
    return lines + [""]


def help_section(results: list[dict]) -> list[str]:
    """`tunnelscope --help` wall time and what its imports cost."""
    lines = [
        "## 3. Start-up: `tunnelscope --help`",
        "",
        "Wall time of fresh processes (median of the runs shown, after one untimed run that warms the file",
        "cache): the console script's `--help`, `python -c \"import tunnelscope.cli\"`, and the interpreter",
        "alone. Slowest imports: the modules `tunnelscope.cli` imports directly, with everything each of",
        "them imports, from one `python -X importtime -c \"import tunnelscope.cli\"`. Goal: `--help`",
        "under 1 s.",
        "",
    ]
    lines += md_table(
        ["command", "runs", "`--help` (s)", "goal", "`import tunnelscope.cli` (s)", "python alone (s)",
         "slowest imports"],
        [[f"`{r['command']}`", r["runs"], f"**{fmt(r['help_s'])}**", "< 1", fmt(r["import_s"]), fmt(r["python_s"]),
          ", ".join(f"{k} {v:.2f} s" for k, v in r["imports"].items()) or "n/a"]
         for r in of_case(results, "help-time")])
    return lines + [""]


ANALYZE_ROWS = [  # (label, key) of the analyze breakdown, in the order they happen
    ("`import tunnelscope.cli` (fresh process)", "import_s"),
    ("load the ID data (`tunnelscope.data.load`)", "load_s"),
    ("statistics pass (`analyze_layers`)", "statistics_s"),
    ("probes (`probe_layers`, less OOD data loads)", "probes_s"),
    ("OOD data loads inside the probes", "ood_load_s"),
    ("rest of `analyze()`", "analyze_other_s"),
    ("figures (PNG and SVG)", "figures_s"),
    ("HTML report", "html_s"),
    ("`Results.save` in all", "save_s"),
    ("**total**", "total_s"),
]


def analyze_section(results: list[dict]) -> list[str]:
    """The demo's analyze broken into phases, and the analysis' share of it."""
    rows = of_case(results, "analyze-demo")
    lines = [
        "## 4. Where `analyze` spends its time (the demo)",
        "",
        "`tunnelscope.analyze` as `tunnelscope demo` runs it (its model, OOD sets and untrained reference),",
        "then `Results.save`, in a fresh process; the statistics and probe passes, OOD data loads, figures",
        "and HTML are timed by wrapping the library functions that do them. The analysis is the statistics",
        "plus the probes (without data loading); its share is of the total, which adds the import a",
        "`tunnelscope analyze` process pays. Median over fresh processes. Goal: analysis at least 60%.",
        "",
    ]
    if not rows:
        return lines + ["Not run.", ""] + ranks_lines(results)
    for r in rows:
        ood = ", ".join(f"`{o}`" for o in r["ood"])
        note = (f"- {r['device']}: `{r['model']}` on `{r['data']}`, OOD {ood}, at most {r['max_samples']} samples per "
                f"split; median of {r.get('fresh_runs', 1)} fresh processes.")
        if r["not_instrumented"]:
            note += (" Phases not timed (their functions moved; see ANALYZE_PHASES in bench/cases.py): "
                     f"{', '.join(r['not_instrumented'])}.")
        if r.get("reference_error"):
            note += (f" **The analysis with the untrained reference failed** ({r['reference_error']}); the times are "
                     "of the analysis without it.")
        lines.append(note)
    lines.append("")
    header = ["phase"] + [h for r in rows for h in (f"{r['device']} (s)", "share")]
    table = [[label] + [c for r in rows for c in (fmt(r[key]), pct(r[key] / r["total_s"]))]
             for label, key in ANALYZE_ROWS]
    table.append(["**analysis (statistics + probes)**"]
                 + [c for r in rows for c in (fmt(r["analysis_s"]), f"**{pct(r['analysis_share'])}**")])
    table.append(["analysis share of the `analyze()` call alone"]
                 + [c for r in rows for c in ("", pct(r["analysis_share_of_analyze"]))])
    return lines + md_table(header, table) + [""] + ranks_lines(results)


def _case_lines(title: str, about: list[str], rows: list[dict], header: list[str], row) -> list[str]:
    """A titled sub-section: what was measured, then one table row per result (or "Not run.")."""
    lines = [title, "", *about, ""]
    if not rows:
        return lines + ["Not run.", ""]
    return lines + md_table(header, [row(r) for r in rows]) + [""]


def ranks_lines(results: list[dict]) -> list[str]:
    """The demo's analyze in one process and shared by two under torchrun (gloo, CPU)."""
    about = ["`tunnelscope.analyze` on the demo's model and OOD sets (no untrained reference) in one process,",
             "then under `torchrun --nproc-per-node 2` (gloo, one thread each); the time is the slower",
             "process's, median of repeats. Goal: 1.7x. The ceiling is what the machine allows: two independent",
             "one-process runs started together take `pair` seconds (the slower), so two processes that shared",
             "nothing would gain at most `2 x one / pair`."]
    header = ["data", "samples per split", "1 process (s)", "2 processes (s)", "speed-up", "pair of 1-process runs (s)",
              "ceiling", "peak RSS, 1 (MiB)", "peak RSS per process, 2 (MiB)", "same probe accuracies"]
    lines = _case_lines("### The demo's analysis shared by two processes", about, of_case(results, "analyze-ranks"),
                        header, lambda r: [f"`{r['data']}`", r["max_samples"], fmt(r["one_process_s"]),
                                           fmt(r["two_processes_s"]), f"**{fmt(r['speedup'])}x**",
                                           fmt(r.get("pair_s", math.nan)), f"{fmt(r.get('ceiling', math.nan))}x",
                                           fmt(r["peak_rss_mib_one"], 0),
                                           " / ".join(fmt(m, 0) for m in r["peak_rss_mib_two"]),
                                           "yes" if r["same_probe_mean"] else "**no**"])
    return lines + wide_ranks_lines(results) + stream_lines(results)


def wide_ranks_lines(results: list[dict]) -> list[str]:
    """Wide points' statistics in one process and shared by two."""
    about = ["`analyze_layers` (default statistics) of an untrained `mlp-6x2048` in one process, then under",
             "`torchrun --nproc-per-node 2` (gloo, one thread each). Each point's eigenvalues, PC1 and ridge weights",
             "are computed by one process (balanced by D³) and shared; the time is the slower process's, median of",
             "repeats."]
    header = ["data", "samples per split", "1 process (s)", "2 processes (s)", "speed-up", "peak RSS, 1 (MiB)",
              "peak RSS per process, 2 (MiB)"]
    return _case_lines("### Wide points' statistics shared by two processes", about,
                       of_case(results, "ranks-wide"), header,
                       lambda r: [f"`{r['data']}`", r["max_samples"], fmt(r["one_process_s"]),
                                  fmt(r["two_processes_s"]), f"**{fmt(r['speedup'])}x**", fmt(r["peak_rss_mib_one"], 0),
                                  " / ".join(fmt(m, 0) for m in r["peak_rss_mib_two"])])


def stream_lines(results: list[dict]) -> list[str]:
    """Every sample of a generated dataset of 10^6 images, statistics shared by two processes."""
    about = ["`analyze_layers` (default statistics) of an untrained `mlp-4x64` on every sample of a generated",
             "dataset, under `torchrun --nproc-per-node 2`: the slower process's time and each process's peak",
             "RSS. Goal: under 2 GB per process."]
    return _case_lines("### 10^6 samples streamed by two processes", about, of_case(results, "stream-1m"),
                       ["data", "seconds", "peak RSS per process (MiB)"],
                       lambda r: [f"`{r['data']}`", fmt(r["seconds"]),
                                  " / ".join(fmt(m, 0) for m in r["peak_rss_mib"])]) + shards_lines(results)


def shards_lines(results: list[dict]) -> list[str]:
    """WebDataset tar shards streamed by two processes and their DataLoader workers."""
    about = ["`analyze_layers` (default statistics) of an untrained `mlp-4x64` on every sample of WebDataset tar",
             "shards (`webdataset:PATH`), under `torchrun --nproc-per-node 2`, each process decoding its own",
             "batches in DataLoader workers: the first run (which indexes the shards), the median of later runs",
             "(index from the cache) and each process's peak RSS. Goal: under 2 GB per process."]
    return _case_lines("### WebDataset shards streamed by two processes", about, of_case(results, "stream-shards"),
                       ["data", "first run (s)", "later runs (s)", "peak RSS per process (MiB)"],
                       lambda r: [r["data"], fmt(r["first_s"]), fmt(r["seconds"]),
                                  " / ".join(fmt(m, 0) for m in r["peak_rss_mib"])])


def cka_section(results: list[dict]) -> list[str]:
    """Within-model CKA: tunnelscope against torch-cka and pytorch-cka, errors against float64."""
    rows = of_case(results, "cka-")
    peers = list(rows[0]["peers"]) if rows else ["torch-cka", "pytorch-cka"]
    versions = ", ".join(f"{p} {peer_version(p)}" for p in peers)
    lines = [
        "## 5. Within-model CKA heatmap: tunnelscope against torch-cka and pytorch-cka",
        "",
        f"Every tool computes the same L × L minibatch-CKA matrix over the same batches of 256 ({versions}",
        "from PyPI, each with its own hooks and loop, given the same model twice as their APIs take two).",
        "Times are medians of the repeats after a warm-up; each peer's hooks are removed after every run",
        "and the forward floor is timed before any peer touched the model. Errors are the largest absolute",
        "difference from a float64 numpy evaluation of METRICS.md §7 on the same captured features, each",
        "batch centred first (HSIC₁ is unchanged by that shift): narrow features (mlp-12x256), wide ones",
        "(mlp-12x4096, VGG flattened). `uncentred f64` is the same float64 formula on uncentred Grams:",
        "what float64 alone loses.",
        "",
    ]

    def peer_time(p: dict) -> str:
        return f"fails: {p['error']}" if p["error"] else fmt(p["seconds"], 3)

    lines += md_table(
        ["device", "model", "reduce", "samples", "points (dims)", "tunnelscope (s)"]
        + [f"{p} (s)" for p in peers] + [f"{p} / tunnelscope time" for p in peers]
        + ["tunnelscope / forward", "max error tunnelscope"] + [f"max error {p}" for p in peers]
        + ["max error uncentred f64"],
        [[r["device"], r["model"], r["reduce"], r["samples"], f"{r['points']} ({r['dims']})", fmt(r["ours_s"], 3)]
         + [peer_time(r["peers"][p]) for p in peers]
         + [fmt(r["peers"][p]["seconds"] / r["ours_s"], 1) + "×" if not r["peers"][p]["error"] else "n/a"
            for p in peers]
         + [fmt(r["ours_ratio"]), sci(r["ours_max_err"])] + [sci(r["peers"][p]["max_err"]) for p in peers]
         + [sci(r["uncentred_f64_max_err"])]
         for r in rows])
    leftover = [r for r in rows if r.get("leftover_peer_hooks")]
    return lines + [
        "",
        "Where the peers go wrong: both form float32 Gram matrices of uncentred features and evaluate the",
        "unbiased HSIC₁ by cancelling large terms. With large feature means (here ReLU outputs shifted by",
        "+20) torch-cka's self-HSIC turns negative and it stops with `HSIC computation resulted in NANs`;",
        "pytorch-cka clamps CKA into [0, 1] and replaces a zero denominator, so it returns a matrix",
        "without a warning whatever was lost. The `uncentred f64` column shows what that formula loses",
        "even in float64 (n/a: it broke down too). torch-cka also recomputes the second model's Gram for",
        "every layer pair, syncs with `.item()` per pair, runs the model twice per batch with autograd on,",
        "and never removes its hooks.",
        *([f"Peer hooks left on a model after cleanup: {', '.join(r['case'] for r in leftover)}."] if leftover else []),
        "",
    ]


def probes_section(results: list[dict]) -> list[str]:
    """All-layer probes: joint trainer against the per-layer loop and scikit-learn."""
    probe_rows = of_case(results, "probes-mlp12")
    first = probe_rows[0] if probe_rows else {"train": 15000, "test": 5000, "epochs": 10, "repeats": 1}
    lines = [
        "## 6. All-layer linear probes",
        "",
        f"Softmax probes for every probe point on cached MLP-12 features ({first['train']} train, {first['test']}",
        f"test; harun protocol, here for {first['epochs']} epochs): tunnelscope's joint trainer; the per-layer loop of",
        "the same protocol as the papers' code runs it (an `nn.Linear` per layer, autograd, `torch.optim.AdamW`,",
        "one layer after another; PyTorch's default initialisation, so accuracies differ a little);",
        "tunnelscope's own trainer called once per layer (same initialisation and batches as the joint",
        "run, so equal accuracy is expected); and scikit-learn's LogisticRegression (lbfgs,",
        f"standardised features) per layer. Every time is the median of {first['repeats']} runs.",
        "Goal: >= 10x the per-layer loop at equal accuracy (±0.5 pp).",
        "",
    ]
    lines += md_table(
        ["device", "points", "joint (s)", "per-layer loop (s)", "speed-up", "max accuracy difference (pp)",
         "tunnelscope one layer at a time (s)", "speed-up", "max difference (pp)", "scikit-learn (s)", "speed-up",
         "mean accuracy joint / scikit-learn"],
        [[r["device"], r["points"], fmt(r["joint_s"]), fmt(r["plain_s"]), f"**{fmt(r['speedup_plain'], 1)}×**",
          fmt(r["max_diff_plain_pp"]), fmt(r["loop_s"]), f"{fmt(r['speedup_loop'], 1)}×", fmt(r["max_diff_loop_pp"]),
          fmt(r["sklearn_s"]), f"{fmt(r['speedup_sklearn'], 1)}×",
          f"{fmt(r['mean_acc_joint'], 4)} / {fmt(r['mean_acc_sklearn'], 4)}"]
         for r in probe_rows])
    lines += [
        "",
        "The default protocol, `lbfgs` (standardised L2 logistic regression run to max |gradient| <= 1e-4 ·",
        "min(1, N/P)),",
        "on the same features, against scikit-learn's LogisticRegression (the same objective):",
        "",
    ]
    lines += md_table(
        ["device", "points", "lbfgs (s)", "converged", "scikit-learn (s)", "speed-up", "max accuracy difference (pp)",
         "mean accuracy lbfgs / scikit-learn"],
        [[r["device"], r["points"], fmt(r["lbfgs_s"]), f"{r['lbfgs_converged']}/{r['points']}", fmt(r["sklearn_s"]),
          f"{fmt(r['sklearn_s'] / r['lbfgs_s'], 1)}×", fmt(r["max_diff_lbfgs_sklearn_pp"]),
          f"{fmt(r['mean_acc_lbfgs'], 4)} / {fmt(r['mean_acc_sklearn'], 4)}"]
         for r in probe_rows])
    for r in of_case(results, "probes-widths"):
        lines += [
            "",
            f"The joint `harun` trainer against the papers' per-layer loop across widths ({r['device']}; "
            f"{r['points']} points, {r['train']} training and {r['test']} test rows of synthetic Gaussian class",
            f"features, {r['epochs']} epochs; median of {r['repeats']} repeats after a warm-up). At D = 2048 a",
            "step is bound by matrix-multiply throughput, which no batching of points reduces: the joint trainer",
            "then only saves per-call overhead, so the ratio tends to 1 from above.",
            "",
        ]
        lines += md_table(["D", "C", "joint (s)", "per-layer loop (s)", "speed-up"],
                          [[w["dims"], w["classes"], fmt(w["joint_s"]), fmt(w["loop_s"]),
                            f"**{fmt(w['speedup'], 2)}×**"] for w in r["rows"]])
    return lines + [""] + solver_lines(results)


def solver_lines(results: list[dict]) -> list[str]:
    """The default probe against scikit-learn across widths and class counts, with the floor."""
    lines = []
    for r in of_case(results, "probes-solver"):
        lines += [
            "The default probe (`lbfgs`, `tunnelscope.logistic`) against a per-layer scikit-learn loop",
            f"(`StandardScaler` + `LogisticRegression`, lbfgs, C = 1) on {r['points']} synthetic layer-like feature",
            f"sets ({r['train']} train, {r['test']} test rows: class clusters in a 64-d latent code mixed into D",
            f"post-ReLU units), on {r['threads']} thread for both (torch and the BLAS under scikit-learn); median",
            f"of {r['repeats']} after a warm-up. scikit-learn at its defaults (tol 1e-4) stops short of the optimum",
            "where the parameters P = (D+1)·C outnumber the samples; tunnelscope's tolerance is scaled by",
            "min(1, N/P) to reach it, so its accuracies are compared with scikit-learn at tol 1e-7 (the optimum,",
            "timed once) as well. The floor is tunnelscope's iterations × one evaluation's two float32 passes.",
            "",
        ]
        lines += md_table(
            ["D", "C", "tunnelscope (s)", "scikit-learn default (s)", "speed-up", "scikit-learn to the optimum (s)",
             "speed-up", "max diff. vs optimum (pp)", "max diff. vs default (pp)", "default off optimum (pp)",
             "converged", "tunnelscope / floor"],
            [[w["dims"], w["classes"], fmt(w["ours_s"]), fmt(w["sklearn_s"]), f"**{fmt(w['speedup'], 2)}×**",
              fmt(w["sklearn_optimum_s"]), f"{fmt(w['speedup_optimum'], 1)}×", fmt(w["max_diff_optimum_pp"]),
              fmt(w["max_diff_default_pp"]), fmt(w["sklearn_default_off_optimum_pp"]),
              f"{w['converged']}/{r['points']}", f"{fmt(w['over_floor'], 2)}×"] for w in r["rows"]])
        lines.append("")
    for r in of_case(results, "probes-select"):
        lines += [
            "Choosing C on data (the default probe: each C of 0.01, 0.1, 1, 10 fitted on 90% of the training",
            "rows, warm-started, the best on the held-out 10% kept) against the scikit-learn loop that makes the",
            "same choice on the same rows, and against the probe at a fixed C = 1; synthetic layer-like features",
            f"as above, {r['points']} points, {r['train']} train and {r['test']} test rows, one thread;",
            f"median of {r['repeats']}. The held-out gap is scikit-learn's held-out accuracy at its own choice minus",
            "at tunnelscope's: where the two choose differently, how much better scikit-learn's choice scored.",
            "",
        ]
        lines += md_table(
            ["D", "C", "C chosen (s)", "C = 1 fixed (s)", "cost of choosing", "scikit-learn loop (s)", "speed-up",
             "same C as scikit-learn", "held-out gap at ours (pp)", "max test diff. (pp)", "converged"],
            [[w["dims"], w["classes"], fmt(w["ours_s"]), fmt(w["fixed_s"]), f"{fmt(w['cost_vs_fixed'], 2)}×",
              fmt(w["sklearn_s"]), f"**{fmt(w['speedup'], 2)}×**", f"{w['same_c']}/{r['points']}",
              fmt(w.get("max_held_out_gap_pp")), fmt(w["max_diff_pp"]),
              f"{w['converged']}/{r['points']}"] for w in r["rows"]])
        lines.append("")
    for r in of_case(results, "probes-demo"):
        lines += [
            f"On the demo's own features ({r['model']} trained as `tunnelscope demo` trains it, {r['data']} and the",
            f"OOD sets {', '.join(r['ood'])}, every point, sampled as `analyze` samples): the default probe against",
            "scikit-learn at its defaults and at tol 1e-7, per probe.",
            "",
        ]
        lines += md_table(["probes", "converged", "max diff. vs scikit-learn default (pp)",
                           "max diff. vs optimum (pp)"],
                          [[r["probes"], r["converged"], fmt(r["max_diff_sklearn_pp"]), fmt(r["max_diff_optimum_pp"])]])
        lines.append("")
    return lines


def invert_section(results: list[dict]) -> list[str]:
    """Batched input reconstruction against the one-image-one-layer loop."""
    rows = of_case(results, "invert-mlp12")
    steps = rows[0]["steps"] if rows else 100
    lines = [
        "## 7. Input reconstruction",
        "",
        f"Images × layers reconstructed per second (Badger's protocol, here {steps} steps instead of 500,",
        "without tunnelscope's refinement, whose length depends on when each row is decided): all rows",
        "in one batched optimisation against the original protocol's loop of one image and one layer",
        "per run, from the same starting points. The difference column is the largest",
        "absolute difference between the two reconstructions of any pixel.",
        "",
    ]
    lines += md_table(
        ["device", "model", "images × points", "batched (rows/s)", "loop (rows/s)", "speed-up", "max difference"],
        [[r["device"], r["model"], f"{r['images']} × {r['points']}", fmt(r["rows_per_s_batched"]),
          fmt(r["rows_per_s_loop"]), f"**{fmt(r['speedup'], 1)}×**", f"{r['max_abs_diff']:.1e}"]
         for r in rows])
    return lines + [""]


def monitor_section(results: list[dict]) -> list[str]:
    """The training monitor's overhead against the training it watches."""
    rows = of_case(results, "monitor-demo")
    lines = [
        "## 9. Training monitor",
        "",
        "A plain loop of SGD steps on the demo's model and data (batch 128), alone and watched by a",
        "`Monitor` with its defaults (256 samples per split reduced by GAP, a ridge probe, rank, NCC, CKA)",
        "every K steps, and also with the dense early steps (1, 2, 4, ... below K). Overhead: the watched",
        "loop's extra time over the loop alone (the three loops interleaved, medians).",
        "",
    ]
    lines += md_table(
        ["device", "model", "steps", "K", "train step (s)", "measurement (s)", "measurement / step", "overhead at K",
         "with the dense early steps"],
        [[r["device"], r["model"], r["steps"], r["every"], fmt(r["train_step_s"], 4),
          fmt(r["steady_measurement_s"], 3), fmt(r["measurement_over_step"], 1),
          f"**{pct(r['steady_overhead'])}** ({r['steady_measurements']} measurements)",
          f"{pct(r['dense_overhead'])} ({r['dense_measurements']} measurements)"] for r in rows])
    return lines + [""]


def training_section(training: list[dict]) -> list[str]:
    """Batching and an SGD epoch against the forward pass."""
    lines = [
        "## 8. Training step and batching",
        "",
        "`batching / forward`: producing the normalised batches alone, over the forward pass that consumes",
        "them. `train / forward`: one epoch of SGD steps over the same data.",
        "",
    ]
    if not training:
        return lines + ["Not run (quick run).", ""]
    lines += md_table(
        ["device", "model", "data", "samples", "forward (s)", "batching / forward", "train / forward"],
        [[r["device"], f"`{r['model']}`", f"`{r['data']}`", r["samples"], fmt(r["forward_s"], 3),
          fmt(r["batching_ratio"]), fmt(r["train_ratio"])] for r in training])
    return lines + [""]


def write_report(out: Path, results: list[dict], training: list[dict], repeats: int, quick: bool = False) -> None:
    """Write the markdown report of ``results`` (the cases' JSON lines) and ``training``."""
    versions = package_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); every case runs in a fresh process (`bench/cases.py`).",
        "Ratios are against the forward-pass floor: one plain inference pass of the same model over the",
        f"same samples, in the same process, median of {repeats} repeats after a warm-up. Seconds are",
        "context only: the machines are shared and noisy.",
        "",
        f"- Machine: {cpu}, {torch.get_num_threads()} torch threads; GPU: {gpu or 'none'}.",
        f"- torch {versions['torch']}, numpy {versions['numpy']}, tunnelscope {versions['tunnelscope']}; "
        f"{time.strftime('%Y-%m-%d')}.",
    ]
    if quick:
        lines.append(f"- **Quick run**: at most {QUICK_SAMPLES} samples per split and untrained models; for checking "
                     "the cases, not for comparison with full runs.")
    lines.append("")
    for section in (statistics_section, width_section, help_section, analyze_section, cka_section, probes_section,
                    invert_section, monitor_section):
        lines += section(results)
    lines += training_section(training)
    lines += failures_section(results)
    lines += ["## GPU", ""]
    lines.append(f"Measured on {gpu}: the rows with device `cuda` above." if gpu else
                 "No GPU was available to this run; the CUDA column is empty. `make bench` on a CUDA machine adds "
                 "`cuda` rows to every table.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3; quick: 1)")
    parser.add_argument("--cases", nargs="*", default=CASES, choices=list(KNOWN_CASES), metavar="CASE",
                        help=f"cases to run (default: all): {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_SAMPLES} samples per split, untrained models, no training table; "
                             f"writes {QUICK_OUT.relative_to(ROOT)} unless --out is given")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = run_cases(args.cases, devices, repeats, args.quick)
    raw = ROOT / "runs" / "bench-results.json"  # kept before the report is written, so that no measurement is lost
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1, default=str))
    training = [] if args.quick else [
        bench_training(m, d, torch.device(dev), b, repeats) for dev in devices
        for m, d, b in (("mlp-12x256", "fashion-mnist[classes=0-4]", 512),
                        ("vggm11-w0.25", "fashion-mnist[classes=0-4,size=32,channels=3]", 256))]
    write_report(out, results, training, repeats, args.quick)
    print(f"wrote {out}", file=sys.stderr)
    return 1 if any("case_failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
