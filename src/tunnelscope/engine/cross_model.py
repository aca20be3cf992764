"""Minibatch CKA between the probe points of two models read on the same batches (Nguyen et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import data as data_mod
from ..capture import capture_for
from ..device import resolve_device
from ..errors import ConfigError, InsufficientDataError
from ..metrics.cka import MIN_BATCH, MinibatchCKA
from ..models import resolve_model
from ..progress import progress_bar
from .settings import AnalysisSettings, settings_from

MIN_CKA_SAMPLES = 50  # below this, a CKA value says more about the draw than about the layers


def cross_model_cka(  # noqa: PLR0913 (a public facade: readable keywords)
    model_a: nn.Module | str | Path,
    model_b: nn.Module | str | Path,
    data: data_mod.Dataset | str,
    points: str | Sequence[str] = "blocks",
    reduce: str = "pool2",
    split: str = "test",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    max_samples: int | None = 10_000,
    seed: int = 0,
    precision: str = "float32",
    data_root: str | Path | None = None,
    progress: bool | None = None,
    settings: AnalysisSettings | None = None,
    cka_passes: int = 1,
) -> pd.DataFrame:
    """Minibatch CKA between every probe point of ``model_a`` (rows) and of ``model_b``
    (columns), both reading the same batches of one split in the same pass. ``cka_passes``
    passes feed the HSIC sums: the first in order, each later one shuffled (seeded by
    ``seed + 1000 + pass``, as ``analyze`` does; Nguyen et al. use 10).

    Both models must take the dataset's inputs. The settings may come whole as ``settings``
    (:class:`AnalysisSettings`; keywords left at their defaults do not override it). Returns an
    ``L_a x L_b`` DataFrame whose ``attrs`` record the settings.
    """
    s = settings_from(settings, locals())
    batch_size, seed = s.batch_size, s.seed
    if batch_size < MIN_BATCH:
        raise ConfigError(f"batch_size {batch_size} is below {MIN_BATCH}, the smallest minibatch HSIC₁ allows")
    dev = resolve_device(s.device)
    dataset = data if isinstance(data, data_mod.Dataset) else data_mod.load(data, root=s.data_root)
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, not {split!r}")
    chosen, n = data_mod.sample_split(getattr(dataset, split), s.max_samples, seed)
    if n < MIN_CKA_SAMPLES:
        raise InsufficientDataError(f"CKA from {n} samples of {dataset.spec} ({split}) is mostly noise (the unbiased "
                                    f"estimator swings below 0); give at least {MIN_CKA_SAMPLES} (--max-samples)")
    example = next(dataset.test.batches(2, device=dev))[0]
    (net_a, name_a, _), (net_b, name_b, _) = (resolve_model(model, dev, dataset, seed=seed)
                                              for model in (model_a, model_b))
    cap_a, cap_b = (capture_for(net, s.points_request, reduce=s.reduce, seed=seed, example=example)
                    for net in (net_a, net_b))
    keys = [f"a/{p}" for p in cap_a.names] + [f"b/{p}" for p in cap_b.names]
    acc = MinibatchCKA(keys, gram_dtype=torch.float64 if s.precision == "float64" else torch.float32)
    for module in (net_a, net_b):
        module.eval()
    with progress_bar(s.progress) as bars, torch.inference_mode():
        task = bars.add_task(f"{split} pass{'es' if s.cka_passes > 1 else ''} (2 models)", total=n * s.cka_passes,
                             info="")
        seen = 0
        for extra in range(s.cka_passes):  # pass 1 in order; pass p > 1 shuffled by seed + 1000 + p - 1, as analyze
            order = torch.Generator().manual_seed(seed + 1000 + extra) if extra else None
            for x, _ in chosen.batches(batch_size, device=dev, shuffle=extra > 0, generator=order):
                fa, fb = cap_a(x), cap_b(x)
                acc.update({**{f"a/{k}": v for k, v in fa.items()}, **{f"b/{k}": v for k, v in fb.items()}})
                seen += len(x)
                bars.update(task, completed=seen)
    la = len(cap_a.names)
    mat = acc.compute()[:la, la:].cpu().numpy()
    frame = pd.DataFrame(mat, index=pd.Index(cap_a.names, name=name_a), columns=pd.Index(cap_b.names, name=name_b))
    frame.attrs.update({"data": dataset.spec, "split": split, "samples": n, "batch_size": batch_size,
                        "cka_passes": s.cka_passes,
                        "reduce": s.reduce, "skipped_batches": acc.skipped, "precision": s.precision})
    return frame
