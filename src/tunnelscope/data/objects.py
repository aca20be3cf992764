"""Data given as Python objects rather than spec strings.

:func:`as_dataset` turns any of these into a :class:`~tunnelscope.data.Dataset`:

- a spec string (loaded by :func:`tunnelscope.data.load`) or a ``Dataset`` (kept as it is);
- an ``(X, y)`` pair of tensors or numpy arrays: ``X`` is ``(N, ...)`` inputs, ``y`` ``(N,)``
  integer class indices from 0;
- a :class:`torch.utils.data.DataLoader` whose batches are ``(x, y)``;
- a :class:`torch.utils.data.Dataset` whose items are ``(x, y)``.

**Splits.** The engine fits on the *train* split (probes, class means, NCC and ridge
read-outs) and scores on the *test* split (probe accuracy, CKA). Give both as
``{"train": obj, "test": obj}`` (each any of the forms above), or one object, which is split
per class with a seeded random draw: ``test_fraction * n_c`` (rounded half up) of each class's ``n_c``
samples (at least one and at most ``n_c - 1`` when ``n_c >= 2``) go to test, the rest to
train, both kept in their original order. ``test_fraction`` (default 0.2) and
``split_seed`` (default 0) are recorded in ``info["split"]``.

**Inputs** are read once into memory (a map-style torch Dataset, or a DataLoader reading one
in order, larger than ``STREAM_BYTES`` as float32, or any with ``stream=True``, is instead
read batch by batch at each pass: see :func:`as_dataset`) and used as given: no normalisation unless
``norm="dataset"`` (per-channel mean and std of the train split, channels being dim 1; per
feature for ``(N, D)`` inputs). Integer inputs (e.g. uint8 images) are stored as they are
and converted to float per batch, float64 becomes float32. A DataLoader is iterated once,
so its transforms (augmentation included) are applied once.

**Names.** An object's dataset is named by ``name=``, else by its kind and rank among the
objects of one call: ``arrays-1``, ``loader-1``, ``torch-dataset-1`` (never by its repr).
``info`` records ``from_object``, what the object was, the split and the sample counts.

Precomputed features are read by :mod:`tunnelscope.capture.precomputed` (a stand-in model and
capture), which uses the checks and split here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InsufficientDataError, ShapeError
from .adapt import load_adapted
from .common import Dataset, chunk_channel_stats
from .registry import load
from .split import FolderSplit, Split, TensorSplit, normalise

DEFAULT_TEST_FRACTION = 0.2
NORMS = ("none", "dataset")
SPLITS = ("train", "test")
READ_BATCH = 256  # samples per batch when a torch Dataset is read into memory
STREAM_BYTES = 2 * 1024**3  # a torch Dataset whose inputs would take more as float32 is streamed, not read
FORMS = ("a spec string, a tunnelscope Dataset, an (X, y) pair of tensors or arrays, a torch DataLoader or "
         "Dataset yielding (x, y), or {'train': ..., 'test': ...} of those")


# ----------------------------------------------------------------------------------------- reading
def _is_array(a: object) -> bool:
    return isinstance(a, (Tensor, np.ndarray))


def _is_pair(obj: object) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and _is_array(obj[0])


def _is_split_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and set(obj) == set(SPLITS)


def object_kind(obj: object) -> str:
    """``arrays``, ``loader`` or ``torch-dataset`` (the kind of a split dict's train part);
    :class:`ConfigError` for anything else."""
    if _is_split_dict(obj):
        assert isinstance(obj, Mapping)
        return object_kind(obj["train"])
    if isinstance(obj, Mapping):
        raise ConfigError(f"a dict of data needs exactly the keys 'train' and 'test', got {sorted(map(str, obj))}")
    if _is_pair(obj):
        return "arrays"
    if isinstance(obj, torch.utils.data.DataLoader):
        return "loader"
    if isinstance(obj, torch.utils.data.Dataset):
        return "torch-dataset"
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        raise ConfigError(f"an (X, y) pair needs X as a tensor or numpy array, got {type(obj[0]).__name__}")
    raise ConfigError(f"cannot use {type(obj).__name__} as data; give {FORMS}")


def _as_inputs(a: Any, what: str) -> Tensor:
    """Inputs as a CPU tensor: integers kept (converted to float per batch), floats as float32."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise ConfigError(f"{what} holds {a.dtype} values; inputs must be numbers")
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, Tensor):
        raise ConfigError(f"{what} is a {type(a).__name__}; inputs must be tensors or numpy arrays")
    a = a.detach().cpu()
    if a.is_complex():
        raise ConfigError(f"{what} holds complex values; inputs must be real numbers")
    if a.is_floating_point() and not bool(torch.isfinite(a).all()):
        bad = int((~torch.isfinite(a)).sum())
        raise ConfigError(f"{what} holds {bad} NaN or infinite input value(s); every statistic of every layer "
                          "would be NaN: fill or drop those samples")
    if a.dtype == torch.bool:
        return a.to(torch.uint8)
    if a.is_floating_point() and a.dtype != torch.float16:
        return a.float()
    return a


