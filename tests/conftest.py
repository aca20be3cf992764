"""Shared fixtures: datasets loaded once per session, and an isolated data environment."""

from __future__ import annotations

import os

import pytest
import torch

import tunnelscope.data.sources as sources
from tunnelscope import data


@pytest.fixture(autouse=True)
def _seeded_and_single_threaded_inputs():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fashion() -> data.Dataset:
    return data.load("fashion-mnist")


@pytest.fixture(scope="session")
def fashion_small() -> data.Dataset:
    return data.load("fashion-mnist[classes=0-4,per_class=100,test_per_class=40]")


@pytest.fixture()
def no_data(tmp_path, monkeypatch):
    """An environment where no dataset files can be found and nothing may be downloaded."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "root").mkdir()
    monkeypatch.setattr(sources, "SYSTEM_FASHION_DIR", empty / "system")
    monkeypatch.setattr(sources, "user_cache_dir", lambda: empty / "cache")
    monkeypatch.setenv("TUNNELSCOPE_DATA", str(empty / "root"))
    return empty


# In tests, an unexpected exception in the CLI raises with its traceback (a bug must fail loudly),
# instead of the one-line "internal error" users get.
os.environ.setdefault("TUNNELSCOPE_DEBUG", "1")
