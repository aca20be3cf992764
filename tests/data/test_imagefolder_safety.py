"""Image folders are read as they are on disk, whatever links and special files they hold:
no sample invented or mislabelled by a link loop, no hang on a FIFO, each image once."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from tunnelscope import data
from tunnelscope.errors import DataNotFoundError


def _folder(root, per_class: int = 4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b", "c"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _load(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(f"imagefolder:{root}[size=8]")
    return ds, [str(w.message) for w in caught if "imagefolder" in str(w.message)]


@pytest.mark.parametrize("target", ["..", ".", "/etc"])
def test_linked_folders_are_not_followed(tmp_path, target):
    root = _folder(tmp_path / "images")
    os.symlink(target, root / "train" / "a" / "loop")
    ds, said = _load(root)
    assert len(ds.train) == 12 and torch.equal(ds.train.labels.sort().values, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    assert said and "linked folder(s) not followed" in said[0]


def test_a_linked_class_folder_is_not_a_class(tmp_path):
    root = _folder(tmp_path / "images")
    os.symlink(root / "train" / "a", root / "train" / "d")
    ds, said = _load(root)
    assert ds.num_classes == 3 and len(ds.train) == 12 and "not followed" in said[0]


def test_a_fifo_is_skipped_not_read(tmp_path):
    root = _folder(tmp_path / "images")
    os.mkfifo(root / "train" / "b" / "pipe.png")
    ds, said = _load(root)
    assert len(ds.train) == 12 and "not regular files skipped" in said[0]
    assert len(list(ds.train.batches(5))) == 3  # read to the end: nothing blocks


def test_a_linked_file_counts_once_and_a_file_in_two_classes_is_refused(tmp_path):
    root = _folder(tmp_path / "images")
    os.symlink(root / "train" / "a" / "0.png", root / "train" / "a" / "again.png")
    ds, _ = _load(root)
    assert len(ds.train) == 12
    os.symlink(root / "train" / "a" / "1.png", root / "train" / "b" / "stolen.png")
    with pytest.raises(DataNotFoundError, match="same image in classes 'a' and 'b'"):
        data.load(f"imagefolder:{root}[size=8]")


def test_linked_files_outside_the_root_are_followed(tmp_path):
    """Subsets of a large collection are often built from links to its files."""
    store = _folder(tmp_path / "store")
    root = tmp_path / "subset"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                os.symlink(store / split / cls / f"{i}.png", root / split / cls / f"{i}.png")
    ds, said = _load(root)
    assert (len(ds.train), ds.num_classes, said) == (4, 2, [])


def test_workers_follow_the_cpus_this_process_may_use_not_the_hosts(tmp_path, monkeypatch):
    """On a 64-CPU host with one CPU allowed (a container, taskset), the folder's DataLoader used
    4 workers and torch warned about it before every refusal that followed."""
    from tunnelscope.threads import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert usable_cpus() == 1
    root = _folder(tmp_path / "imgs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(f"imagefolder:{root}[size=8]")
        next(ds.train.batches(4))
    assert ds.train.num_workers == 1
    assert not [w for w in caught if "worker processes" in str(w.message)]
