"""The base datasets tunnelscope knows, where their files are looked for, and how they load.

Each source returns a :class:`RawData`: both splits as tensors at native resolution
(uint8 images ``(N, C, H, W)`` or float signals ``(N, 1, L)``), integer labels and class
names. Modifiers (class subsets, resizing, ...) are applied afterwards by
:mod:`tunnelscope.data.registry`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataNotFoundError
from .idx import read_idx

SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_IDX_FILES = {  # MNIST's layout, shared by Fashion-MNIST
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass
class RawData:
    """Both splits of a base dataset before modifiers."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    scale: float  # multiply stored values by this to get floats in [0, 1] (images) or as-is
    source: str  # where the data came from, recorded in results
    kind: str = "image"  # "image" (N, C, H, W) or "signal" (N, 1, L)
    files: tuple[Path, ...] = ()  # the files (or folders of files) read; they key the normalisation cache


@dataclass(frozen=True)
class LoadContext:
    """Where to look for files and whether downloading is allowed."""

    root: Path | None = None  # --data-root, else $TUNNELSCOPE_DATA
    download: bool = False

    @staticmethod
    def make(root: str | os.PathLike | None = None, download: bool = False) -> LoadContext:
        """Resolve the explicit root: the argument, else ``$TUNNELSCOPE_DATA``, else none. A root
        that is not a folder is an error (with ``download``, it is created for the download)."""
        env = os.environ.get("TUNNELSCOPE_DATA") or None
        chosen = root if root is not None else env
        if not chosen:
            return LoadContext(None, download)
        path = Path(chosen).expanduser()
        if not path.is_dir() and not (download and not path.exists()):
            where = "--data-root" if root is not None else "$TUNNELSCOPE_DATA"
            raise DataNotFoundError(f"{where} {path} is not a folder; point it at the folder holding your datasets "
                                    "(or leave it out to use the standard locations)")
        return LoadContext(path, download)

    def user_roots(self) -> list[Path]:
        """Writable roots in order of preference: the explicit root, then the user cache."""
        roots = [self.root] if self.root is not None else []
        roots.append(user_cache_dir())
        return roots


def user_cache_dir() -> Path:
    """tunnelscope's per-user cache directory (downloaded data, normalisation statistics, the
    input point's statistics): ``$TUNNELSCOPE_CACHE`` when set, else the platform's user cache."""
    chosen = os.environ.get("TUNNELSCOPE_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tunnelscope"))


@dataclass(frozen=True)
class Source:
    """A base dataset: what it is, how to find out whether it is here, how to load it."""

    name: str
    description: str
    kind: str
    load: Callable[[LoadContext, dict], RawData]
    availability: Callable[[LoadContext], tuple[bool, str]]
    extra_modifiers: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- IDX datasets (fashion-mnist, mnist)
