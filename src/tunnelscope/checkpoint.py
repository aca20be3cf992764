"""Checkpoints that carry their model spec, data spec and class count.

A checkpoint is a ``torch.save`` dict ``{"format", "format_version", "meta", "model"}``,
``meta`` holding the model spec, data spec, number of classes, input shape, class names,
the training step and epoch, and package versions. :func:`tunnelscope.models.load_model`
rebuilds the model from the path alone.
"""

from __future__ import annotations

import pickle
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .io import atomic_write
from .versions import package_versions

FORMAT = "tunnelscope.checkpoint"
FORMAT_VERSION = 1
REQUIRED_META = ("model_spec", "data_spec", "num_classes", "input_shape")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights with ``meta`` (and ``extra`` state) atomically to ``path``."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": {**meta, "versions": package_versions()},
        "model": model.state_dict(),
        **(extra or {}),
    }
    # serialised in memory first: torch's zip writer, interrupted while writing through a Python file,
    # writes again from its destructor once that file is closed, and the process aborts
    buffer = BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def safe_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings and plain containers
    only, so that no file can run code here. Every failure is a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle stream
        raise CheckpointError(f"{what} {path} is not a PyTorch file (it starts with {head!r}, not a zip archive or a "
                              "pickle); give a .pt file written by torch.save or 'tunnelscope train'")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(f"{what} {path} holds Python objects other than tensors and plain containers; "
                                  "tunnelscope reads files with weights_only=True and never runs code from one: "
                                  "save a plain state_dict (torch.save(model.state_dict(), path))") from None
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch file") from None
    except Exception as exc:  # zip, EOF and decoding errors of every kind
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch file ({type(exc).__name__})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint file, raising :class:`CheckpointError` if unusable."""
    path = Path(path)
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tunnelscope checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer tunnelscope (format {payload['format_version']})")
    meta = payload.get("meta", {})
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing or "model" not in payload:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing or ['model']}")
    return payload


