"""Versions of the packages that can change a number, recorded with every result."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("tunnelscope", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "mnist1d")


def package_versions() -> dict[str, str]:
    """Python, platform and the installed version of each package that affects results."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
