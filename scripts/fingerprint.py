"""Fingerprint harness: run small tunnelscope scenarios and hash every output file, to show a refactor changes none.

    python scripts/fingerprint.py --work /tmp/fp-a --out before.json [--only NAME ...]   # or --list
    python scripts/fingerprint.py --diff before.json after.json   # exit 1 when anything differs

Scenarios run through the command line (``python -c "...; sys.exit(tunnelscope.cli.main())"``, so that
``PYTHONPATH`` picks the tree under test) plus one call of the stable API (``tunnelscope.analyze``,
``Results.load``); they are small and single-threaded, so bit-for-bit repeatable on the CPU. Tables are hashed
as CSV text with floats at 9 significant digits (shape, columns and a hash per column kept); JSON and
checkpoint metadata canonically, without ``VOLATILE_KEYS`` (a hash per top-level key kept); checkpoints by
their tensors; figures (.png, .svg, .html) form a group of their own (SVG ids and dates normalised, the
config embedded in report.html normalised like config.json). The work dir's absolute path reads ``<WORK>``.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ID = "fashion-mnist[classes=0-4,per_class=200,test_per_class=100]"
OOD_F = "fashion-mnist[classes=5-9,per_class=200,test_per_class=100]"
OOD_D = "digits[size=28]"
CLI = "import sys; from tunnelscope.cli import main; sys.exit(main())"  # main() returns the exit status
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
       "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "", "TZ": "UTC"}
FIGURE_SUFFIXES = {".png", ".svg", ".html"}
# ``{mlp}`` etc. in a command: the last checkpoint of that training scenario, found when the command runs.
PLACEHOLDERS = {"mlp": "train-mlp", "mlp1": "train-mlp-seed1", "conv": "train-convnet", "res": "train-resnet",
                "m1d": "train-mnist1d"}

# Keys dropped from JSON, checkpoint metadata and table columns. Found by running the harness twice on one
# tree: ``seconds`` (config.json's statistics/probes/top level, dynamics step files, history.csv, resume.pt's
# history, continual's fine-tuning history), ``started``/``finished`` (run.json, sweep cell records) and ``pid``
# (sweep cell records). ``versions`` (packages and platform) is stable run to run but is environment, not output.
VOLATILE_KEYS = re.compile(r"^(seconds|started|finished|pid|versions)$")
# matplotlib draws SVG ids from a random salt; they are renumbered in order of appearance.
SVG_ID = re.compile(r'(?<=id=")[^"]+|(?<=url\(#)[^)]+|(?<=href="#)[^"]+')

API_SNIPPET = f"""
import json, sys
import tunnelscope as ts
out = sys.argv[1]
r = ts.analyze(sys.argv[2], "{ID}", ood=["{OOD_D}"], metrics="probe,rank,nc", max_samples=300, resamples=100,
               progress=False)
