"""Damaged or hostile input files that several tests write: IDX data roots, explain tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an uncompressed IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fashion_root(root: Path, train_labels=None, images: int = 6) -> Path:
    """A Fashion-MNIST data root of blank images; ``train_labels`` replaces the training labels."""
    root.mkdir(parents=True, exist_ok=True)
    x = np.zeros((images, 28, 28), dtype=np.uint8)
    y = np.arange(images) % 10 if train_labels is None else np.asarray(train_labels)
    for stem, array in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                        ("t10k-images-idx3-ubyte", x), ("t10k-labels-idx1-ubyte", np.arange(images) % 10)):
        (root / stem).write_bytes(idx_bytes(array))
    return root


def bad_explain_tables(folder: Path) -> dict[str, bytes]:
    """The explain inputs that ended in internal errors, written into ``folder``."""
    rows = ["retained,aug,depth,cell"] + [f"{60 + i},{'none' if i % 2 else 'crop'},{i % 4},c{i % 3}" for i in range(14)]
    with_inf = rows[:4] + ["63,none,inf,c0"] + rows[5:]
    with_nan_cluster = rows[:4] + ["63,none,3,"] + rows[5:]
    huge = ["retained,aug"] + [f"{'-' if i % 2 else ''}1e308,{'none' if i % 2 else 'crop'}" for i in range(12)]
    big = ["retained,aug,big"] + [f"{60 + i},{'none' if i % 2 else 'crop'},{(i % 4) * 1e200}" for i in range(14)]
    constant = ["retained,aug"] + [f"80,{'none' if i % 2 else 'crop'}" for i in range(12)]
    files = {"empty.csv": b"", "random.csv": bytes([0x8C, 0xFE, 0x01]) * 100,
             "utf16.csv": "a,b\n1,2\n".encode("utf-16"),
             "corrupt.parquet": b"PAR1" + bytes(100), "inf.csv": "\n".join(with_inf).encode(),
             "nan-cluster.csv": "\n".join(with_nan_cluster).encode(), "huge.csv": "\n".join(huge).encode(),
             "constant.csv": "\n".join(constant).encode(), "big-variable.csv": "\n".join(big).encode(),
             "good.csv": "\n".join(rows).encode()}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files
