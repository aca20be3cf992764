"""One process of the ``analyze-ranks``, ``stream-1m`` and ``stream-shards`` cases: ``tunnelscope.analyze`` (or,
with ``statistics``, ``analyze_layers``) on a model and data, timed; under ``torchrun`` every
process reports to rank 0, which prints one JSON line (seconds and peak RSS per process).
Arguments: ``analyze|statistics MODEL DATA OOD_JSON MAX_SAMPLES`` (0: every sample). Run by
``bench/cases.py``, not by hand."""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings

import torch

import tunnelscope as ts
from tunnelscope.engine.distributed import launched_group


def main() -> None:
    kind, model, data, ood, samples = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
    with launched_group("cpu") as world:
        ds = ts.data.load(data)
        warnings.simplefilter("ignore")
        if world.parallel:
            torch.distributed.barrier()
        tic = time.perf_counter()
        if kind == "statistics":
            from tunnelscope.engine import analyze_layers

            results = analyze_layers(model, ds, max_samples=samples or None, device="cpu", progress=False)
        else:
            results = ts.analyze(model, ds, ood=ood, max_samples=samples or None, device="cpu", progress=False)
        seconds = time.perf_counter() - tic
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reports = world.collect({"seconds": seconds, "peak_rss_mib": rss_mib})
    if world.leader:
        first = "probe_acc" if kind == "analyze" else "rank"
        print(json.dumps({"processes": world.size, "per_process": reports,
                          "probe_acc_mean": float(results.table.query(f"metric == '{first}'").value.mean())}))


if __name__ == "__main__":
    main()
