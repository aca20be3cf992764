"""Benchmarks, written to docs/benchmarks.md. Run with `make bench`.

Each figure is a ratio against the forward-pass floor (one inference pass of the same model
over the same data), measured in this process run, median of repeats after a warm-up;
absolute seconds are shown for context only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import tunnelscope as ts
from tunnelscope.versions import package_versions

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def bench_pipeline(model_spec: str, data_spec: str, device: torch.device, batch: int, repeats: int) -> dict:
    """Forward floor, batching alone, and one training epoch of a model on a dataset."""
    ds = ts.data.load(data_spec)
    model = ts.models.build(model_spec, ds.num_classes, ds.input_shape).to(device)
    test = ds.test

    def batches_only():
        for x, _ in test.batches(batch, device=device):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def forward():
        model.eval()
        for x, _ in test.batches(batch, device=device):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_pass():
        model.train()
        for x, y in test.batches(batch, device=device, drop_last=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_fwd = timed(forward, repeats)
    t_data = timed(batches_only, repeats)
    t_train = timed(train_pass, repeats)
    return {"model": model_spec, "data": data_spec, "samples": len(test), "device": str(device),
            "forward_s": t_fwd, "batching_ratio": t_data / t_fwd, "train_ratio": t_train / t_fwd}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = [("mlp-12x256", "fashion-mnist[classes=0-4]", 512),
             ("vggm11-w0.25", "fashion-mnist[classes=0-4,size=32,channels=3]", 256)]
    rows = []
    for device in devices:
        for model_spec, data_spec, batch in cases:
            row = bench_pipeline(model_spec, data_spec, device, batch, args.repeats)
            rows.append(row)
            print(f"{row['device']:5s} {model_spec:14s} forward {row['forward_s']:.3f} s  "
                  f"batching/forward {row['batching_ratio']:.2f}  train/forward {row['train_ratio']:.2f}",
                  file=sys.stderr)
    versions = package_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`). Ratios are against the forward-pass floor: one",
        "inference pass of the same model over the same test split, in the same process run, median of",
        f"{args.repeats} repeats after a warm-up. Seconds are for context only; machines here are shared.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"GPU: {gpu}; torch {versions['torch']}, tunnelscope {versions['tunnelscope']}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "## Data pipeline and training step",
        "",
        "`batching/forward`: time to produce the normalised batches alone, over the forward pass that",
        "consumes them (the batching is included in the forward time). `train/forward`: one epoch of",
        "SGD steps over the same data.",
        "",
        "| device | model | data | samples | forward (s) | batching / forward | train / forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['device']} | `{r['model']}` | `{r['data']}` | {r['samples']} | {r['forward_s']:.3f} | "
                     f"{r['batching_ratio']:.2f} | {r['train_ratio']:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