@dataclass(frozen=True)
class IdxData:
    """A dataset stored as the four IDX files of MNIST's layout, 28 x 28 grey, 10 classes."""

    name: str
    classes: tuple[str, ...]
    folders: tuple[str, ...]  # looked for under each user root (the root itself first)
    torchvision_class: str  # what downloads it
    system_dir: str | None = None  # the name of this module's constant holding a system folder (read when searched)
    install: str = ""  # how to get it offline, besides tunnelscope fetch

    def search_dirs(self, ctx: LoadContext) -> list[Path]:
        """Every directory searched for the IDX files, in order."""
        dirs = [root / sub if sub else root for root in ctx.user_roots() for sub in ("", *self.folders)]
        return dirs + ([Path(globals()[self.system_dir])] if self.system_dir else [])

    def find(self, ctx: LoadContext) -> dict[str, Path] | None:
        """The first directory holding all four files, as a name → path map."""
        for directory in self.search_dirs(ctx):
            found = {key: path for key, stem in _IDX_FILES.items() if (path := _find_idx(directory, stem)) is not None}
            if len(found) == len(_IDX_FILES):
                return found
        return None

    def load(self, ctx: LoadContext, options: dict) -> RawData:
        """Both splits from the IDX files (downloaded first with ``ctx.download``)."""
        files = self.find(ctx)
        if files is None and ctx.download:
            files = self._download(ctx)
        if files is None:
            looked = ", ".join(str(d) for d in self.search_dirs(ctx))
            raise DataNotFoundError(f"{self.name} not found (looked in: {looked}); {self.install}download it once with "
                                    f"`tunnelscope fetch {self.name}` (needs network access)")
        arrays = {k: _read_idx_cached(str(p), p.stat().st_mtime) for k, p in files.items()}
        self._check(arrays, files)
        return RawData(
            train_x=torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
            train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
            test_x=torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
            test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
            class_names=list(self.classes), scale=1 / 255, source=str(files["train_x"].parent),
            files=tuple(files.values()),
        )

    def _download(self, ctx: LoadContext) -> dict[str, Path] | None:
        import torchvision

        root = ctx.user_roots()[0]
        try:
            for train in (True, False):
                getattr(torchvision.datasets, self.torchvision_class)(str(root), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataNotFoundError(f"downloading {self.name} into {root} failed: {exc}") from None
        return self.find(ctx)

    def _check(self, arrays: dict[str, np.ndarray], files: dict[str, Path]) -> None:
        """Refuse files that do not fit together: images of 28 x 28, as many labels as images in
        each split, labels in 0..9."""
        for split in ("train", "test"):
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1:
                raise DataNotFoundError(f"{files[f'{split}_x']} holds arrays of shape {x.shape} and "
                                        f"{files[f'{split}_y']} {y.shape}; {self.name} has 28 x 28 images and one "
                                        "label each")
            if len(x) != len(y):
                raise DataNotFoundError(f"{files[f'{split}_x']} holds {len(x)} images but {files[f'{split}_y']} "
                                        f"{len(y)} labels; the files do not belong together")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DataNotFoundError(f"{files[f'{split}_y']} holds label {int(y.max())}; {self.name}'s labels "
                                        f"are 0..{len(self.classes) - 1}")

    def availability(self, ctx: LoadContext) -> tuple[bool, str]:
        """Whether the files are here, and where (or how to get them)."""
        files = self.find(ctx)
        if files is None:
            return False, f"missing: {self.install}`tunnelscope fetch {self.name}`"
        return True, f"offline, {files['train_x'].parent}"


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _read_idx_cached(path: str, mtime: float) -> np.ndarray:
    return read_idx(path)


FASHION = IdxData("fashion-mnist", tuple(FASHION_CLASSES), ("fashion-mnist", "FashionMNIST/raw"), "FashionMNIST",
                  system_dir="SYSTEM_FASHION_DIR", install="apt-get install dataset-fashion-mnist, or ")
MNIST = IdxData("mnist", tuple(str(d) for d in range(10)), ("mnist", "MNIST/raw"), "MNIST")


# ----------------------------------------------------------------------------- digits
def _load_digits(ctx: LoadContext, options: dict) -> RawData:
    from .digits import SPLIT_SEED, digits_split, digits_table

    table = digits_table()
    images = torch.from_numpy(np.rint(table[:, :64].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8))
    labels = torch.from_numpy(table[:, 64])
    train, test = (torch.from_numpy(rows) for rows in digits_split(table[:, 64], user_cache_dir()))
    return RawData(
        train_x=images[train], train_y=labels[train], test_x=images[test], test_y=labels[test],
        class_names=[str(d) for d in range(10)], scale=1 / 255,
        source=f"scikit-learn load_digits, stratified 80/20 split, seed {SPLIT_SEED}",
    )


def _always(text: str) -> Callable[[LoadContext], tuple[bool, str]]:
    return lambda ctx: (True, text)


# ----------------------------------------------------------------------------- mnist1d
def _load_mnist1d(ctx: LoadContext, options: dict) -> RawData:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = options.get("n", 5000)
    args.seed = options.get("data_seed", 42)
    state = np.random.get_state()  # the generator seeds numpy's global RNG; leave it as it was
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)

    def signal(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)

    return RawData(
        train_x=signal(data["x"]), train_y=torch.from_numpy(data["y"].astype(np.int64)),
        test_x=signal(data["x_test"]), test_y=torch.from_numpy(data["y_test"].astype(np.int64)),
        class_names=[str(d) for d in range(10)], scale=1.0,
        source=f"mnist1d generator, num_samples={args.num_samples}, seed={args.seed}",
        kind="signal",
    )


