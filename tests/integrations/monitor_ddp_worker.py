"""One process of tests/integrations/test_monitor_ddp.py: a DistributedDataParallel loop on
``digits[classes=0-4]`` (each process its own batches, gradients averaged) watched by a Monitor
every 4 steps. Writes, from every process, its monitor table; from rank 0, the model as it was
at step 8. Argument: the output folder."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunnelscope import data
from tunnelscope.engine.distributed import launched_group
from tunnelscope.experiments.monitor import Monitor
from tunnelscope.integrations.writers import TableWriter

POINTS = ["1.0", "1.1", "1.2"]  # the three blocks of net()
SNAPSHOT_STEP = 8


def net() -> nn.Module:
    """Three blocks of 32 ReLU units and a head; no batch norm, whose buffers DDP re-broadcasts."""
    blocks = nn.Sequential(*(nn.Sequential(nn.Linear(n_in, 32), nn.ReLU()) for n_in in (64, 32, 32)))
    return nn.Sequential(nn.Flatten(), blocks, nn.Linear(32, 5))


def main() -> None:
    out = Path(sys.argv[1])
    with launched_group("cpu") as world:
        ds = data.load("digits[classes=0-4]")
        torch.manual_seed(0)
        local = net()
        model = nn.parallel.DistributedDataParallel(local)
        writer = TableWriter(out / f"written-by-rank-{world.rank}.parquet")
        monitor = Monitor(local, ds, points=POINTS, every=4, writers=[writer])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        batches = list(ds.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
        steps = 0
        for x, y in monitor.watch(batches[world.rank::world.size][:SNAPSHOT_STEP], 0):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps += 1
            if steps == SNAPSHOT_STEP and world.leader:
                torch.save(local.state_dict(), out / "snapshot.pt")
        monitor.close()
        monitor.table.to_parquet(out / f"table-{world.rank}.parquet")


if __name__ == "__main__":
    main()
