"""Data given as objects (arrays, DataLoaders, torch Datasets) analyses exactly like the same
samples given by spec; the seeded split of one object; one-line errors for bad objects; and
imagefolder's native format and configurable normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tunnelscope as ts
from tunnelscope import data, models
from tunnelscope.data import sources
from tunnelscope.data.adapt import load_adapted
from tunnelscope.data.objects import as_dataset, resolve_data, split_indices
from tunnelscope.errors import ConfigError, InsufficientDataError, ShapeError, SpecError
from tunnelscope.summary import MEAN_RETAINED, TUNNEL_START

OOD_SPEC = "digits[classes=0-4]"
RUN = dict(max_samples=900, batch_size=128, device="cpu", progress=False, resamples=20, seed=3)


def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's normalised inputs and labels, in order: what a user would hold."""
    xs, ys = zip(*split.batches(512))
    return torch.cat(xs), torch.cat(ys)


class PairItems(torch.utils.data.Dataset):
    """A map-style torch Dataset yielding (numpy array, python int), as user code often does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def wrap(kind: str, x: torch.Tensor, y: torch.Tensor):
    if kind == "arrays":
        return x.numpy(), y.numpy()
    if kind == "loader":
        return DataLoader(TensorDataset(x, y), batch_size=100, shuffle=False)
    return PairItems(x, y)


@pytest.fixture(scope="module")
def digits_run(one_thread):
    ds, ood = data.load("digits"), data.load(OOD_SPEC)
    torch.manual_seed(0)
    net = models.build("mlp-3x32", ds.num_classes, ds.input_shape)
    reference = ts.analyze(net, ds, ood=[OOD_SPEC], **RUN)
    return net, {"id": ds, "ood": ood}, reference


@pytest.mark.parametrize("kind", ["arrays", "loader", "torch-dataset"])
def test_objects_give_the_numbers_of_the_same_samples_given_by_spec(digits_run, kind):
    net, sets, reference = digits_run
    given = {key: {s: wrap(kind, *tensors(getattr(ds, s))) for s in ("train", "test")} for key, ds in sets.items()}
    results = ts.analyze(net, given["id"], ood=[given["ood"]], **RUN)
    ood_name = f"{kind}-2"
    assert results.id_dataset == f"{kind}-1" and reference.id_dataset == "digits"  # each named as given
    names = {ood_name: OOD_SPEC, results.id_dataset: reference.id_dataset}
    table = results.table.replace({"dataset": names}).drop(columns="model")
    expected = reference.table.drop(columns="model")
    assert len(table) == len(expected) > 50
    for column in ("dataset", "split", "point", "metric", "other_point"):
        assert table[column].tolist() == expected[column].tolist()
    for column in ("value", "ci_lo", "ci_hi"):
        np.testing.assert_allclose(table[column].to_numpy(float), expected[column].to_numpy(float),
                                   rtol=1e-5, atol=1e-6, equal_nan=True)
    assert {"rank", "probe_acc", "nc1", "cka", "ncc_acc"} <= set(table.metric)
    for key in (TUNNEL_START, MEAN_RETAINED, "model_accuracy"):
        assert results.summary[key] == pytest.approx(reference.summary[key], rel=1e-6)
    assert results.summary["verdict"] == reference.summary["verdict"]
    # named and recorded as objects, with their sample counts
    assert results.config["data"] == f"{kind}-1" and results.config["ood"] == [ood_name]
    records = results.config["data_objects"]
    assert records["id"]["from_object"] and records["id"]["spec"] == f"{kind}-1"
    assert (records["id"]["train_samples"], records["id"]["test_samples"]) == (1437, 360)
    assert records[ood_name]["train_samples"] == len(sets["ood"].train)
    assert records["id"]["split"]["method"] == "train and test given separately"


def test_streamed_torch_datasets_give_the_numbers_of_the_in_memory_read(digits_run):
    net, sets, reference = digits_run
    given = {key: {s: PairItems(*tensors(getattr(ds, s))) for s in ("train", "test")} for key, ds in sets.items()}
    streamed = {key: as_dataset(value, name=f"{key}-items", stream=True) for key, value in given.items()}
    assert streamed["id"].info["streamed"] == {"train": True, "test": True}
    assert isinstance(streamed["id"].train, data.FolderSplit)
    results = ts.analyze(net, streamed["id"], ood=[streamed["ood"]], **RUN)
    table = results.table.replace({"dataset": {"ood-items": OOD_SPEC, "id-items": "digits"}}).drop(columns="model")
    expected = reference.table.drop(columns="model")
    assert table[["dataset", "split", "point", "metric"]].equals(expected[["dataset", "split", "point", "metric"]])
    np.testing.assert_allclose(table["value"].to_numpy(float), expected["value"].to_numpy(float),
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    assert results.summary[TUNNEL_START] == reference.summary[TUNNEL_START]


class CountingItems(torch.utils.data.Dataset):
    """Items made on demand from their index (nothing stored), with ``targets``; counts reads."""

    def __init__(self, n: int, shape: tuple[int, ...], classes: int = 3) -> None:
        self.n, self.shape, self.reads = n, shape, 0
        self.targets = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.shape, generator=g) + self.targets[i], self.targets[i]


def test_a_dataset_too_large_for_memory_is_streamed_and_only_the_sampled_items_are_read(one_thread):
    """A million 3x32x32 items (12 GB as float32) with ``targets``: split, analysed on 300
    samples per split, reading only those items (and item 0)."""
    items = CountingItems(1_000_000, (3, 32, 32))
    ds = as_dataset(items, name="big")
    assert ds.info["streamed"] == {"train": True, "test": True} and ds.input_shape == (3, 32, 32)
    assert (len(ds.train), len(ds.test)) == (799_999, 200_001) and items.reads <= 2  # 66 667 per class
    torch.manual_seed(0)
    net = models.build("convnet-2x8", 3, (3, 32, 32))
    results = ts.analyze(net, ds, metrics="probe,rank", max_samples=300, batch_size=100, device="cpu",
                         progress=False, resamples=10)
    assert not results.table.empty and items.reads <= 1 + 2 * 2 * 300, items.reads  # statistics and probes, both splits
    small = as_dataset(CountingItems(50, (3, 4, 4)), name="small")
    assert small.info["streamed"] == {"train": False, "test": False}


def test_streamed_normalisation_equals_the_in_memory_statistics():
    rng = np.random.default_rng(2)
    x = torch.from_numpy((rng.normal(size=(300, 3, 5, 5)) * [[[2.0]], [[5.0]], [[0.5]]] + 3).astype(np.float32))
    y = torch.arange(300) % 3
    read, streamed = (as_dataset(PairItems(x, y), name="n", norm="dataset", stream=s) for s in (False, True))
    assert read.info["normalisation"]["mean"] == pytest.approx(streamed.info["normalisation"]["mean"], rel=1e-12)
    assert read.info["normalisation"]["std"] == pytest.approx(streamed.info["normalisation"]["std"], rel=1e-12)
    for split in ("train", "test"):
        np.testing.assert_allclose(tensors(getattr(streamed, split))[0].numpy(),
                                   tensors(getattr(read, split))[0].numpy(), rtol=1e-6, atol=1e-6)
        assert torch.equal(tensors(getattr(streamed, split))[1], tensors(getattr(read, split))[1])


def test_an_in_order_dataloader_streams_its_dataset_with_its_workers():
    rng = np.random.default_rng(5)
    x, y = torch.from_numpy(rng.normal(size=(200, 6)).astype(np.float32)), torch.arange(200) % 4
    loader = DataLoader(PairItems(x, y), batch_size=32, num_workers=2)
    streamed = as_dataset(loader, name="loader-streamed", stream=True, split_seed=3)
    read = as_dataset((x.numpy(), y.numpy()), name="arrays-read", split_seed=3)
    assert streamed.info["streamed"] == {"train": True, "test": True} and streamed.train.num_workers == 2
    for split in ("train", "test"):
        np.testing.assert_array_equal(tensors(getattr(streamed, split))[0].numpy(),
                                      tensors(getattr(read, split))[0].numpy())
        assert torch.equal(tensors(getattr(streamed, split))[1], tensors(getattr(read, split))[1])


def test_stream_is_refused_for_objects_that_cannot_stream_and_bad_items_fail_in_one_line():
    x, y = torch.randn(40, 4), torch.arange(40) % 2
    with pytest.raises(ConfigError, match="stream=True needs a map-style torch Dataset"):
        as_dataset((x.numpy(), y.numpy()), stream=True)
    with pytest.raises(ConfigError, match="in order"):  # a shuffling loader has no fixed order to stream
        as_dataset(DataLoader(PairItems(x, y), batch_size=8, shuffle=True), stream=True)

    class Ragged(PairItems):
        def __getitem__(self, i: int):
            return self.x[i][: 3 + i % 2], self.y[i]

    ds = as_dataset(Ragged(x, y), name="ragged", stream=True)
    with pytest.raises(ShapeError, match="stack expects each tensor to be equal size"):
        list(ds.train.batches(8))


def test_split_indices_are_stratified_seeded_and_complete():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 1 + [3] * 2)[torch.randperm(20)]
    train, test = split_indices(labels, 0.2, seed=5)
    counts = np.bincount(labels[test].numpy(), minlength=4)
    assert counts.tolist() == [2, 1, 0, 1]  # round(0.2 n), at least 1 and at most n - 1; a lone sample stays in train
    assert sorted(torch.cat([train, test]).tolist()) == list(range(20))
    assert train.tolist() == sorted(train.tolist()) and test.tolist() == sorted(test.tolist())
    again = split_indices(labels, 0.2, seed=5)
    assert torch.equal(again[1], test)
    assert any(not torch.equal(split_indices(labels, 0.2, seed=s)[1], test) for s in range(6, 10))


def test_one_object_is_split_as_recorded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = np.repeat(np.arange(4), 50)
    ds = as_dataset((x, y), test_fraction=0.25, split_seed=7)
    train, test = split_indices(torch.from_numpy(y), 0.25, 7)
    assert ds.spec == "arrays-1" and ds.num_classes == 4 and ds.input_shape == (5,)
    assert (len(ds.train), len(ds.test)) == (148, 52)  # 0.25 * 50 = 12.5, rounded half up: 13 per class
    np.testing.assert_array_equal(tensors(ds.test)[0].numpy(), x[test.numpy()])
    np.testing.assert_array_equal(tensors(ds.train)[1].numpy(), y[train.numpy()])
    assert ds.info["split"]["seed"] == 7 and ds.info["split"]["test_fraction"] == 0.25
    assert ds.info["from_object"] and ds.info["normalisation"]["mode"] == "none"


def test_dataset_normalisation_standardises_each_channel_on_the_train_split():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(120, 3, 4, 4)) * [[[2.0]], [[5.0]], [[0.5]]] + 3).astype(np.float32)
    y = np.arange(120) % 3
    ds = as_dataset({"train": (x[:90], y[:90]), "test": (x[90:], y[90:])}, name="mine", norm="dataset")
    train = x[:90].astype(np.float64)
    mean, std = train.mean((0, 2, 3)), train.std((0, 2, 3), ddof=1)
    got = tensors(ds.test)[0].numpy()
    expected = (x[90:] - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.info["normalisation"]["mean"], mean, rtol=1e-9)
    assert ds.spec == "mine" and ds.class_names == ["0", "1", "2"]


def test_class_names_come_from_the_object_or_the_caller():
    class Named(TensorDataset):
        classes = ["cat", "dog"]

    x, y = torch.randn(20, 3), torch.arange(20) % 2
    assert as_dataset(Named(x, y)).class_names == ["cat", "dog"]
    assert as_dataset((x, y), class_names=["a", "b"]).class_names == ["a", "b"]
    assert as_dataset((x, y), num_classes=3).num_classes == 3


def test_labels_that_do_not_start_at_zero_are_refused_with_the_remapping():
    """Labels 1..3 used to become four classes with an empty class 0, refused later with a
    message about class 0 having too few samples (Issue 25, item 9)."""
    x, y = torch.randn(60, 3), torch.arange(60) % 3 + 1
    with pytest.raises(ConfigError, match=r"no sample has label 0 .*labels seen: 1\.\.3.*return_inverse") as err:
        as_dataset((x, y))
    assert "\n" not in str(err.value)
    remapped = np.unique(y.numpy(), return_inverse=True)[1]
    assert as_dataset((x, remapped)).num_classes == 3
    assert as_dataset((x, y), num_classes=4).num_classes == 4  # said explicitly: class 0 exists elsewhere


class DictItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return {"x": torch.zeros(2), "y": 0}


class PilItems(DictItems):
    def __getitem__(self, i: int):
        from PIL import Image

        return Image.new("L", (4, 4)), 0


X, Y = np.zeros((10, 3), np.float32), np.arange(10) % 2


@pytest.mark.parametrize("obj, error, message", [
    ((np.zeros(10, np.float32), Y), ShapeError, r"shape \(10,\): give one row per sample"),
    ((X, Y.astype(np.float32)), ConfigError, "labels must be integer class indices, got float32"),
    ((X, Y[:8]), ShapeError, "10 inputs but 8 labels"),
    ((X[:0], Y[:0]), InsufficientDataError, "holds no samples"),
    ((X, np.eye(2)[Y].astype(int)), ShapeError, r"one-hot labels use y.argmax\(1\)"),
    ((X, Y - 1), ConfigError, "class indices from 0"),
    ((np.array([["a"] * 3] * 10), Y), ConfigError, "inputs must be numbers"),
    (5, ConfigError, "cannot use int as data; give a spec string"),
    ({"train": (X, Y), "val": (X, Y)}, ConfigError, r"exactly the keys 'train' and 'test', got \['train', 'val'\]"),
    ({"train": (X, Y), "test": (np.zeros((4, 2), np.float32), Y[:4])}, ShapeError,
     r"train inputs have shape \(3,\) but test inputs \(2,\)"),
    (DictItems(), ConfigError, "items must be \\(x, y\\) pairs; item 0 is a dict"),
    (PilItems(), ConfigError, "not a tensor or array; add a transform such as torchvision.transforms.ToTensor"),
    # an in-order loader's dataset is checked item by item, as it may stream
    (DataLoader(DictItems(), batch_size=2), ConfigError, "loader-1 items must be \\(x, y\\) pairs; item 0 is a dict"),
    pytest.param(DataLoader(DictItems(), batch_size=2, shuffle=True), ConfigError,
                 "batches must be \\(x, y\\) pairs; batch 0 is a dict",
                 marks=pytest.mark.filterwarnings("ignore:.*the DataLoader shuffles")),
    (TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), InsufficientDataError, "no samples"),
])
def test_bad_objects_are_refused_in_one_line(obj, error, message):
    with pytest.raises(error, match=message) as info:
        as_dataset(obj)
    assert "\n" not in str(info.value)


def test_bad_names_and_ood_containers_are_refused_in_one_line():
    pair = (X, Y)
    cases = [
        (lambda: as_dataset(pair, name="id"), ConfigError, "'id' names the ID dataset"),
        (lambda: as_dataset("digits", name="mine"), ConfigError, "the spec 'digits' names itself"),
        (lambda: resolve_data(pair, {"train": pair, "test": pair}), ConfigError, "ambiguous"),
        (lambda: resolve_data(pair, [as_dataset(pair, "a"), as_dataset(pair, "a")]), ConfigError,
         "two OOD datasets are named 'a'"),
        (lambda: resolve_data(pair, {"x": "svhn"}), ConfigError, "give specs and Datasets in a list"),
        (lambda: resolve_data(pair, 3), ConfigError, "ood must be a list of datasets"),
        (lambda: as_dataset(pair, norm="unit"), ConfigError, "norm='unit'; valid: none, dataset"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_unnamed_objects_are_numbered_per_kind_and_a_single_pair_is_one_ood_set():
    pair = (X, Y)
    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)), batch_size=4)
    dataset, ood = resolve_data(pair, (X, Y))
    assert dataset.spec == "arrays-1" and [o.spec for o in ood] == ["arrays-2"]
    dataset, ood = resolve_data(loader, ["digits", pair, loader, {"train": pair, "test": pair}])
    assert dataset.spec == "loader-1" and ood[0] == "digits"
    assert [o.spec for o in ood[1:]] == ["arrays-1", "loader-2", "arrays-2"]
    _, ood = resolve_data(pair, {"mine": pair})
    assert ood[0].spec == "mine"


def test_a_shuffling_or_dropping_loader_is_warned_about():
    dataset = TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    with pytest.warns(UserWarning, match="shuffles, so its order"):
        as_dataset(DataLoader(dataset, batch_size=4, shuffle=True))
    with pytest.warns(UserWarning, match="drops its last incomplete batch"):
        assert len(as_dataset(DataLoader(dataset, batch_size=4, drop_last=True)).train) == 6


def test_ood_objects_must_fit_the_model(one_thread):
    ds = data.load("digits")
    net = models.build("mlp-3x32", ds.num_classes, ds.input_shape)
    wrong = (np.zeros((40, 1, 4, 4), np.float32), np.arange(40) % 2)
    with pytest.raises(ShapeError, match=r"takes \(1, 8, 8\); data given as objects is not adapted") as info:
        ts.analyze(net, ds, ood=[wrong], metrics="probe", max_samples=50, progress=False, device="cpu")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------- imagefolder
def make_folder(root, size: int, mode: str, per_class: tuple[int, int] = (6, 3), seed: int = 0) -> np.ndarray:
    """Class folders a/ and b/ of ``size`` x ``size`` PNGs; returns the train pixels (N, H, W[, 3]) in load order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    train = []
    for split, n in zip(("train", "test"), per_class):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode=mode).save(root / split / cls / f"{i}.png")
                if split == "train":
                    train.append(pixels)
    return np.stack(train)


