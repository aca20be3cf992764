"""A PyTorch Lightning ``Callback`` that drives a training monitor.

    monitor = Monitor(module.net, "fashion-mnist[classes=0-4]", every=50)
    trainer = lightning.Trainer(callbacks=[MonitorCallback(monitor, out="runs/monitored")])

It measures at step 0 when training starts, after every optimiser step the monitor's schedule
picks (``trainer.global_step``), and saves the monitor's result into ``out`` (when given) when
training ends (the ``lightning`` package: ``pip install 'tunnelscope[lightning]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:
    raise ImportError("PyTorch Lightning is not installed: pip install 'tunnelscope[lightning]'") from None

from ..experiments.monitor import Monitor


class MonitorCallback(Callback):
    """Call ``monitor.step(trainer.global_step)`` after every training batch (module docstring)."""

    def __init__(self, monitor: Monitor, out: str | Path | None = None, overwrite: bool = False) -> None:
        super().__init__()
        self.monitor, self.out, self.overwrite = monitor, out, overwrite

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Measure the model as training starts (step 0; a resumed run's step when the schedule picks it)."""
        self.monitor.step(trainer.global_step, epoch=float(trainer.current_epoch))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Measure after an optimiser step when the schedule picks ``trainer.global_step``."""
        batches = trainer.num_training_batches
        epoch = trainer.current_epoch + (batch_idx + 1) / batches if batches and batches != float("inf") else None
        self.monitor.step(trainer.global_step, epoch=epoch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Save the monitor's result into ``out`` (when given; the first process only) and close its writers."""
        if self.out is not None and trainer.is_global_zero:  # one process writes under DDP
            self.monitor.save(self.out, overwrite=self.overwrite)
        self.monitor.close()


__all__ = ["MonitorCallback"]
