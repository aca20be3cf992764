"""The input point's statistics, kept between analyses of the same data.

Layer 0 (the model's input, reduced like the points) does not depend on the model, yet every
analysis of the same data computed it again; on an MLP it is the widest point (784 pixels), a
third of the default statistics' time. After an analysis computes it, each split's moments of
the input point and what was derived from them (eigenvalues, first principal direction, ridge
weights) are written to the user cache; a later analysis whose key matches reads them back and
leaves the input out of its moments (the input still feeds CKA, PC1 similarity, the read-outs'
scoring and the probes, which compare it with the model's points).

The key is a SHA-256 of everything that makes those numbers: the sampled rows of each split as
stored (inputs, labels, scale, normalisation), the input's shape and reduction (``reduce``,
``max_dim``, the seed of a projection or subset), the moments' level, the batch size (the
order of the sums), the product precision, the class count, the device type and thread count,
the versions of tunnelscope and torch, and the source of the modules that compute the values.
So a hit returns the numbers the same computation would give, bit for bit. Only one-process
runs on in-memory splits without augmentation, whose input is kept as a ``D x D`` scatter,
qualify; anything else computes the input as before. Whether the cache was read, written or
not used (and why) is recorded in the results' config (``input_cache``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..capture import Capture
from ..data import sources
from ..io import atomic_write
from ..metrics import PointStats
from ..metrics.moments import Moments, PointMoments

FORMAT = 1  # the layout of an entry
FOLDER = "input-point"  # under the user cache
MAX_BYTES = 1 << 30  # the folder's size beyond which the least recently used entries are removed
MOMENT_FIELDS = ("shift", "cn", "cs1", "cq", "w2", "nonfinite")


@functools.cache
def _source_digest() -> str:
    """SHA-256 of the modules whose code makes the cached numbers: a change to any of them
    misses every earlier entry."""
    from .. import features
    from ..capture import hooks, reduce
    from ..data import split
    from ..metrics import linalg, moments, registry, ridge

    digest = hashlib.sha256()
    for module in (features, hooks, reduce, split, linalg, moments, registry, ridge):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def split_fingerprint(split: Any) -> str | None:
    """SHA-256 of an in-memory split's stored inputs, labels, scale and normalisation, in order
    (None for a split that streams, or augments its inputs)."""
    from ..data.split import TensorSplit

    if not isinstance(split, TensorSplit) or split.augment is not None:
        return None
    digest = hashlib.sha256()
    for tensor in (split.x, split.y):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    digest.update(json.dumps([split.scale, split.mean, split.std]).encode())
    return digest.hexdigest()


@dataclass
class InputCache:
    """One analysis's use of the cache: its ``key`` (None when it does not qualify, ``reason``
    says why), the ``entry`` read back ({split: moments and derived values}) on a hit."""

    point: str | None
    key: str | None
    reason: str = ""
    entry: dict[str, dict] | None = None
    written: list[str] = field(default_factory=list)

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def skip(self) -> frozenset[str]:
        """Points the moments leave out: the input, on a hit."""
        return frozenset([self.point]) if self.hit and self.point else frozenset()

    def stats(self, split: str, moments: Moments) -> dict[str, PointStats]:
        """On a hit, put the cached moments of ``split``'s input into ``moments`` and return its
        stats with the derived values adopted; else nothing."""
        if self.entry is None or self.point is None:
            return {}
        saved = self.entry[split]
        point = PointMoments(**{k: saved["moments"][k] for k in MOMENT_FIELDS})
        moments.adopt_point(self.point, point)
        stats = PointStats(point)
        stats.adopt(saved["computed"])
        return {self.point: stats}

    def keep(self, split: str, point: PointMoments, stats: PointStats | None) -> None:
        """After a miss, write ``split``'s input moments and what was derived from them (a
        read-only or full cache folder only costs the write)."""
        if self.hit or self.key is None or stats is None or point.w2 is None:
            return
        moments = {k: getattr(point, k).clone() for k in MOMENT_FIELDS}  # copies: a view would save its whole base
        derived = stats.computed()
        memo = {k: _copy(v) for k, v in derived["memo"].items() if _storable(k, v)}
        computed: dict[str, Any] = {k: _copy(v) for k, v in derived.items() if k != "memo" and _plain(v)}
        computed["memo"] = memo
        payload = {"format": FORMAT, "key": self.key, "split": split, "moments": moments, "computed": computed}
        try:
            atomic_write(_path(self.key, split), lambda handle: torch.save(payload, handle))
            prune(_path(self.key, split).parent)
        except OSError:
            return
        self.written.append(split)

    def record(self) -> dict[str, Any]:
        """What the config records: where the input's statistics came from, and the key."""
        if self.key is None:
            return {"source": "computed", "cached": False, "why": self.reason}
        return {"source": "cache" if self.hit else "computed", "cached": self.hit or bool(self.written),
                "key": self.key[:24]}


