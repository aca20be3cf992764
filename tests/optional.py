"""Optional packages in tests: skipped with the reason when missing, unless the suite runs under
``make test`` (``TUNNELSCOPE_REQUIRE_EXTRAS=1``), which installs them: there a missing package
is a failure, so that no skip can hide a broken feature."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

EXTRAS = {"shap": "explain", "timm": "timm", "transformers": "hf", "accelerate": "hf", "lightning": "lightning",
          "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
          "webdataset": "test"}


def require(package: str) -> ModuleType:
    """Import ``package``; when it is missing, fail under ``make test`` and skip (saying why) elsewhere."""
    if os.environ.get("TUNNELSCOPE_REQUIRE_EXTRAS"):
        return importlib.import_module(package)
    return pytest.importorskip(package, reason=f"{package} is not installed: pip install "
                                               f"'tunnelscope[{EXTRAS.get(package, 'test')}]'")