def _as_labels(y: Any, what: str) -> Tensor:
    """Labels as a 1-D int64 tensor of class indices >= 0."""
    if isinstance(y, Tensor):
        arr = y.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(y)
        except (TypeError, ValueError):
            arr = np.asarray([], dtype=object)
    if arr.size == 0 and arr.ndim == 1:
        return torch.zeros(0, dtype=torch.long)  # refused as "holds no samples" by the caller
    if arr.dtype.kind not in "iu":
        hint = " (convert them with y.astype(int) or y.long())" if arr.dtype.kind in "fb" else ""
        raise ConfigError(f"{what} labels must be integer class indices, got {arr.dtype}{hint}")
    if arr.ndim != 1:
        hint = "; for one-hot labels use y.argmax(1)" if arr.ndim == 2 and arr.shape[1] > 1 else ""
        raise ShapeError(f"{what} labels must be a 1-D vector of class indices, got shape {arr.shape}{hint}")
    if arr.size and arr.min() < 0:
        raise ConfigError(f"{what} labels must be class indices from 0, got {int(arr.min())}")
    return torch.from_numpy(arr.astype(np.int64))


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    if len(y) == 0 or len(x) == 0:
        raise InsufficientDataError(f"{what} holds no samples")
    if x.dim() < 2:
        raise ShapeError(f"{what} inputs have shape {tuple(x.shape)}: give one row per sample, "
                         "shape (N, ...), e.g. X.reshape(-1, 1)")
    if len(x) != len(y):
        raise ShapeError(f"{what} has {len(x)} inputs but {len(y)} labels; give one label per sample")