def _plain(value: Any) -> bool:
    """Whether a derived value is read back without unpickling objects: a tensor, a number, a
    string or None, or a tuple of those."""
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (Tensor, bool, int, float, str))


def _copy(value: Any) -> Any:
    """A derived value with its tensors copied (a view would save its whole base)."""
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value.clone() if isinstance(value, Tensor) else value


def _storable(key: Any, value: Any) -> bool:
    """Whether a derived value of :meth:`PointStats.once` can be stored and read back without
    unpickling objects (a tuple of strings and numbers, to a plain value: :func:`_plain`)."""
    plain_key = isinstance(key, tuple) and all(isinstance(k, (str, int, float)) for k in key)
    return plain_key and _plain(value)


def prune(folder: Path, limit: int = MAX_BYTES) -> None:
    """Remove the least recently used entries (by modification time: a read touches its file)
    until the folder holds at most ``limit`` bytes."""
    entries = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    total = 0
    for path in entries:
        total += path.stat().st_size
        if total > limit:
            path.unlink(missing_ok=True)


def _path(key: str, split: str) -> Path:
    return sources.user_cache_dir() / FOLDER / f"{key[:32]}-{split}.pt"


def _read(key: str, split: str, device: torch.device, dims: int, classes: int) -> dict | None:
    """The entry of ``split`` under ``key``, checked; None when absent, unreadable or foreign."""
    try:
        saved = torch.load(_path(key, split), map_location=device, weights_only=True)
        moments = saved["moments"]
        ok = (saved["format"] == FORMAT and saved["key"] == key and saved["split"] == split
              and tuple(moments["w2"].shape) == (dims, dims) and tuple(moments["cs1"].shape) == (classes, dims))
    except Exception:  # absent, truncated or foreign: computed again and rewritten
        return None
    if ok:
        with contextlib.suppress(OSError):
            _path(key, split).touch()  # recently used: pruned last
    return saved if ok else None


def open_input_cache(enabled: bool, capture: Capture, splits: dict[str, tuple], levels: dict[str, str | None],
                     widths: list[int], context: dict[str, Any]) -> InputCache:
    """The cache for one analysis: qualify it, make its key and read its entry if there is one.
    ``splits``: each split's sample and size; ``levels``: the moments of each split (``None``:
    not read); ``context``: the rest of the key (``batch_size``, ``precision``, ``classes``,
    ``device``, ``processes``)."""
    point = capture.input_point
    used = {s: splits[s] for s, level in levels.items() if level is not None}
    why = _unqualified(enabled, capture, used, levels, widths, int(context["processes"]))
    fingerprints = {} if why else {s: split_fingerprint(split) for s, (split, _) in used.items()}
    if not why and any(f is None for f in fingerprints.values()):
        why = "a split is streamed or augments its inputs"
    if why:
        return InputCache(point, None, why)
    red = capture.reduction
    key_parts = {
        "format": FORMAT, "source": _source_digest(), "torch": torch.__version__, "splits": fingerprints,
        "width": widths[0], "threads": torch.get_num_threads(), **{k: str(v) for k, v in context.items()},
        "input": {"reduce": str(red), "max_dim": capture.max_dim, "seed": capture.seed, "flat": capture.flat_input,
                  "tokens": [capture.tokens, capture.prefix_tokens]},
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    device = torch.device(str(context["device"]))
    entries = {s: _read(key, s, device, widths[0], int(context["classes"])) for s in used}
    complete = all(e is not None for e in entries.values())
    return InputCache(point, key, "", {s: e for s, e in entries.items() if e is not None} if complete else None)


def _unqualified(enabled: bool, capture: Capture, used: dict[str, tuple], levels: dict[str, str | None],
                 widths: list[int], processes: int) -> str:
    """Why an analysis does not use the cache, by its settings alone ("" when nothing says so)."""
    if not enabled:
        return "switched off (input_cache=False)"
    if capture.input_point is None or type(capture) is not Capture:
        return "no input point captured by the model's hooks"
    if processes > 1:
        return "several processes share the passes"
    if not used or any(levels[s] != "scatter" for s in used):
        return "the input's moments need no scatter here (cheap to compute)"
    if any(widths[0] > n for _, n in used.values()):
        return "the input is wider than a split's samples (kept as rows)"
    return ""
