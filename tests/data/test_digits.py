"""``digits``: scikit-learn's digits and its stratified 80/20 split, read without importing
scikit-learn once the split is cached, and equal to what scikit-learn itself gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tunnelscope import data
from tunnelscope.data import digits, sources


def test_the_table_is_scikit_learns_digits():
    bunch = load_digits()
    table = digits.digits_table()
    assert digits.digits_file() is not None  # this scikit-learn keeps the file where it is looked for
    np.testing.assert_array_equal(table[:, :64], bunch.data)
    np.testing.assert_array_equal(table[:, 64], bunch.target)


def test_without_the_file_load_digits_reads_the_same_table(monkeypatch):
    expected = digits.digits_table()
    monkeypatch.setattr(digits, "digits_file", lambda: None)
    np.testing.assert_array_equal(digits.digits_table(), expected)


def test_the_splits_are_scikit_learns_train_test_split(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target, test_size=0.2, random_state=0,
                                              stratify=bunch.target)
    ds = sources._load_digits(None, {})  # type: ignore[arg-type]  (it reads no context)
    assert torch.equal(ds.train_x, torch.from_numpy(x_tr)) and torch.equal(ds.test_x, torch.from_numpy(x_te))
    assert torch.equal(ds.train_y, torch.from_numpy(y_tr)) and torch.equal(ds.test_y, torch.from_numpy(y_te))
    assert (len(ds.train_y), len(ds.test_y)) == (1437, 360)


def test_the_cached_split_is_used_and_a_foreign_or_broken_one_is_not(monkeypatch, tmp_path):
    labels = digits.digits_table()[:, 64]
    first = digits.digits_split(labels, tmp_path)
    [cached] = (tmp_path / "digits-split").glob("*.npz")
    monkeypatch.setattr(digits, "sklearn_split", lambda y: (np.array([0]), np.array([1])))  # any recomputation shows
    again = digits.digits_split(labels, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len(digits.digits_split(np.roll(labels, 1), tmp_path)[0]) == 1  # other labels: not this split
    cached.write_bytes(b"not an npz file")
    assert len(digits.digits_split(labels, tmp_path)[0]) == 1  # unreadable: split again


def test_a_later_process_loads_the_digits_without_importing_scikit_learn(tmp_path):
    probe = ("import json, sys; from tunnelscope import data; d = data.load('digits'); "
             "print(json.dumps(['sklearn' in sys.modules, int(d.train.labels[:50].sum()), len(d.test)]))")
    env = {**os.environ, "TUNNELSCOPE_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    (imported_first, sum_first, test_first), (imported_later, sum_later, test_later) = (
        json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert imported_first and not imported_later
    assert (sum_first, test_first) == (sum_later, test_later) == (int(data.load("digits").train.labels[:50].sum()),
                                                                  360)