r.table.to_parquet(out + "/analyze_table.parquet")
open(out + "/analyze_summary.json", "w").write(json.dumps(r.summary, default=str))
ts.Results.load("analyze-default").layer_table(intervals=True).to_parquet(out + "/layer_table.parquet")
"""


@dataclass
class Scenario:
    """Commands run in order in the work dir; every file under the folder ``name`` is fingerprinted."""

    name: str
    commands: list[list[str]]
    prepare: Callable[[Path], None] | None = None
    python: bool = False  # the commands are ``python -c API_SNIPPET ARGS``, not CLI arguments
    needs: tuple[str, ...] = ()  # scenarios whose outputs it reads, besides those its arguments name


def cli(name: str, *commands: str, **options: Any) -> Scenario:
    """A scenario of CLI commands written as shell words (``{ID}``, ``{OOD_F}``, ``{OOD_D}`` are the data specs)."""
    specs = {"ID": ID, "OOD_F": OOD_F, "OOD_D": OOD_D}
    words = [[w.format(**specs, **{k: "{" + k + "}" for k in PLACEHOLDERS}) for w in shlex.split(c)] for c in commands]
    return Scenario(name, words, **options)


def analyze(name: str, checkpoint: str, options: str = "", data: str = "{ID}") -> Scenario:
    """An ``analyze`` scenario, 300 samples and 100 resamples unless ``options`` set them."""
    defaults = "".join(f" --{k} {v}" for k, v in (("max-samples", 300), ("resamples", 100)) if f"--{k}" not in options)
    return cli(name, f"analyze --checkpoint {checkpoint} --data {data}{defaults} {options} -q --out {name}")


def train(name: str, model: str, options: str = "", data: str = "{ID}") -> Scenario:
    """A seeded, single-threaded training run, 2 epochs unless ``options`` say otherwise."""
    epochs = "" if "--epochs" in options else " --epochs 2"
    return cli(name, f"train --model {model} --data {data} --threads 1 --device cpu{epochs} {options} -q --out {name}")


def copy_analysis(target: Path) -> None:
    """Copy analyze-default's data files (no figures, no report) into ``target``, for ``report`` to rebuild."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("results.parquet", "config.json", "summary.json"):
        shutil.copy2(target.parent / "analyze-default" / name, target / name)


def write_sweep(target: Path) -> None:
    """A 2 depths x 2 seeds sweep of tiny MLPs with 3 OOD sets: 12 OOD-level rows for ``explain``."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "sweep.yaml").write_text(f"""name: fp-sweep
store: store
grid: {{depth: [2, 3], width: [16], seed: [0, 1]}}
cell: {{model: "mlp-{{depth}}x{{width}}", data: "{ID}", epochs: 1, seed: "{{seed}}"}}
analysis: {{ood: ["{OOD_F}", "{OOD_D}", "fashion-mnist[classes=5-9,per_class=50,test_per_class=50]"],
  metrics: "probe,rank,nc", max_samples: 200}}
