"""Reader for the IDX format of (Fashion-)MNIST, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


MAX_IDX_BYTES = 1 << 30  # Fashion-MNIST's largest file is 47 MB


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(MAX_IDX_BYTES + 1)  # a gzip bomb stops here, not at the memory's end
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) > MAX_IDX_BYTES:
        raise DataNotFoundError(f"{path} holds more than {MAX_IDX_BYTES >> 20} MiB of data (decompressed); "
                                "it is not a dataset file tunnelscope reads")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataNotFoundError(f"{path} is not an IDX file (bad magic number)")
    dtype = _DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataNotFoundError(
            f"{path} is truncated or corrupt: {len(raw) - header} data bytes, expected {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
