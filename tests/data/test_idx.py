import gzip

import numpy as np
import pytest

from tunnelscope.data.idx import read_idx
from tunnelscope.errors import DataNotFoundError


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.shape == (5, 3, 4) and np.array_equal(out, array)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    array = np.zeros((4, 2), dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(array)[:-1])
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataNotFoundError, match="not an IDX"):
        read_idx(tmp_path / "text")