resources: {{cpus: 1}}
""")


def write_design_table(target: Path) -> None:
    """A synthetic design table (seeded) with planted effects, for ``explain`` with pairs and one-hot variables."""
    import numpy as np
    import pandas as pd

    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = [{"augment": a, "resolution": r, "arch": arch, "seed": s,
             "pct_retained": 60 + 12 * a + 0.1 * r + {"mlp": 0, "cnn": 5, "vit": -3}[arch] + rng.normal(0, 2)}
            for a in (0, 1) for r in (32, 64) for arch in ("mlp", "cnn", "vit") for s in (0, 1, 2)]
    pd.DataFrame(rows).to_csv(target / "design.csv", index=False)


def scenarios() -> list[Scenario]:
    """Every scenario in running order, trainings first. Those that analyse a re-initialised copy of a model (whose
    seeding may change on purpose) say ``untrained`` in their name."""
    small = "--max-samples 300 -q"
    return [
        train("train-mlp", "mlp-4x64"),
        train("train-mlp-seed1", "mlp-4x64", "--seed 1 --dense-steps 3"),
        train("train-convnet", "convnet-2x16", "--recipe adamw --batch-size 64"),
        train("train-resnet", "cifar-resnet-8", "--schedule onecycle --no-early-checkpoints"),
        train("train-mnist1d", "mlp-3x32", "--epochs 1", data="mnist1d[n=1000]"),
        analyze("analyze-default", "{mlp}", "--ood {OOD_F} --ood {OOD_D}"),
        analyze("analyze-seed1", "{mlp1}", "--ood {OOD_F} --ood {OOD_D}"),
        analyze("analyze-all-metrics", "{mlp}", "--metrics all --ood {OOD_D} --batch-size 100"),
        analyze("analyze-harun", "{mlp}", "--protocol harun --probe-epochs 5 --select val --probe-seeds 2 "
                "--metrics probe --ood {OOD_D}"),
        analyze("analyze-untrained-reference", "{mlp}", "--untrained-reference --metrics probe,rank,nc --ood {OOD_D}"),
        analyze("analyze-ridge-proxy", "{mlp1}", "--protocol ridge --max-train 200 --no-input "
                "--metrics probe,ridge,trace_w,trace_b,l1_step,cka_nopc1"),
        analyze("analyze-conv-points-gap", "{conv}", "--points conv --reduce gap --metrics probe,rank,cka "
                "--cka-passes 3 --ood {OOD_D}"),
        analyze("analyze-conv-flatten", "{conv}", "--reduce flatten --max-dim 500 --metrics probe,ncc,cdnv "
                "--ncc-eps 0.2"),
        analyze("analyze-conv-project", "{conv}", "--reduce project:32 --seed 3 "
                "--metrics probe,rank,erank,pc1,pc1_sim,cka_full"),
        analyze("analyze-glob-points", "{mlp}", "--points blocks.?.1 --metrics probe,rank,cka --batch-size 64 "
                "--protocol harun --probe-epochs 3 --select test"),
        analyze("analyze-resnet", "{res}", "--ood {OOD_D} --resamples 0"),
        analyze("analyze-step0-checkpoint", "train-mlp/checkpoints/step-0000000.pt",
                "--max-samples 0 --metrics probe,ncc"),
        analyze("analyze-mnist1d", "{m1d}", data="mnist1d[n=1000]"),
        Scenario("api", [["api", "{mlp}"]], python=True, needs=("analyze-default",)),
        cli("compare", "compare analyze-default analyze-seed1 analyze-conv-points-gap -q --out compare"),
        cli("report-rebuild", "report report-rebuild -q", prepare=copy_analysis, needs=("analyze-default",)),
        cli("dynamics", "dynamics train-mlp --ood {OOD_D} --steps log:4 --max-samples 200 --resamples 50 -q "
            "--out dynamics"),
        cli("dynamics-stats", "dynamics train-mlp-seed1 --metrics rank,nc --steps 0,2,3,14 --heatmap rank --heatmap "
            "ncc_acc --max-samples 200 --resamples 0 -q --out dynamics-stats"),
        cli("continual", "continual --model mlp-3x32 --task1 {ID} --task2 {OOD_F} --epochs 1 --finetune-epochs 1 "
            "--device cpu -q --out continual"),
        cli("intervene-movement", "intervene movement train-mlp -q --out intervene-movement"),
        cli("intervene-reset", f"intervene reset train-mlp --direction both {small} --out intervene-reset"),
        cli("intervene-delete-blocks", f"intervene delete-blocks train-resnet --range 2-3 {small} "
            "--out intervene-delete-blocks"),
        cli("invert", "invert --checkpoint {conv} --data {ID} --images 2 --steps 20 --no-untrained --device cpu -q "
            "--out invert"),
        cli("invert-untrained-copy", "invert --checkpoint {conv} --data {ID} --images 2 --steps 20 --device cpu -q "
            "--out invert-untrained-copy"),
        cli("cross-cka", "cross-cka {mlp} {conv} --data {ID} --max-samples 300 --batch-size 50 -q --out cross-cka"),
        cli("agreement", "agreement {mlp} {mlp1} {conv} --group mlp --group mlp --group conv --data {ID} "
            f"{small} --out agreement"),
        cli("sweep", "sweep sweep/sweep.yaml --max-concurrent 2 --device cpu -q",
            "sweep collect sweep/sweep.yaml -q --out sweep/collected.parquet",
            "sweep collect sweep/sweep.yaml --level ood -q --out sweep/collected-ood.parquet", prepare=write_sweep),
        cli("explain-sweep", "explain sweep/collected-ood.parquet --target retained --vars depth --vars ood "
            "--categorical ood --cluster cell --out explain-sweep"),
        cli("explain-design", "explain explain-design/design.csv --target pct_retained --vars augment --vars "
            "resolution --vars arch --categorical arch --pair augment --pair-on resolution --pair-on arch "
            "--pair-on seed --l1-normalise --out explain-design/out", prepare=write_design_table),
        cli("demo-quick-untrained", "demo --quick --device cpu -q --out demo-quick-untrained"),  # with its reference
    ]


def last_checkpoint(work: Path, run: str) -> str:
    """The highest-step checkpoint of a training scenario, relative to the work dir."""
    found = sorted((work / run / "checkpoints").glob("step-*.pt"))
    return str(found[-1].relative_to(work)) if found else f"{run}/checkpoints/MISSING"


def with_inputs(chosen: list[str], every: list[Scenario]) -> list[Scenario]:
    """The chosen scenarios and, before them, every scenario whose outputs they read (transitively)."""
    by_name = {s.name: s for s in every}
    wanted, todo = set(), list(chosen)
    while todo:
        scenario = by_name[todo.pop()]
        wanted.add(scenario.name)
        args = [a for command in scenario.commands for a in command]
        found = [run for key, run in PLACEHOLDERS.items() if any("{" + key + "}" in a for a in args)]
        found += [n for n in by_name if n != scenario.name and any(a == n or a.startswith(n + "/") for a in args)]
        todo += [n for n in (*found, *scenario.needs) if n not in wanted]
    return [s for s in every if s.name in wanted]


def run_scenario(scenario: Scenario, work: Path) -> list[int]:
    """Run a scenario's commands in ``work``; return their exit codes (the log goes to ``work/logs``)."""
    if scenario.prepare:
        scenario.prepare(work / scenario.name)
    env = {**os.environ, **ENV}
    codes = []
    with open(work / "logs" / f"{scenario.name}.log", "w") as log:
        for command in scenario.commands:
            args = [a.format(**{k: last_checkpoint(work, v) for k, v in PLACEHOLDERS.items()}) for a in command]
            if scenario.python:
                (work / scenario.name).mkdir(exist_ok=True)
                argv = [sys.executable, "-c", API_SNIPPET, scenario.name, *args[1:]]
            else:
                argv = [sys.executable, "-c", CLI, *args]
            log.write("$ " + " ".join(argv[:2] + argv[3:]) + "\n")
            log.flush()
            codes.append(subprocess.run(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode)
            if codes[-1]:
                break
    return codes


def sha(data: bytes | str) -> str:
    """Short SHA-256 hex digest."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def normalise_text(text: str, work: Path) -> str:
    """Replace the work dir's absolute path with ``<WORK>`` and renumber SVG ids in order of appearance."""
    for path in {str(work.resolve()), str(work.absolute())}:
        text = text.replace(path, "<WORK>")
    ids: dict[str, str] = {}
    return SVG_ID.sub(lambda m: ids.setdefault(m.group(0), f"id{len(ids)}"), text)


def normalise(value: Any, work: Path) -> Any:
    """JSON-like value without volatile keys, floats at 9 significant digits, paths normalised."""
    if isinstance(value, dict):
        return {str(k): normalise(v, work) for k, v in value.items() if not VOLATILE_KEYS.match(str(k))}
    if isinstance(value, list | tuple):
        return [normalise(v, work) for v in value]
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.9g}")
    if isinstance(value, str):
        return normalise_text(value, work)
    return value


def canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, anything not JSON as its ``str``."""
    return json.dumps(value, sort_keys=True, default=str)


def json_fingerprint(data: Any, work: Path) -> dict[str, Any]:
    """Hash of canonical JSON without volatile keys, with a hash per top-level key."""
    data = normalise(data, work)
    parts = {k: sha(canonical(v)) for k, v in data.items()} if isinstance(data, dict) else {}
    return {"kind": "json", "sha": sha(canonical(data)), "parts": parts}


def embedded_json(escaped: str, work: Path) -> str:
    """A report's ``<pre>`` block: normalised like a JSON file when it holds JSON, else left as it is."""
    try:
        data = json.loads(html.unescape(escaped))
    except ValueError:
        return escaped
    return "<pre>" + canonical(normalise(data, work)) + "</pre>"


def cell(value: Any, work: Path) -> Any:
    """One table cell, normalised like JSON (floats at 9 significant digits, arrays as lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return canonical(normalise(value, work)) if isinstance(value, list | dict) else normalise(value, work)


def table_fingerprint(path: Path, work: Path) -> dict[str, Any]:
    """Hash of a table as CSV text (column order kept, floats at 9 significant digits), shape and columns."""
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    df = df[[c for c in df.columns if not VOLATILE_KEYS.match(str(c))]]  # e.g. history.csv's ``seconds``
    columns = []
    for name in df.columns:
        text = "\n".join(f"{v:.9g}" if isinstance(v, float) else str(cell(v, work)) for v in df[name])
        columns.append([str(name), str(df[name].dtype), sha(text)])
    return {"kind": "table", "sha": sha(json.dumps(columns)), "shape": list(df.shape), "columns": columns}


def checkpoint_fingerprint(path: Path, work: Path) -> dict[str, Any]:
    """Hash of a checkpoint's tensors (name, dtype, shape, values) and of its metadata, from ``weights_only``."""
    import torch

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            return f"tensor {t.dtype} {list(t.shape)} {sha(raw)}"
        if isinstance(value, dict):
            return {str(k): walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    fp = json_fingerprint(walk(torch.load(path, map_location="cpu", weights_only=True)), work)
    return {**fp, "kind": "checkpoint"}


def file_fingerprint(path: Path, work: Path) -> dict[str, Any]:
    """The fingerprint of one output file, chosen by its suffix; ``group`` is ``figures`` or ``data``."""
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".csv"}:
            fp = table_fingerprint(path, work)
        elif suffix == ".json":
            fp = json_fingerprint(json.loads(path.read_text()), work)
        elif suffix == ".pt":
            fp = checkpoint_fingerprint(path, work)
        elif suffix == ".png":
            fp = {"kind": "bytes", "sha": sha(path.read_bytes())}
        else:
            text = path.read_bytes().decode("utf-8", errors="replace")
            text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # SVG: date, matplotlib version
            text = re.sub(r"<pre>(.*?)</pre>", lambda m: embedded_json(m.group(1), work), text, flags=re.S)
            fp = {"kind": "text", "sha": sha(normalise_text(text, work))}
    except Exception as error:  # an unreadable file is a fingerprint too
        message = normalise_text(f"{type(error).__name__}: {error}", work)[:300]
        fp = {"kind": "unreadable", "sha": sha(message), "error": message}
    return {"group": "figures" if suffix in FIGURE_SUFFIXES else "data", **fp}


