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


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models run far faster so than on two contended
    threads, above all on a busy machine; the thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """tunnelscope's user cache in a folder of each test's own (inherited by the processes it
    starts): no test reads what another left, and none writes into the user's home."""
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("TUNNELSCOPE_CACHE", str(folder))
    return folder


@pytest.fixture(scope="session")
def fashion() -> data.Dataset:
    return data.load("fashion-mnist")


@pytest.fixture(scope="session")
def fashion_small() -> data.Dataset:
    return data.load("fashion-mnist[classes=0-4,per_class=100,test_per_class=40]")


TRAINED_DATA = "fashion-mnist[classes=0-4,per_class=300,test_per_class=100]"


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory) -> tuple:
    """The suite's shared trained model: an MLP of 6 blocks of width 64, 4 epochs on 1500
    Fashion-MNIST images of classes 0-4 (test accuracy about 0.85, a short tunnel).
    Returns ``(TrainResult, Dataset)``; tests must not change the model in place."""
    from tunnelscope import train

    ds = data.load(TRAINED_DATA)
    out = tmp_path_factory.mktemp("trained-mlp")
    return train("mlp-6x64", ds, epochs=4, out=out, batch_size=64, progress=False, early_checkpoints=False), ds


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