def _check_item(dataset: torch.utils.data.Dataset, what: str) -> Any:
    """The first item of a map-style dataset, which must be ``(x, y)`` with ``x`` a tensor or
    array (None for an iterable dataset)."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        return None
    if len(dataset) == 0:
        raise InsufficientDataError(f"{what} holds no samples")
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ConfigError(f"{what} items must be (x, y) pairs; item 0 is a {type(item).__name__}")
    if not _is_array(item[0]):
        raise ConfigError(f"{what} item 0 has x of type {type(item[0]).__name__}, not a tensor or array; "
                          "add a transform such as torchvision.transforms.ToTensor()")
    return item


MAX_READ_BYTES = 8 << 30  # what an iterable source may fill memory with before it is called endless


def _read_loader(loader: Iterable, what: str) -> tuple[Tensor, Tensor]:
    """Every batch of ``loader`` as one ``(x, y)``; refused past :data:`MAX_READ_BYTES` (an
    endless or too large iterable would otherwise be read until memory runs out)."""
    xs, ys = [], []
    held = 0
    try:
        for i, batch in enumerate(loader):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ConfigError(f"{what} batches must be (x, y) pairs; batch {i} is a {type(batch).__name__}"
                                  + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))
            xs.append(_as_inputs(batch[0], f"{what} batch {i}"))
            ys.append(_as_labels(batch[1], f"{what} batch {i}"))
            held += xs[-1].nelement() * xs[-1].element_size() + ys[-1].nelement() * ys[-1].element_size()
            if held > MAX_READ_BYTES:
                raise ConfigError(f"{what} yielded more than {MAX_READ_BYTES / 2**30:.0f} GiB in {i + 1} batches "
                                  "and has not ended (an endless IterableDataset?); iterable data is held in "
                                  "memory: give a finite one, or a map-style Dataset, which is streamed")
    except TypeError as exc:
        if "collate" not in str(exc):
            raise
        raise ConfigError(f"{what} items cannot be batched ({str(exc).splitlines()[0]}); items must be (x, y) "
                          "with x a tensor or array and y an integer") from None
    except RuntimeError as exc:
        if "stack expects each tensor to be equal size" not in str(exc):
            raise
        raise ShapeError(f"{what} items have inputs of different shapes ({str(exc).splitlines()[0].split(', ', 1)[1]}"
                         "); resize or pad them to one shape (e.g. a transform)") from None
    if not xs:
        raise InsufficientDataError(f"{what} holds no samples")
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise ShapeError(f"{what} yields inputs of different shapes {sorted(shapes)}; resize them to one shape")
    return torch.cat(xs), torch.cat(ys)


def _class_names_of(obj: object) -> list[str] | None:
    """Class names an object carries (torchvision datasets' ``classes``), if any."""
    inner = obj.dataset if isinstance(obj, torch.utils.data.DataLoader) else obj
    names = getattr(inner, "classes", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _describe(obj: object) -> str:
    if _is_pair(obj):
        return "(X, y) arrays"
    if isinstance(obj, torch.utils.data.DataLoader):
        return f"DataLoader over {type(obj.dataset).__name__}"
    return f"torch Dataset {type(obj).__name__}"


def read_object(obj: object, what: str, item_checked: bool = False) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of one ``(X, y)`` pair, DataLoader or torch Dataset, checked
    (``item_checked``: a torch Dataset's first item was checked already)."""
    kind = object_kind(obj)
    if kind == "arrays":
        assert isinstance(obj, (tuple, list))
        x, y = _as_inputs(obj[0], f"{what} X"), _as_labels(obj[1], what)
    elif kind == "loader":
        assert isinstance(obj, torch.utils.data.DataLoader)
        if isinstance(obj.sampler, torch.utils.data.RandomSampler):
            warnings.warn(f"{what}: the DataLoader shuffles, so its order (and the max_samples subset drawn "
                          "from it) changes from run to run; give shuffle=False", stacklevel=3)
        if obj.drop_last:
            warnings.warn(f"{what}: the DataLoader drops its last incomplete batch, so those samples are not "
                          "analysed; give drop_last=False", stacklevel=3)
        x, y = _read_loader(obj, what)
    else:
        assert isinstance(obj, torch.utils.data.Dataset)
        if not item_checked:
            _check_item(obj, what)
        x, y = _read_loader(torch.utils.data.DataLoader(obj, batch_size=READ_BATCH, num_workers=0), what)
    _check_pair(x, y, what)
    return x, y


# ----------------------------------------------------------------------------------------- parts
@dataclass
class _Part:
    """One split of data given as objects: inputs in memory (``x``), or a map-style torch
    ``dataset`` read batch by batch at every pass; ``y`` its labels, ``shape`` and ``dtype``
    one input's."""

    y: Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    x: Tensor | None = None
    dataset: torch.utils.data.Dataset | None = None
    workers: int = 0  # DataLoader worker processes that read a streamed dataset

    def subset(self, indices: Tensor) -> _Part:
        """The samples at ``indices``, in that order."""
        if self.x is not None:
            return _Part(self.y[indices], self.shape, self.dtype, x=self.x[indices])
        assert self.dataset is not None
        return _Part(self.y[indices], self.shape, self.dtype,
                     dataset=torch.utils.data.Subset(self.dataset, indices.tolist()), workers=self.workers)

    def chunks(self) -> Iterator[Tensor]:
        """The inputs, a batch at a time (for statistics over the whole split)."""
        if self.x is not None:
            yield from self.x.split(4096)
            return
        assert self.dataset is not None
        for x, _ in torch.utils.data.DataLoader(self.dataset, batch_size=READ_BATCH, num_workers=self.workers):
            yield _as_inputs(x, "inputs")


def _map_style(obj: object) -> bool:
    """Whether ``obj`` is a map-style torch Dataset (length and indexing)."""
    return (isinstance(obj, torch.utils.data.Dataset) and not isinstance(obj, torch.utils.data.IterableDataset)
            and hasattr(obj, "__len__") and not isinstance(obj, torch.utils.data.DataLoader))


def _stream_source(obj: object) -> tuple[torch.utils.data.Dataset, int] | None:
    """``(dataset, worker processes)`` that can stream ``obj``: a map-style Dataset itself (read in
    the main process), or the dataset of a DataLoader that reads it whole, in order, with the
    default collation (read with the loader's workers); None for anything else."""
    if _map_style(obj):
        assert isinstance(obj, torch.utils.data.Dataset)
        return obj, 0
    if isinstance(obj, torch.utils.data.DataLoader) and _map_style(obj.dataset) \
            and isinstance(obj.sampler, torch.utils.data.SequentialSampler) and not obj.drop_last \
            and obj.collate_fn is torch.utils.data.default_collate:
        return obj.dataset, obj.num_workers
    return None


def _labels_only(items: list) -> list:
    """The labels of a batch of ``(x, y)`` items (inputs are not collated)."""
    return [item[1] for item in items]


def _labels_of(dataset: torch.utils.data.Dataset, what: str) -> Tensor:
    """A torch Dataset's labels: its ``targets`` when it has one label per item, else read item by
    item (which loads every input once, one batch in memory at a time)."""
    targets = getattr(dataset, "targets", None)
    n = len(dataset)  # type: ignore[arg-type]
    if targets is not None and not isinstance(targets, (str, bytes)) and hasattr(targets, "__len__") \
            and len(targets) == n:
        return _as_labels(targets, what)
    loader = torch.utils.data.DataLoader(dataset, batch_size=READ_BATCH, num_workers=0, collate_fn=_labels_only)
    labels = [_as_labels(y, f"{what} batch {i}") for i, y in enumerate(loader)]
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def _read_part(obj: object, what: str, stream: bool | None) -> _Part:
    """One object as a part: a map-style torch Dataset (or a DataLoader reading one in order,
    :func:`_stream_source`) is streamed when ``stream`` is true, or when ``stream`` is None and its
    inputs as float32 would exceed :data:`STREAM_BYTES`; anything else is read into memory."""
    source = _stream_source(obj)
    checked = False
    if stream is not False and source is not None:
        dataset, workers = source
        item = _check_item(dataset, what)
        checked = dataset is obj
        first = _as_inputs(torch.as_tensor(item[0])[None], f"{what} item 0")
        if stream or len(dataset) * first.numel() * 4 > STREAM_BYTES:  # type: ignore[arg-type]
            labels = _labels_of(dataset, what)
            _check_pair(first, labels[:1], what)  # one input and its label: shape and presence
            return _Part(labels, tuple(first.shape[1:]), first.dtype, dataset=dataset, workers=workers)
    elif stream:
        raise ConfigError(f"{what}: stream=True needs a map-style torch Dataset, or a DataLoader reading one in "
                          f"order (no shuffle, no drop_last, default collate_fn), not {_describe(obj)}; leave "
                          "stream unset to read it into memory")
    return _in_memory(*read_object(obj, what, item_checked=checked))


def _in_memory(x: Tensor, y: Tensor) -> _Part:
    """A part held in memory."""
    return _Part(y, tuple(x.shape[1:]), x.dtype, x=x)


def _split_of(part: _Part, mean: tuple[float, ...], std: tuple[float, ...], what: str) -> Split:
    """The engine's split of one part: in memory, or streamed with each batch converted and normalised."""
    if part.x is not None:
        return TensorSplit(part.x, part.y, scale=1.0, mean=mean, std=std)
    assert part.dataset is not None

    def prepare(x: Tensor) -> Tensor:
        return normalise(_as_inputs(x, f"{what} batch"), 1.0, mean, std)

    return FolderSplit(part.dataset, part.y, num_workers=part.workers, prepare=prepare, error=ShapeError)


# ----------------------------------------------------------------------------------------- splits
def split_indices(labels: Tensor, test_fraction: float = DEFAULT_TEST_FRACTION,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted train and test indices of a stratified seeded split: ``test_fraction * n_c``
    (rounded half up, clamped to ``1 .. n_c - 1`` when ``n_c >= 2``; a class of one sample
    stays in train) of each class's ``n_c`` samples are drawn for test with
    ``torch.Generator().manual_seed(seed)``, the classes taken in increasing order."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    test = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = len(idx)
        k = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1) if n >= 2 else 0
        test.append(idx[torch.randperm(n, generator=generator)[:k]])
    test_idx = torch.sort(torch.cat(test)).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[test_idx] = False
    if len(test_idx) == 0:
        raise InsufficientDataError(f"{len(labels)} samples are too few to split into train and test; give "
                                    "more samples per class or {'train': ..., 'test': ...}")
    return torch.nonzero(mask).flatten(), test_idx


def _split_record(n_test: int, n: int, test_fraction: float, seed: int) -> dict:
    return {"method": "stratified seeded split of one object", "test_fraction": test_fraction, "seed": seed,
            "description": f"{n_test} of {n} samples to test, about {test_fraction:.0%} of each class "
                           f"(torch generator seeded {seed}); the rest to train"}


def _split(part: _Part, test_fraction: float, seed: int) -> tuple[dict[str, _Part], dict]:
    """One object's part cut into train and test by :func:`split_indices`, and the record of it."""
    train, test = split_indices(part.y, test_fraction, seed)
    record = _split_record(len(test), len(part.y), test_fraction, seed)
    return {"train": part.subset(train), "test": part.subset(test)}, record


# ----------------------------------------------------------------------------------------- datasets
def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a dataset name must be a non-empty string, got {name!r}")
    if name.strip() == "id":
        raise ConfigError("'id' names the ID dataset in results; choose another name")
    return name.strip()


def _num_classes(parts: dict[str, _Part], num_classes: int | None, name: str) -> int:
    top = max(int(part.y.max()) for part in parts.values()) + 1
    if num_classes is None:
        seen = torch.unique(torch.cat([part.y for part in parts.values()]))
        if len(seen) < top:  # e.g. labels 1..3: class 0 would be a class with no sample
            missing = sorted(set(range(top)) - set(seen.tolist()))
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise ConfigError(f"{name}: labels must be the class indices 0..C-1, but no sample has label {shown} "
                              f"(labels seen: {int(seen.min())}..{top - 1}); remap them, e.g. "
                              "y = np.unique(y, return_inverse=True)[1], or give num_classes if those classes exist")
        return top
    if num_classes < top:
        raise ConfigError(f"{name}: num_classes={num_classes} but the labels go up to {top - 1}")
    return num_classes


def _class_names(given: Sequence[str] | None, carried: list[str] | None, k: int, name: str) -> list[str]:
    if given is not None:
        if len(given) != k:
            raise ConfigError(f"{name}: {len(given)} class names for {k} classes")
        return [str(n) for n in given]
    return list(carried) if carried is not None and len(carried) == k else [str(c) for c in range(k)]


def _normalise(train: _Part, norm: str, name: str) -> tuple[tuple[float, ...], tuple[float, ...], dict]:
    """Mean, std and their record for ``norm`` (``none`` or ``dataset``: of the train inputs)."""
    if norm == "none":
        return (0.0,), (1.0,), {"mode": "none", "mean": None, "std": None,
                                "computed_on": "none: inputs used as given"}
    if len(train.y) < 2:
        raise InsufficientDataError(f"{name}: norm='dataset' needs at least 2 training samples")
    mean, std = chunk_channel_stats(train.chunks())
    std = tuple(s if s > 1e-6 else 1.0 for s in std)  # a constant channel is centred, not blown up
    return mean, std, {"mode": "dataset", "mean": list(mean), "std": list(std),
                       "computed_on": f"{name} train split, per channel (dim 1)"}


def _kind(shape: tuple[int, ...]) -> str:
    return {3: "image", 2: "signal", 1: "vector"}.get(len(shape), "tensor")


def _make(parts: dict[str, _Part], name: str, norm: str, num_classes: int | None,
          class_names: Sequence[str] | None, carried: list[str] | None, record: dict) -> Dataset:
    """The Dataset of checked ``{split: part}``."""
    if parts["train"].shape != parts["test"].shape:
        raise ShapeError(f"{name}: train inputs have shape {parts['train'].shape} but test inputs "
                         f"{parts['test'].shape}")
    k = _num_classes(parts, num_classes, name)
    mean, std, norm_record = _normalise(parts["train"], norm, name)
    train, test = (_split_of(parts[s], mean, std, f"{name} {s} split") for s in SPLITS)
    info = {"spec": name, "base": "object", "from_object": True, "modifiers": {},
            "kind": _kind(parts["train"].shape), "input_dtype": str(parts["train"].dtype).replace("torch.", ""),
            "normalisation": norm_record, "train_samples": len(train), "test_samples": len(test),
            "augmentation": None, "original_classes": list(range(k)), "label_noise": None,
            "streamed": {s: parts[s].x is None for s in SPLITS}, **record}
    return Dataset(name, train, test, k, parts["train"].shape, _class_names(class_names, carried, k, name), info)


def as_dataset(obj: object, name: str | None = None, *, test_fraction: float = DEFAULT_TEST_FRACTION,  # noqa: PLR0913 (a public facade: readable keywords)
               split_seed: int = 0, norm: str = "none", num_classes: int | None = None,
               class_names: Sequence[str] | None = None, root: Any = None, stream: bool | None = None) -> Dataset:
    """A :class:`Dataset` from a spec string, a Dataset, or data given as objects (see the
    module docstring for the forms, the split convention and the names).

    ``name`` defaults to ``<kind>-1``; ``num_classes`` to the largest label + 1;
    ``class_names`` to the object's ``classes`` attribute when it has one, else ``"0"``,
    ``"1"``, ...; ``root`` is where spec strings look for files. Raises
    :class:`ConfigError`, :class:`ShapeError` or :class:`InsufficientDataError` in one line
    for objects that cannot be used.

    ``stream``: a map-style torch Dataset, or a DataLoader that reads one whole and in order
    with the default collation (then with the loader's worker processes), is read batch by
    batch at every pass, never held in memory, when ``True``, or by default (``None``) when its
    inputs as float32 would take more than :data:`STREAM_BYTES`; ``False`` always reads it into
    memory. Its labels come from its
    ``targets`` attribute when that has one label per item, else from one pass over it.
    ``info["streamed"]`` records it per split.
    """
    if isinstance(obj, str):
        if name is not None:
            raise ConfigError(f"name={name!r} names data given as objects; the spec {obj!r} names itself")
        return load(obj, root=root)
    if isinstance(obj, Dataset):
        return obj
    if norm not in NORMS:
        raise ConfigError(f"norm={norm!r}; valid: {', '.join(NORMS)}")
    name = _check_name(name if name is not None else f"{object_kind(obj)}-1")
    if _is_split_dict(obj):
        assert isinstance(obj, Mapping)
        parts = {s: _read_part(obj[s], f"{name} {s} split", stream) for s in SPLITS}
        record: dict = {"object": {s: _describe(obj[s]) for s in SPLITS},
                        "split": {"method": "train and test given separately"}}
        carried = _class_names_of(obj["train"])
    else:
        parts, split_record = _split(_read_part(obj, name, stream), test_fraction, split_seed)
        record = {"object": _describe(obj), "split": split_record}
        carried = _class_names_of(obj)
    record["source"] = f"python objects ({record['object']})"
    return _make(parts, name, norm, num_classes, class_names, carried, record)


def _ood_items(ood: object) -> list[tuple[str | None, object]]:
    """``(name or None, object)`` for each OOD set of ``ood``: one set, a list, or ``{name: object}``."""
    if ood is None:
        return []
    single = (str, Dataset, torch.utils.data.DataLoader, torch.utils.data.Dataset)
    if isinstance(ood, single) or _is_pair(ood) and _is_array(ood[1]):  # type: ignore[index]
        return [(None, ood)]
    if _is_split_dict(ood):
        raise ConfigError("ood={'train': ..., 'test': ...} is ambiguous: wrap one OOD set in a list, "
                          "ood=[{'train': ..., 'test': ...}], or name it, ood={'name': {...}}")
    if isinstance(ood, Mapping):
        for key, value in ood.items():
            if isinstance(value, (str, Dataset)):
                raise ConfigError(f"ood={{{key!r}: ...}} names data given as objects; give specs and Datasets "
                                  "in a list, e.g. ood=['svhn']")
        return [(str(key), value) for key, value in ood.items()]
    if isinstance(ood, (list, tuple)):
        return [(None, item) for item in ood]
    raise ConfigError(f"ood must be a list of datasets, or {{name: data}}; got {type(ood).__name__}")


def resolve_data(data: object, ood: object = (), root: Any = None) -> tuple[Dataset, list[str | Dataset]]:
    """The ID :class:`Dataset` and the OOD sets (spec strings, left for the probes to load and
    adapt, or Datasets) of one analysis. Objects without a name are numbered per kind in the
    order given, ID first (``arrays-1``, ``arrays-2``, ...); OOD sets must have distinct names."""
    counts: dict[str, int] = {}

    def convert(obj: object, name: str | None) -> str | Dataset:
        if isinstance(obj, (str, Dataset)):
            return obj
        if name is None:
            kind = object_kind(obj)
            counts[kind] = counts.get(kind, 0) + 1
            name = f"{kind}-{counts[kind]}"
        return as_dataset(obj, name)

    dataset = as_dataset(data, root=root) if isinstance(data, str) else convert(data, None)
    assert isinstance(dataset, Dataset)
    resolved = [convert(obj, name) for name, obj in _ood_items(ood)]
    names = dataset_names(resolved)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two OOD datasets are named {twice[0]!r}; give objects distinct names with "
                          "ood={'name': data} or tunnelscope.data.as_dataset(obj, name=...)")
    if dataset.spec in names:
        raise ConfigError(f"the OOD set {dataset.spec!r} is the ID data itself: its probes would repeat the ID "
                          "probes; drop it from the OOD sets (or name a different subset, e.g. other classes)")
    return dataset, resolved


def dataset_names(sets: Sequence[str | Dataset]) -> list[str]:
    """The name of each spec string or Dataset, as results key them."""
    return [s if isinstance(s, str) else s.spec for s in sets]


def object_records(dataset: Dataset, ood: Sequence[str | Dataset]) -> dict[str, dict]:
    """``{name: info}`` of the datasets among ``dataset`` and ``ood`` that came from objects."""
    sets = [dataset, *(s for s in ood if isinstance(s, Dataset))]
    return {("id" if s is dataset else s.spec): s.info for s in sets if s.info.get("from_object")}


def ood_dataset(item: object, input_shape: tuple[int, ...], root: Any = None) -> tuple[str, Dataset, list[str]]:
    """``(name, dataset, changes)`` of one OOD set for a model taking ``input_shape``: a spec
    (or a Dataset loaded from one) is reloaded resized / converted when its inputs differ; data
    from objects must already fit (:class:`ShapeError` otherwise)."""
    if isinstance(item, str):
        ds, changes = load_adapted(item, input_shape, root)
        return item, ds, changes
    ds = item if isinstance(item, Dataset) else as_dataset(item)
    if tuple(ds.input_shape) == tuple(input_shape):
        return ds.spec, ds, []
    if not ds.info.get("from_object"):
        adapted, changes = load_adapted(ds.spec, input_shape, root)
        return ds.spec, adapted, changes
    raise ShapeError(f"OOD dataset {ds.spec!r} has inputs of shape {tuple(ds.input_shape)} but the model takes "
                     f"{tuple(input_shape)}; data given as objects is not adapted: resize it first")


__all__ = ["DEFAULT_TEST_FRACTION", "NORMS", "as_dataset", "dataset_names", "object_kind", "object_records",
           "ood_dataset", "read_object", "resolve_data", "split_indices"]