def fingerprint_scenario(scenario: Scenario, codes: list[int], work: Path) -> dict[str, Any]:
    """Every file under the scenario's folder, by relative path, plus the commands' exit codes."""
    root = work / scenario.name
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")) if root.exists() else []
    exits = {"group": "data", "kind": "exit", "sha": sha(str(codes)), "codes": codes}
    return {"<exit codes>": exits, **{str(p.relative_to(root)): file_fingerprint(p, work) for p in files}}


def run_all(work: Path, out: Path, only: list[str] | None) -> None:
    """Run the scenarios (all, or ``only`` these) into a fresh ``work`` and write their fingerprints to ``out``."""
    every = scenarios()
    unknown = set(only or ()) - {s.name for s in every}
    if unknown:
        sys.exit(f"unknown scenario(s) {sorted(unknown)}; known: {[s.name for s in every]}")
    chosen = with_inputs(only, every) if only else every
    if work.exists() and any(work.iterdir()) and not (work / "logs").is_dir():
        sys.exit(f"{work} is not empty and holds no earlier harness run (no logs/); choose another --work")
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    fingerprints: dict[str, Any] = {}
    start = time.monotonic()
    where = subprocess.run([sys.executable, "-c", "import tunnelscope; print(tunnelscope.__file__)"],
                           capture_output=True, text=True, env={**os.environ, **ENV}).stdout.strip()
    print(f"tunnelscope under test: {where or 'not importable'}", flush=True)
    for scenario in chosen:
        began = time.monotonic()
        codes = run_scenario(scenario, work)
        if not only or scenario.name in only:
            fingerprints[scenario.name] = fingerprint_scenario(scenario, codes, work)
        status = "ok" if not any(codes) else f"FAILED {codes} (see {work}/logs/{scenario.name}.log)"
        print(f"{scenario.name:32s} {time.monotonic() - began:6.1f} s  {status}", flush=True)
    out.write_text(json.dumps(fingerprints, indent=1, sort_keys=True) + "\n")
    print(f"{len(chosen)} scenarios in {time.monotonic() - start:.0f} s; fingerprints: {out}")


