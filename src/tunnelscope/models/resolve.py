"""A model from what a user gives: a module, a checkpoint path, or a spec with optional weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError, ConfigError, ShapeError, TunnelscopeError
from .registry import build

if TYPE_CHECKING:
    from ..data import Dataset


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights: ``(model, meta)``."""
    payload = read_checkpoint(path)
    meta = payload["meta"]
    try:
        model = build(meta["model_spec"], meta["num_classes"], tuple(meta["input_shape"]))
    except TunnelscopeError as exc:
        raise CheckpointError(f"checkpoint {path} names a model that cannot be built: {exc}") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])
        raise CheckpointError(f"weights in {path} do not match {meta['model_spec']}: {first}") from None
    if bad := non_finite(model):
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad}): the run diverged or the file was "
                              "changed; use an earlier checkpoint of the run")
    return model.to(device).eval(), meta


def non_finite(model: nn.Module) -> str | None:
    """Where ``model`` holds NaN or infinite parameters (or NaN buffers: masks may hold -inf), as
    ``"NAME: K of N values"`` for the first such tensor, or None when every value is finite."""
    checks = [*((name, p, torch.isfinite) for name, p in model.named_parameters()),
              *((name, b, lambda t: ~torch.isnan(t)) for name, b in model.named_buffers() if b.is_floating_point())]
    for name, tensor, finite in checks:
        bad = ~finite(tensor.detach())
        if bool(bad.any()):
            return f"{name}: {int(bad.sum())} of {tensor.numel()} values"
    return None


def resolve_model(model: nn.Module | str | Path, device: torch.device, dataset: Dataset | None = None,
                  weights: str | Path | None = None, seed: int = 0) -> tuple[nn.Module, str, dict]:
    """A module, a checkpoint path, or (given ``dataset``) a model spec with optional
    ``weights`` → ``(module on device, its name, where it came from)``.

    A spec without ``weights`` is initialised from ``seed`` (recorded as ``init_seed``), so the
    same seed gives the same random model in every run. With ``dataset``, a checkpoint whose
    class count or input shape differs from it is refused."""
    if isinstance(model, nn.Module):
        if bad := non_finite(model):
            raise ConfigError(f"the model holds non-finite weights ({bad}); its outputs would be NaN")
        return model.to(device), getattr(model, "spec", type(model).__name__), {}
    if not isinstance(model, (str, Path)):
        raise ConfigError(f"model must be an nn.Module or a checkpoint path, not {type(model).__name__}")
    path = Path(model)
    if dataset is not None and not (path.suffix in (".pt", ".pth") or path.is_file()):
        built = build(str(model), dataset.num_classes, dataset.input_shape, weights=weights, seed=seed)
        return built.to(device), str(model), {"weights": str(weights) if weights is not None else None,
                                            "untrained": weights is None, "init_seed": seed}
    net, meta = load_model(path, device)
    if dataset is not None:
        _check_fits(net, path, dataset)
    return net, meta["model_spec"], {"checkpoint": str(model), "data_spec": meta["data_spec"], "step": meta.get("step"),
                                     "train_seed": meta.get("seed")}


def _check_fits(net: nn.Module, path: Path, dataset: Dataset) -> None:
    """Refuse a checkpoint whose classes or input shape differ from ``dataset``'s."""
    classes = getattr(net, "num_classes", dataset.num_classes)
    if classes != dataset.num_classes:
        raise ShapeError(f"checkpoint {path} has {classes} classes but {dataset.spec} has "
                        f"{dataset.num_classes}; give --data with the classes it was trained on")
    shape = tuple(getattr(net, "input_shape", dataset.input_shape))
    if shape != tuple(dataset.input_shape):
        raise ShapeError(f"checkpoint {path} expects inputs {shape} but {dataset.spec} gives "
                        f"{tuple(dataset.input_shape)}; add size=/channels= modifiers to --data")
