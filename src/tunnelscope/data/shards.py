"""``webdataset:PATH``: images in WebDataset tar shards, ``PATH/train/*.tar`` and ``PATH/test/*.tar``,
streamed from disk by DataLoader workers.

A sample is the run of consecutive tar members that share a key (the member name up to the
first dot of its file name, as the ``webdataset`` package groups them): one image
(``KEY.png``, ``KEY.jpg``, ...) and its class index as text (``KEY.cls``). Shards are read in
name order, samples in tar order.

Each split's shards are indexed once (every member's header is read, and every ``.cls``): the
byte offset and size of each sample's image are kept, so a sample is read by one seek into its
shard. That makes a split indexable like an image folder, so processes under ``torchrun`` read
whole batches in turn (:mod:`tunnelscope.engine.distributed`), the minibatches are those of one
process, and DataLoader workers of every process read only the bytes of their own samples. The
index of a shard is kept in the user cache, keyed by the shard's path, size and modification
time. Shards must be uncompressed tar files (as ``webdataset.ShardWriter`` writes them).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataNotFoundError
from ..specs import Spec
from . import sources
from .common import Dataset, cached_arrays
from .imagefolder import IMAGE_EXTENSIONS, load_scanned, spec_root

LABEL_EXTENSION = "cls"
INDEX_VERSION = 1  # bump when the cached index's layout changes


class MemberRef(NamedTuple):
    """Where one sample's image lies: its shard, the byte offset and size of the image's data,
    and the member's name (for messages)."""

    shard: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} in {self.shard}"


@dataclass
class ShardIndex:
    """One shard's samples in tar order: image data offsets and sizes, labels and member names."""

    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    name: np.ndarray


def _split_member(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name: the extension is everything after the first dot of
    the file name, the key everything before it (directory included)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: Path) -> int:
    """The class index stored in a ``.cls`` member."""
    handle = tar.extractfile(member)
    text = handle.read(64).decode("utf-8", "replace").strip() if handle is not None else ""
    if not text.isdigit():
        raise DataNotFoundError(f"{member.name} in {shard} holds {text[:20]!r}, not a class index; a .cls member "
                                "holds the sample's class as a non-negative integer")
    return int(text)


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Each sample of an open shard: its key and its members by extension."""
    key, members = None, {}
    for member in tar:
        if not member.isfile():
            continue
        k, ext = _split_member(member.name)
        if k != key and key is not None:
            yield key, members
            members = {}
        key = k
        members[ext] = member
    if key is not None:
        yield key, members


def _read_index(shard: Path) -> ShardIndex:
    """Index one shard by reading its members' headers and its labels."""
    offsets, sizes, labels, names = [], [], [], []
    try:
        with tarfile.open(shard, "r:") as tar:
            for key, members in _samples(tar):
                images = [m for ext, m in members.items() if f".{ext}" in IMAGE_EXTENSIONS]
                if LABEL_EXTENSION not in members or not images:
                    raise DataNotFoundError(
                        f"sample {key!r} in {shard} has members {sorted(members)}; each sample needs one image "
                        f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) and its class index (.{LABEL_EXTENSION})")
                labels.append(_label(tar, members[LABEL_EXTENSION], shard))
                offsets.append(images[0].offset_data)
                sizes.append(images[0].size)
                names.append(images[0].name)
    except (tarfile.TarError, EOFError) as exc:
        raise DataNotFoundError(f"{shard} is not a readable uncompressed tar file ({exc}); shards must be plain "
                                ".tar files, as webdataset.ShardWriter writes them") from None
    return ShardIndex(np.array(offsets, np.int64), np.array(sizes, np.int64), np.array(labels, np.int64),
                      np.array(names, dtype=str))


def shard_index(shard: Path) -> ShardIndex:
    """One shard's index, from the user cache when the shard has not changed since it was made."""
    st = shard.stat()
    key = f"{INDEX_VERSION}|{shard.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    arrays = cached_arrays(sources.user_cache_dir() / "shard-index", key, lambda: vars(_read_index(shard)))
    return ShardIndex(arrays["offset"], arrays["size"], arrays["label"], arrays["name"])


