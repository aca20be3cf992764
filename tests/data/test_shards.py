"""``webdataset:PATH``: tar shards written by the ``webdataset`` package read back sample for sample
as that package reads them, dealt to processes whole batch by whole batch, indexed once, and
refused in one line when a shard or a sample is malformed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from optional import require
from tunnelscope import data
from tunnelscope.data import sources
from tunnelscope.engine.distributed import World
from tunnelscope.errors import DataNotFoundError

CLASSES = 3


def write_shards(root: Path, train: int = 240, test: int = 90, per_shard: int = 50) -> Path:
    """Grey 8x8 PNGs whose brightness depends on the class, written by ``webdataset.ShardWriter``
    into ``root/train`` and ``root/test`` (several shards each)."""
    wds = require("webdataset")
    from PIL import Image

    for sub, count, seed in (("train", train, 0), ("test", test, 1)):
        (root / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        with wds.ShardWriter(str(root / sub / "part-%04d.tar"), maxcount=per_shard, verbose=0) as sink:
            for i in range(count):
                label = int(rng.integers(CLASSES))
                pixels = np.clip(rng.normal(60 + 60 * label, 30, (8, 8)), 0, 255).astype(np.uint8)
                sink.write({"__key__": f"{sub}{i:06d}", "png": Image.fromarray(pixels), "cls": label})
    return root


@pytest.fixture()
def shards(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    return write_shards(tmp_path / "shards")


def _package_reads(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of ``folder``'s shards as the webdataset package decodes them, in its order."""
    wds = require("webdataset")
    urls = [str(p) for p in sorted(folder.glob("*.tar"))]
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("l").to_tuple("png", "cls")
    images, labels = zip(*pipeline)
    return np.stack(images).astype(np.float32), np.array(labels)  # "l": grey floats in [0, 1]


def test_samples_are_those_the_webdataset_package_reads(shards):
    ds = data.load(f"webdataset:{shards}[norm=none]")
    assert (ds.num_classes, ds.input_shape, len(ds.train), len(ds.test)) == (CLASSES, (1, 8, 8), 240, 90)
    assert ds.info["base"] == "webdataset"
    for split, sub in ((ds.train, "train"), (ds.test, "test")):
        images, labels = _package_reads(shards / sub)
        ours = [(x, y) for x, y in split.batches(64)]
        pixels = torch.cat([x for x, _ in ours])[:, 0].numpy()  # the same 8-bit pixels (scaled by 1/255 differently)
        np.testing.assert_array_equal(np.rint(pixels * 255), np.rint(images * 255))
        np.testing.assert_array_equal(torch.cat([y for _, y in ours]).numpy(), labels)
        np.testing.assert_array_equal(split.labels.numpy(), labels)


def test_each_process_streams_exactly_its_batches(shards):
    split = data.load(f"webdataset:{shards}[norm=none]").train
    batches = [x for x, _ in split.batches(32)]
    for rank in range(3):
        local = [x for x, _ in World(rank, 3).local(split, 32).batches(32)]
        assert len(local) == len(batches[rank::3])
        assert all(torch.equal(a, b) for a, b in zip(local, batches[rank::3]))


def test_modifiers_select_classes_and_cap_them(shards):
    ds = data.load(f"webdataset:{shards}[classes=1-2,per_class=20,norm=none]")
    assert ds.num_classes == 2
    assert torch.bincount(ds.train.labels).tolist() == [20, 20]
    _, labels = _package_reads(shards / "test")
    assert len(ds.test) == int(np.isin(labels, [1, 2]).sum())


def test_an_index_is_kept_until_its_shard_changes(shards, tmp_path):
    first = data.load(f"webdataset:{shards}[norm=none]").train.labels
    assert len(list((tmp_path / "cache" / "shard-index").glob("*.npz"))) == 7  # 5 train + 2 test shards
    shard = shards / "train" / "part-0000.tar"
    with tarfile.open(shard, "w") as tar:  # rewritten: one sample, of class 2
        for name, payload in (("only.png", _png()), ("only.cls", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    os.utime(shard, ns=(1, 1))  # a different mtime even on a coarse clock
    again = data.load(f"webdataset:{shards}[norm=none]").train.labels
    assert len(again) == len(first) - 50 + 1
    assert int(again[0]) == 2 and torch.equal(again[1:], first[50:])


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize(("members", "said"), [
    ([("a.png", b"")], r"sample 'a' .* has members \['png'\]; each sample needs one image .* \(\.cls\)"),
    ([("a.cls", b"1")], r"sample 'a' .* has members \['cls'\]"),
    ([("a.png", b""), ("a.cls", b"cat")], r"a.cls in .* holds 'cat', not a class index"),
])
def test_a_malformed_sample_is_refused_in_one_line(tmp_path, monkeypatch, members, said):
    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    _shard(tmp_path / "d" / "train" / "0.tar", members)
    _shard(tmp_path / "d" / "test" / "0.tar", [("b.png", _png()), ("b.cls", b"0")])
    with pytest.raises(DataNotFoundError, match=said):
        data.load(f"webdataset:{tmp_path / 'd'}")


def test_compressed_missing_and_empty_shards_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    root = tmp_path / "d"
    with pytest.raises(DataNotFoundError, match="needs train/ and test/ subfolders with WebDataset .tar shards"):
        data.load(f"webdataset:{root}")
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with pytest.raises(DataNotFoundError, match="holds no .tar shards"):
        data.load(f"webdataset:{root}")
    import gzip

    (root / "train" / "0.tar").write_bytes(gzip.compress(b"x" * 2000))
    _shard(root / "test" / "0.tar", [("b.png", _png()), ("b.cls", b"0")])
    with pytest.raises(DataNotFoundError, match="not a readable uncompressed tar file"):
        data.load(f"webdataset:{root}")


KEYS = ["split", "point", "metric", "other_point", "dataset", "reference"]


def _analyze(launcher: list[str], spec: str, out: Path, cache: Path) -> subprocess.CompletedProcess:
    args = ["analyze", "--model", "mlp-3x32", "--data", spec, "--batch-size", "32", "--cka-passes", "2",
            "--resamples", "100", "--device", "cpu", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=300)


def test_two_processes_analyse_shards_as_one_does(tmp_path):
    root = write_shards(tmp_path / "shards", train=400, test=150)
    spec = f"webdataset:{root}[norm=none]"
    one = _analyze([sys.executable, "-m", "tunnelscope.cli"], spec, tmp_path / "one", tmp_path / "cache")
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "tunnelscope.cli"]
    two = _analyze(torchrun, spec, tmp_path / "two", tmp_path / "cache")
    assert two.returncode == 0, two.stderr[-3000:]
    a = pd.read_parquet(tmp_path / "one" / "results.parquet")
    b = pd.read_parquet(tmp_path / "two" / "results.parquet")
    both = a.merge(b, on=KEYS, suffixes=("_1", "_2"), how="outer", indicator=True)
    assert (both["_merge"] == "both").all() and len(both) > 50
    exact = both[both.metric.isin({"rank", "probe_acc", "ncc_acc", "ridge_acc", "probe_converged"})]
    assert len(exact) > 10
    np.testing.assert_array_equal(exact.value_1.to_numpy(), exact.value_2.to_numpy())
    rest = both[~both.index.isin(exact.index)]
    np.testing.assert_allclose(rest.value_2.to_numpy(), rest.value_1.to_numpy(), rtol=1e-5, atol=1e-9)