def test_imagefolder_keeps_the_native_format_so_nothing_is_said_to_be_resized(tmp_path):
    make_folder(tmp_path, 28, "L")
    ds = data.load(f"imagefolder:{tmp_path}")
    assert ds.input_shape == (1, 28, 28)
    assert ds.info["format"]["size_from"].startswith("native")
    assert load_adapted(f"imagefolder:{tmp_path}", (1, 28, 28))[1] == []  # was "resized 224x224 -> 28x28"


def test_imagefolder_adaptation_names_the_real_sizes(tmp_path):
    make_folder(tmp_path, 32, "RGB")
    assert data.load(f"imagefolder:{tmp_path}").input_shape == (3, 32, 32)
    assert load_adapted(f"imagefolder:{tmp_path}", (1, 28, 28))[1] == ["resized 32x32 -> 28x28", "channels 3 -> 1"]


@pytest.mark.parametrize("norm", ["imagenet", "none", "dataset"])
def test_imagefolder_normalisation_is_configurable_and_recorded(tmp_path, monkeypatch, norm):
    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    pixels = make_folder(tmp_path / "images", 8, "RGB").astype(np.float64) / 255  # (N, H, W, 3)
    spec = f"imagefolder:{tmp_path / 'images'}" + ("" if norm == "imagenet" else f"[norm={norm}]")
    ds = data.load(spec)
    got = np.concatenate([x.numpy() for x, _ in ds.train.batches(5)]).transpose(0, 2, 3, 1)
    if norm == "imagenet":
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    elif norm == "none":
        mean, std = np.zeros(3), np.ones(3)
    else:
        mean, std = pixels.mean((0, 1, 2)), pixels.std((0, 1, 2), ddof=1)
    np.testing.assert_allclose(got, (pixels - mean) / std, rtol=1e-5, atol=1e-5)
    assert ds.info["normalisation"]["mode"] == norm
    np.testing.assert_allclose(ds.info["normalisation"]["mean"], mean, rtol=1e-7)
    if norm == "dataset":  # kept in the user cache: a second load reads the same doubles back
        assert len(list((tmp_path / "cache" / "normalisation").iterdir())) == 1
        assert data.load(spec).info["normalisation"]["std"] == ds.info["normalisation"]["std"]


def test_imagefolder_norm_modifier_is_validated(tmp_path):
    data.check_spec(f"imagefolder:{tmp_path}[norm=none,size=16]")
    with pytest.raises(SpecError, match="norm=unit .* must be one of imagenet, dataset, none"):
        data.check_spec(f"imagefolder:{tmp_path}[norm=unit]")
    with pytest.raises(SpecError, match="valid modifiers for .*norm"):
        data.check_spec(f"imagefolder:{tmp_path}[normal=1]")
    row = [r for r in data.list_datasets() if r["name"] == "imagefolder:PATH"][0]
    assert "norm" in row["modifiers"]


def test_an_endless_iterable_dataset_is_refused_not_read_until_memory_runs_out(monkeypatch):
    import tunnelscope.data.objects as objects

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:
                yield torch.zeros(1, 8, 8), 0

    monkeypatch.setattr(objects, "MAX_READ_BYTES", 1 << 20)
    with pytest.raises(ConfigError, match="more than 0 GiB in .* batches and has not ended"):
        as_dataset(DataLoader(Endless(), batch_size=64))