class _Samples(Sequence):
    """``(MemberRef, label)`` of each sample of a :class:`TarShards`, made on demand."""

    def __init__(self, shards: TarShards) -> None:
        self.shards = shards

    def __len__(self) -> int:
        return len(self.shards.label)

    def __getitem__(self, i: int) -> tuple[MemberRef, int]:  # type: ignore[override]
        s = self.shards
        shard = s.paths[int(s.shard[i])]
        return MemberRef(shard, int(s.offset[i]), int(s.size[i]), str(s.name[i])), int(s.label[i])


@dataclass
class TarShards:
    """One split's samples in tar shards (the ``folder`` that :func:`load_scanned` streams)."""

    root: str
    paths: list[str]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    name: np.ndarray
    classes: list[str]
    kind = "webdataset"

    @property
    def samples(self) -> _Samples:
        """``(MemberRef, label)`` per sample, in shard then tar order."""
        return _Samples(self)

    @property
    def targets(self) -> list[int]:
        return self.label.tolist()

    @staticmethod
    def read(ref: MemberRef) -> bytes:
        """The bytes of one sample's image, by one seek into its shard."""
        with open(ref.shard, "rb") as handle:
            handle.seek(ref.offset)
            data = handle.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"{ref.shard} ended before the image {ref.name}")
        return data

    def open_image(self, ref: MemberRef) -> Any:
        """One sample's image, opened lazily by PIL (a context manager)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.read(ref)))

    def loader(self, ref: MemberRef) -> Any:
        """One sample's image as RGB (as torchvision's folder loader gives it)."""
        with self.open_image(ref) as image:
            return image.convert("RGB")

    def files(self) -> list[list]:
        """What identifies the images' contents for a cache key: every shard's path, size and mtime."""
        return [[p, st.st_size, st.st_mtime_ns] for p, st in ((p, os.stat(p)) for p in self.paths)]


def index_shards(folder: Path) -> TarShards:
    """Index every ``*.tar`` shard of ``folder`` (name order); classes ``0 .. K-1``, ``K`` the
    largest label plus one."""
    paths = sorted(p for p in folder.iterdir() if p.suffix == ".tar" and p.is_file())
    if not paths:
        raise DataNotFoundError(f"{folder} holds no .tar shards; webdataset:PATH reads PATH/train/*.tar and "
                                "PATH/test/*.tar")
    parts = [shard_index(p) for p in paths]
    label = np.concatenate([p.label for p in parts])
    if not len(label):
        raise DataNotFoundError(f"the shards in {folder} hold no samples")
    return TarShards(str(folder), [str(p) for p in paths],
                     np.concatenate([np.full(len(p.label), i, np.int32) for i, p in enumerate(parts)]),
                     np.concatenate([p.offset for p in parts]), np.concatenate([p.size for p in parts]), label,
                     np.concatenate([p.name for p in parts]), [str(c) for c in range(int(label.max()) + 1)])


def load_webdataset(parsed: Spec, text: str, options: dict) -> Dataset:
    """``PATH/train/*.tar`` and ``PATH/test/*.tar`` streamed from disk, with the modifiers of an
    image folder (``size``, ``channels``, ``norm``, ``classes``, caps, label noise). Classes are
    numbered ``0 .. K-1``, ``K`` the largest class index of either split plus one."""
    root = spec_root(parsed, "WebDataset .tar shards")
    folders = {sub: index_shards(root / sub) for sub in ("train", "test")}
    classes = max((f.classes for f in folders.values()), key=len)  # both splits number the same classes
    for folder in folders.values():
        folder.classes = classes
    return load_scanned(folders, root, parsed, text, options)


__all__ = ["MemberRef", "TarShards", "index_shards", "load_webdataset", "shard_index"]