# ----------------------------------------------------------------------------- torchvision
def _torchvision_source(name: str, cls_name: str, description: str, marker: str) -> Source:
    """A dataset read through torchvision's class of that name, downloaded only when asked."""

    def find(ctx: LoadContext) -> Path | None:
        for root in ctx.user_roots():
            if (root / marker).exists():
                return root
        return None

    def load(ctx: LoadContext, options: dict) -> RawData:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = find(ctx) or ctx.user_roots()[0]
        if not (root / marker).exists() and not ctx.download:
            looked = ", ".join(str(r) for r in ctx.user_roots())
            raise DataNotFoundError(
                f"{name} not found (looked in: {looked}); download it once with `tunnelscope fetch {name}` "
                "(needs network access), or point --data-root at a folder holding "
                f"torchvision's '{marker}'"
            )
        splits = []
        for train in (True, False):
            kwargs = {"split": "train" if train else "test"} if cls_name in ("SVHN", "STL10") else {"train": train}
            try:
                ds = cls(str(root), download=ctx.download, **kwargs)
            except Exception as exc:
                raise DataNotFoundError(f"{name} could not be loaded from {root}: {exc}") from None
            data = np.asarray(ds.data)
            if data.shape[-1] == 3:  # CIFAR stores NHWC
                data = data.transpose(0, 3, 1, 2)
            labels = np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels)
            splits.append((torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels.astype(np.int64))))
            classes = list(getattr(ds, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
        (trx, trY), (tex, teY) = splits
        return RawData(trx, trY, tex, teY, classes, 1 / 255, source=str(root / marker), files=(root / marker,))

    def availability(ctx: LoadContext) -> tuple[bool, str]:
        root = find(ctx)
        return (True, f"offline, {root / marker}") if root else (False, f"needs `tunnelscope fetch {name}`")

    return Source(name, description, "image", load, availability)


SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        "fashion-mnist", "Fashion-MNIST, 28x28 grey, 10 classes, 60000/10000",
        "image", FASHION.load, FASHION.availability,
    ),
    "mnist": Source(
        "mnist", "MNIST handwritten digits, 28x28 grey, 10 classes, 60000/10000 (IDX files, as Fashion-MNIST's)",
        "image", MNIST.load, MNIST.availability,
    ),
    "digits": Source(
        "digits", "scikit-learn's 8x8 handwritten digits, 10 classes, 1437/360 (seeded split)",
        "image", _load_digits, _always("offline, bundled with scikit-learn"),
    ),
    "mnist1d": Source(
        "mnist1d", "MNIST-1D signals of length 40, 10 classes, generated from a seed (80/20)",
        "signal", _load_mnist1d, _always("offline, generated by the mnist1d package"),
        extra_modifiers={"n": "number of samples generated (default 5000)",
                         "data_seed": "generator seed (default 42)"},
    ),
    "cifar10": _torchvision_source("cifar10", "CIFAR10", "CIFAR-10, 32x32 RGB, 10 classes, 50000/10000",
                                   "cifar-10-batches-py"),
    "cifar100": _torchvision_source("cifar100", "CIFAR100", "CIFAR-100, 32x32 RGB, 100 classes, 50000/10000",
                                    "cifar-100-python"),
    "svhn": _torchvision_source("svhn", "SVHN", "SVHN digits, 32x32 RGB, 10 classes, 73257/26032", "train_32x32.mat"),
    "stl10": _torchvision_source("stl10", "STL10", "STL-10, 96x96 RGB, 10 classes, 5000/8000", "stl10_binary"),
}
