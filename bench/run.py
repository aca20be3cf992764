"""Benchmarks, written to docs/benchmarks.md. Run with `make bench`.

Every case runs in a fresh process (bench/cases.py) so that peak memory belongs to it.
Figures are ratios against the forward-pass floor measured in the same process: one plain
inference pass of the same model over the same batches; seconds are context only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import tunnelscope as ts
from tunnelscope.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from cases import timed  # noqa: E402
CASES = ["stats-mlp12", "stats-vgg", "cka-mlp12", "cka-mlp12-offset", "cka-vgg", "probes-mlp12", "probes-widths",
         "invert-mlp12"]


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table: the header, its separator, and one line per row of cells."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def run_case(name: str, device: str, repeats: int) -> dict:
    print(f"bench: {name} on {device} ...", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cases.py"), name, device, str(repeats)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench case {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def sci(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def write_report(out: Path, results: list[dict], training: list[dict], repeats: int) -> None:
    versions = package_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); every case runs in a fresh process (`bench/cases.py`).",
        "Ratios are against the forward-pass floor: one plain inference pass of the same model over the",
        f"same batches, in the same process, median of {repeats} repeats after a warm-up. Seconds are",
        "context only: the machines are shared and noisy.",
        "",
        f"- Machine: {cpu}, {torch.get_num_threads()} torch threads; GPU: {gpu or 'none'}.",
        f"- torch {versions['torch']}, numpy {versions['numpy']}, tunnelscope {versions['tunnelscope']}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "## 1. The statistics pass against the forward pass",
        "",
        "The test-split pass of `analyze_layers` with its default metrics, at the default `blocks` probe",
        "points and `pool2` reduction, batches of 256: capture alone, + moments (rank, spectrum, neural",
        "collapse), + minibatch CKA, and everything (moments, CKA, NCC and ridge read-outs). Peak memory",
        "is the resident high-water mark while each pass runs (reset before it).",
        "",
    ]
    lines += md_table(
        ["device", "model", "samples", "points (dims)", "forward (s)", "capture", "+ moments", "+ CKA", "all", "goal",
         "peak MiB forward → all"],
        [[r["device"], r["model"], r["samples"], f"{r['points']} ({r['dims']})", fmt(r["forward_s"], 3),
          fmt(r["capture_ratio"]), fmt(r["moments_ratio"]), fmt(r["cka_ratio"]), f"**{fmt(r['all_ratio'])}**",
          "≤ 3" if "mlp" in r["case"] else "≤ 1.3", f"{r['peak_mib_forward']:.0f} → {r['peak_mib_stats']:.0f}"]
         for r in results if r["case"].startswith("stats")])
    lines += [
        "",
        "`+ moments` and `+ CKA` are each measured alone on top of capture; `all` is the real pass.",
        "",
        "## 2. Within-model CKA heatmap: tunnelscope against torch-cka",
        "",
        "Both tools compute the same L × L minibatch-CKA matrix over the same batches of 256 (torch-cka",
        "0.21 from PyPI, its own hooks and loop, given the same model twice as its API requires). Errors",
        "are the largest absolute difference from a float64 numpy evaluation of METRICS.md §7 on the",
        "same captured features, each batch centred first (HSIC₁ is unchanged by that shift).",
        "`uncentred f64` is the same float64 formula on uncentred Grams: what float64 alone loses.",
        "",
    ]
    ok = lambda r: r.get("peer_error") is None  # noqa: E731
    lines += md_table(
        ["device", "model", "reduce", "samples", "points (dims)", "tunnelscope (s)", "torch-cka (s)", "speed-up",
         "tunnelscope / forward", "max error tunnelscope", "max error torch-cka", "max error uncentred f64"],
        [[r["device"], r["model"], r["reduce"], r["samples"], f"{r['points']} ({r['dims']})", fmt(r["ours_s"], 3),
          fmt(r["peer_s"], 3) if ok(r) else f"fails: {r['peer_error']}",
          fmt(r["peer_s"] / r["ours_s"], 1) + "×" if ok(r) else "n/a", fmt(r["ours_ratio"]), sci(r["ours_max_err"]),
          sci(r["peer_max_err"]), sci(r["uncentred_f64_max_err"])]
         for r in results if r["case"].startswith("cka")])
    lines += [
        "",
        "Where torch-cka goes wrong: it forms float32 Gram matrices of uncentred features and evaluates the",
        "unbiased HSIC₁ by cancelling large terms, so features with large means (here ReLU outputs shifted",
        "by +20) make its self-HSIC negative and it stops with `HSIC computation resulted in NANs`; even",
        "in float64 the uncentred formula loses about five digits there. It also recomputes the second",
        "model's Gram for every layer pair, syncs with `.item()` per pair, and runs the model twice per",
        "batch with autograd on.",
        "",
        "## 3. All-layer linear probes",
        "",
        "Softmax probes for every probe point on cached MLP-12 features (15000 train, 5000 test; harun",
        "protocol, here for 10 epochs): tunnelscope's joint trainer; the per-layer loop of the same",
        "protocol as the papers' code runs it (an `nn.Linear` per layer, autograd, `torch.optim.AdamW`,",
        "one layer after another; PyTorch's default initialisation, so accuracies differ a little);",
        "tunnelscope's own trainer called once per layer (same initialisation and batches as the joint",
        "run, so equal accuracy is expected); and scikit-learn's LogisticRegression (lbfgs,",
        "standardised features) per layer. Goal: >= 10x the per-layer loop at equal accuracy (±0.5 pp).",
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
         for r in results if r["case"] == "probes-mlp12"])
    lines += [
        "",
        "The default protocol, `lbfgs` (standardised L2 logistic regression run to max |gradient| <= 1e-4),",
        "on the same features, against scikit-learn's LogisticRegression (the same objective):",
        "",
    ]
    lines += md_table(
        ["device", "points", "lbfgs (s)", "converged", "scikit-learn (s)", "speed-up", "max accuracy difference (pp)",
         "mean accuracy lbfgs / scikit-learn"],
        [[r["device"], r["points"], fmt(r["lbfgs_s"]), f"{r['lbfgs_converged']}/{r['points']}", fmt(r["sklearn_s"]),
          f"{fmt(r['sklearn_s'] / r['lbfgs_s'], 1)}×", fmt(r["max_diff_lbfgs_sklearn_pp"]),
          f"{fmt(r['mean_acc_lbfgs'], 4)} / {fmt(r['mean_acc_sklearn'], 4)}"]
         for r in results if r["case"] == "probes-mlp12"])
    for r in (r for r in results if r["case"] == "probes-widths"):
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
                          [[w["dims"], w["classes"], fmt(w["joint_s"]), fmt(w["loop_s"]), f"**{fmt(w['speedup'], 2)}×**"]
                           for w in r["rows"]])
    lines += [
        "",
        "## 4. Input reconstruction",
        "",
        "Images × layers reconstructed per second (Badger's protocol, here 100 steps instead of 500):",
        "all rows in one batched optimisation against the original protocol's loop of one image and",
        "one layer per run, from the same starting points. The difference column is the largest",
        "absolute difference between the two reconstructions of any pixel.",
        "",
    ]
    lines += md_table(
        ["device", "model", "images × points", "batched (rows/s)", "loop (rows/s)", "speed-up", "max difference"],
        [[r["device"], r["model"], f"{r['images']} × {r['points']}", fmt(r["rows_per_s_batched"]),
          fmt(r["rows_per_s_loop"]), f"**{fmt(r['speedup'], 1)}×**", f"{r['max_abs_diff']:.1e}"]
         for r in results if r["case"] == "invert-mlp12"])
    lines += [
        "",
        "## 5. Training step and batching",
        "",
        "`batching / forward`: producing the normalised batches alone, over the forward pass that consumes",
        "them. `train / forward`: one epoch of SGD steps over the same data.",
        "",
    ]
    lines += md_table(
        ["device", "model", "data", "samples", "forward (s)", "batching / forward", "train / forward"],
        [[r["device"], f"`{r['model']}`", f"`{r['data']}`", r["samples"], fmt(r["forward_s"], 3),
          fmt(r["batching_ratio"]), fmt(r["train_ratio"])] for r in training])
    lines += ["", "## GPU", ""]
    lines.append(f"Measured on {gpu}: the rows with device `cuda` above." if gpu else
                 "No GPU was available to this run; the CUDA column is empty. `make bench` on a CUDA machine adds "
                 "`cuda` rows to every table.")
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=CASES)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = [run_case(name, dev, args.repeats) for dev in devices for name in args.cases]
    training = [bench_training(m, d, torch.device(dev), b, args.repeats) for dev in devices
                for m, d, b in (("mlp-12x256", "fashion-mnist[classes=0-4]", 512),
                                ("vggm11-w0.25", "fashion-mnist[classes=0-4,size=32,channels=3]", 256))]
    write_report(args.out, results, training, args.repeats)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
