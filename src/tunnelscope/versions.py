"""Versions of the packages that can change a number, recorded with every result."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

PACKAGES = ("tunnelscope", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "mnist1d")


def package_versions() -> dict[str, str]:
    """Python, platform and the installed version of each package that affects results (read
    once per process: a training monitor records them at every measurement)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment(device=None) -> dict:
    """The settings of this process that change a trained model's or a metric's last digits:
    thread counts (they change the order of floating-point sums), deterministic-algorithm and
    cuDNN flags, and the accelerator."""
    import torch

    env = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_deterministic=torch.backends.cudnn.deterministic,
                   gpu=torch.cuda.get_device_name(index or 0))
    return env
