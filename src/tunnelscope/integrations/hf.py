"""A Hugging Face ``TrainerCallback`` that drives a training monitor.

    monitor = Monitor(model.backbone, data, every=50)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   callbacks=[MonitorTrainerCallback(monitor, out="runs/monitored")])

It measures at step 0 when training begins, after every optimiser step the monitor's
schedule picks (``state.global_step``), and saves the monitor's result into ``out`` (when
given) when training ends (``pip install 'tunnelscope[hf]'``). The monitor analyses the module
it was given: a model whose forward takes keyword inputs and returns an output object (as
``transformers`` models do) is analysed through a part of it that maps a tensor to logits,
or a thin wrapper that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("Hugging Face transformers is not installed: pip install 'tunnelscope[hf]'") from None

from ..experiments.monitor import Monitor


class MonitorTrainerCallback(TrainerCallback):
    """Call ``monitor.step(state.global_step)`` after every optimiser step (module docstring)."""

    def __init__(self, monitor: Monitor, out: str | Path | None = None, overwrite: bool = False) -> None:
        self.monitor, self.out, self.overwrite = monitor, out, overwrite

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure the model as training begins."""
        self.monitor.step(state.global_step, epoch=state.epoch)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure after an optimiser step when the schedule picks ``state.global_step``."""
        self.monitor.step(state.global_step, epoch=state.epoch)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Save the monitor's result into ``out`` (when given) and close its writers."""
        if self.out is not None and state.is_world_process_zero:  # one process writes under DDP
            self.monitor.save(self.out, overwrite=self.overwrite)
        self.monitor.close()


__all__ = ["MonitorTrainerCallback"]
