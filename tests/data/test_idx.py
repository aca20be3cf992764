import gzip

import numpy as np
import pytest

from files import fashion_root, idx_bytes
from tunnelscope.data.idx import read_idx
from tunnelscope.errors import DataNotFoundError


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.shape == (5, 3, 4) and np.array_equal(out, array)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    array = np.zeros((4, 2), dtype=np.uint8)
    (tmp_path / "short").write_bytes(idx_bytes(array)[:-1])
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataNotFoundError, match="not an IDX"):
        read_idx(tmp_path / "text")


@pytest.mark.parametrize("labels, message", [
    (np.arange(5) % 10, "holds 6 images but .* 5 labels"),
    ([0, 1, 2, 200, 4, 5], "holds label 200"),
])
def test_fashion_files_that_do_not_fit_together_are_refused(no_data, labels, message):
    from tunnelscope import data

    root = fashion_root(no_data / "root", labels)
    with pytest.raises(DataNotFoundError, match=message):
        data.load("fashion-mnist", root=root)


def test_a_gzip_bomb_stops_at_the_cap(tmp_path, monkeypatch):
    import tunnelscope.data.idx as idx

    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1 << 20)
    header = bytes([0, 0, 0x08, 1]) + (1 << 24).to_bytes(4, "big")
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(header + bytes(1 << 24)))  # 16 MiB of zeros, 16 KiB on disk
    with pytest.raises(DataNotFoundError, match="more than 1 MiB"):
        read_idx(tmp_path / "bomb.gz")