def describe(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two fingerprints of one file: shape, columns, top-level keys, exit codes."""
    if a.get("kind") != b.get("kind"):
        return f"kind {a.get('kind')} -> {b.get('kind')}"
    notes = [f"shape {a.get('shape')} -> {b.get('shape')}"] if a.get("shape") != b.get("shape") else []
    columns = [{c[0]: c[1:] for c in fp.get("columns", [])} for fp in (a, b)]
    for label, pa, pb in (("column", *columns), ("key", a.get("parts", {}), b.get("parts", {}))):
        notes += [f"-{label} {k}" for k in pa if k not in pb] + [f"+{label} {k}" for k in pb if k not in pa]
        notes += [f"{label} {k}" for k in pa if k in pb and pa[k] != pb[k]]
    if a.get("codes") != b.get("codes"):
        notes.append(f"exit codes {a.get('codes')} -> {b.get('codes')}")
    return "; ".join(notes) or "content"


def diff(path_a: Path, path_b: Path) -> int:
    """Print the differences between two fingerprint files, data first, figures apart; 1 if any."""
    a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    lines: dict[str, list[str]] = {"data": [], "figures": []}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            lines["data"].append(f"{name}: scenario only in {path_a if name in a else path_b}")
            continue
        fa, fb = a[name], b[name]
        for rel in sorted(set(fa) | set(fb)):
            group = (fa.get(rel) or fb.get(rel))["group"]
            if rel not in fa or rel not in fb:
                lines[group].append(f"{name}/{rel}: only in {path_a if rel in fa else path_b}")
            elif fa[rel] != fb[rel]:
                lines[group].append(f"{name}/{rel}: {describe(fa[rel], fb[rel])}")
    for group, found in lines.items():
        print(f"== {group}: {len(found)} difference(s)")
        for line in found:
            print("  " + line)
    return 1 if any(lines.values()) else 0


def main() -> None:
    """Command line: run the scenarios, or diff two fingerprint files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder to run the scenarios in (emptied first)")
    parser.add_argument("--out", type=Path, help="fingerprint JSON to write")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="fingerprint only these scenarios (their inputs run too)")
    parser.add_argument("--diff", nargs=2, type=Path, metavar=("A", "B"), help="compare two fingerprint files")
    parser.add_argument("--list", action="store_true", help="print the scenarios and their commands")
    args = parser.parse_args()
    if args.list:
        for s in scenarios():
            for command in s.commands:
                print(f"{s.name}: " + ("python API: " if s.python else "tunnelscope ") + " ".join(
                    repr(c) if " " in c or "[" in c else c for c in command))
    elif args.diff:
        sys.exit(diff(*args.diff))
    elif args.work and args.out:
        run_all(args.work, args.out, args.only)
    else:
        parser.error("give --work and --out, or --diff A B, or --list")


if __name__ == "__main__":
    main()
