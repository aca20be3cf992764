import dataclasses

import numpy as np
import pytest
import torch

from tunnelscope import data
from tunnelscope.data.sources import FASHION_CLASSES
from tunnelscope.errors import DataNotFoundError, SpecError


def test_fashion_mnist_sizes_and_class_balance(fashion):
    assert (len(fashion.train), len(fashion.test)) == (60000, 10000)
    assert fashion.input_shape == (1, 28, 28) and fashion.num_classes == 10
    assert torch.bincount(fashion.train.labels).tolist() == [6000] * 10
    assert torch.bincount(fashion.test.labels).tolist() == [1000] * 10
    assert fashion.class_names == FASHION_CLASSES


def test_normalisation_uses_train_statistics(fashion):
    x = np.concatenate([xb.numpy() for xb, _ in fashion.train.batches(20000)]).astype(np.float64)
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4


def test_class_subset_relabels_and_keeps_names(fashion):
    sub = data.load("fashion-mnist[classes=5-9]")
    assert sub.num_classes == 5 and sub.class_names == FASHION_CLASSES[5:]
    assert torch.bincount(sub.train.labels).tolist() == [6000] * 5
    # new label 0 is exactly the original class 5, in the same order
    original = fashion.train.x[fashion.train.labels == 5]
    assert torch.equal(sub.train.x[sub.train.labels == 0], original)
    # same base normalisation for every subset
    assert sub.train.mean == fashion.train.mean and sub.train.std == fashion.train.std


def test_class_union_order_defines_labels():
    sub = data.load("fashion-mnist[classes=9+0,per_class=10,test_per_class=5]")
    assert sub.class_names == ["Ankle boot", "T-shirt/top"]
    assert torch.bincount(sub.train.labels).tolist() == [10, 10]
    assert torch.bincount(sub.test.labels).tolist() == [5, 5]


def test_per_class_is_seeded():
    a = data.load("digits[per_class=20]")
    b = data.load("digits[per_class=20]")
    c = data.load("digits[per_class=20,seed=1]")
    assert torch.bincount(a.train.labels).tolist() == [20] * 10
    assert len(a.test) == 360  # the test split is untouched by per_class
    assert torch.equal(a.train.x, b.train.x) and not torch.equal(a.train.x, c.train.x)


def test_digits_split_and_resize():
    d = data.load("digits")
    assert (len(d.train), len(d.test)) == (1437, 360) and d.input_shape == (1, 8, 8)
    # stratified: every class in both splits in proportion
    assert torch.bincount(d.test.labels).min() >= 35
    big = data.load("digits[size=28,channels=3]")
    assert big.input_shape == (3, 28, 28)
    x, _ = next(big.test.batches(4))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.equal(big.test.labels, d.test.labels)


def test_mnist1d_deterministic_per_seed():
    a, b = data.load("mnist1d[n=1000]"), data.load("mnist1d[n=1000]")
    c = data.load("mnist1d[n=1000,data_seed=7]")
    assert (len(a.train), len(a.test)) == (800, 200) and a.input_shape == (1, 40)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.x, c.train.x)
    state = np.random.get_state()[1].copy()
    data.load("mnist1d[n=200]")
    assert np.array_equal(np.random.get_state()[1], state), "generator must not disturb numpy's global RNG"


def test_augmentation_only_on_training_batches():
    plain = data.load("digits[size=16]")
    aug = data.load("digits[size=16,aug=1]")
    assert aug.info["augmentation"] and not plain.info["augmentation"]
    xa, _ = next(aug.train.batches(64))
    xp, _ = next(plain.train.batches(64))
    assert xa.shape == xp.shape and not torch.equal(xa, xp)
    ta, _ = next(aug.test.batches(64))
    tp, _ = next(plain.test.batches(64))
    assert torch.equal(ta, tp)


def test_batches_shuffle_and_resume_offset():
    d = data.load("digits")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = [y for _, y in d.train.batches(100, shuffle=True, generator=g1)]
    tail = [y for _, y in d.train.batches(100, shuffle=True, generator=g2, start_batch=5)]
    assert len(full) == 15 and all(torch.equal(a, b) for a, b in zip(full[5:], tail))
    assert sorted(torch.cat(full).tolist()) == sorted(d.train.labels.tolist())


def test_imagefolder_streams_through_a_dataloader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    d = data.load(f"imagefolder:{tmp_path}[size=16,classes=1-2]")
    assert d.class_names == ["dog", "eel"] and d.input_shape == (3, 16, 16)
    assert (len(d.train), len(d.test)) == (12, 6)
    batches = list(d.train.batches(5))
    assert [tuple(x.shape) for x, _ in batches] == [(5, 3, 16, 16), (5, 3, 16, 16), (2, 3, 16, 16)]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == [0] * 6 + [1] * 6


def test_imagefolder_without_splits(tmp_path):
    with pytest.raises(DataNotFoundError, match="train/ and test/"):
        data.load(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("spec, message", [
    ("fashion", "valid names: cifar10, cifar100, digits, fashion-mnist, mnist, mnist1d"),
    ("fashion-mnist[colour=1]", "valid modifiers for fashion-mnist: aug, channels, classes"),
    ("fashion-mnist[classes=8-12]", "do not exist"),
    ("fashion-mnist[size=0]", "must be >= 1"),
    ("fashion-mnist[channels=2]", "must be 1 or 3"),
    ("mnist1d[size=28]", "1-D signals"),
    ("digits[aug=yes]", "must be 0 or 1"),
])
def test_bad_specs_say_what_is_valid(spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        data.load(spec)


def test_missing_fashion_says_where_it_looked_and_how_to_get_it(no_data):
    with pytest.raises(DataNotFoundError) as info:
        data.load("fashion-mnist")
    text = str(info.value)
    assert str(no_data / "root") in text and str(no_data / "system") in text
    assert "apt-get install dataset-fashion-mnist" in text and "`tunnelscope fetch fashion-mnist`" in text


def test_torchvision_datasets_need_a_download(no_data):
    with pytest.raises(DataNotFoundError, match="`tunnelscope fetch cifar10`"):
        data.load("cifar10")
    rows = {r["name"]: r for r in data.list_datasets()}
    assert rows["cifar10"]["available"] is False and rows["digits"]["available"] is True
    assert rows["mnist1d"]["available"] is True and rows["fashion-mnist"]["available"] is False


@pytest.mark.parametrize("spec", ["digits[size=28]", "digits[size=16,channels=3]", "fashion-mnist[size=20]"])
def test_normalisation_is_computed_on_the_images_as_the_model_sees_them(spec):
    """The whole base training split, normalised, has mean 0 and std 1 per channel (after the resize)."""
    ds = data.load(spec)
    x = torch.cat([b for b, _ in ds.train.batches(4096)]).double()
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    np.testing.assert_allclose(flat.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1).numpy(), 1, atol=1e-4)
    assert "after resizing" in ds.info["normalisation"]["computed_on"]


def test_normalisation_is_kept_across_processes_bit_identical(tmp_path, monkeypatch):
    from tunnelscope.data import registry, sources

    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(registry, "_STATS", {})
    source = tmp_path / "train-images"
    source.write_bytes(b"stand-in")
    x = torch.randint(0, 256, (50, 1, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    raw = sources.RawData(x, torch.zeros(50, dtype=torch.long), x[:5], torch.zeros(5, dtype=torch.long), ["a"],
                          1 / 255, str(tmp_path), files=(source,))
    expected = registry.channel_stats(x, 1 / 255, 3, 12)
    assert registry.normalisation(raw, ("stand-in",), 12, 3) == expected
    assert len(list((tmp_path / "cache" / "normalisation").glob("*.json"))) == 1

    def new_process() -> tuple:  # nothing remembered but the cache files; notes whether a pass ran
        registry._STATS.clear()
        calls.clear()
        return registry.normalisation(raw, ("stand-in",), 12, 3)

    calls: list = []
    compute = registry.channel_stats
    monkeypatch.setattr(registry, "channel_stats", lambda *a, **k: calls.append(a) or compute(*a, **k))
    got = new_process()
    assert not calls and [v.hex() for s in got for v in s] == [v.hex() for s in expected for v in s]
    source.write_bytes(b"another stand-in")  # the data changed: computed again
    assert new_process() == expected and calls
    assert new_process() == expected and not calls
    kept = list((tmp_path / "cache" / "normalisation").glob("*.json"))
    for damaged in kept:
        damaged.write_text("{not json")
    assert new_process() == expected and calls
    registry._STATS.clear()  # generated data (no files) is cheap to recompute and is not kept
    registry.normalisation(dataclasses.replace(raw, files=()), ("generated",), None, None)
    assert len(list((tmp_path / "cache" / "normalisation").glob("*.json"))) == len(kept)


def test_fashion_normalisation_from_the_cache_equals_the_pass(tmp_path, monkeypatch):
    from tunnelscope.data import registry, sources

    monkeypatch.setattr(sources, "user_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(registry, "_STATS", {})
    spec = "fashion-mnist[classes=0-1,per_class=5,test_per_class=5]"
    first = data.load(spec).info["normalisation"]
    assert len(list((tmp_path / "cache" / "normalisation").glob("*.json"))) == 1
    registry._STATS.clear()
    assert data.load(spec).info["normalisation"] == first


def test_synthetic_data_is_the_same_in_any_batch_order_or_subset():
    ds = data.load("synthetic[train=1000,test=300,n_classes=7,size=6,channels=2,seed=3]")
    assert (ds.num_classes, ds.input_shape, len(ds.train), len(ds.test)) == (7, (2, 6, 6), 1000, 300)
    whole = torch.cat([x for x, _ in ds.train.batches(128)])
    labels = torch.cat([y for _, y in ds.train.batches(128)])
    assert torch.equal(labels, torch.arange(1000) % 7) and torch.equal(ds.train.labels, labels)
    picked = torch.tensor([999, 3, 500, 3])
    sub = ds.train.subset(picked)
    x_sub, y_sub = next(sub.batches(10))
    assert torch.equal(x_sub, whole[picked]) and torch.equal(y_sub, labels[picked])
    g = torch.Generator().manual_seed(1)
    shuffled = torch.cat([x for x, _ in ds.train.batches(64, shuffle=True, generator=g)])
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shuffled, whole[order])
    test = torch.cat([x for x, _ in ds.test.batches(300)])
    assert not torch.equal(test[:10], whole[:10])  # the splits draw different noise
    # the noise is standard normal around each class's pattern (moments over 36 000 draws)
    noise = whole - torch.stack([whole[labels == k].mean(0) for k in range(7)])[labels]
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.03
    again = data.load("synthetic[train=1000,test=300,n_classes=7,size=6,channels=2,seed=3]")
    assert torch.equal(torch.cat([x for x, _ in again.train.batches(500)]), whole)


@pytest.mark.parametrize("spec, message", [
    ("synthetic[classes=0-4]", "unknown modifier 'classes'"),
    ("synthetic[train=1]", "train=1 in"),
    ("synthetic[train=1000000000]", "between 2 and 100000000"),
    ("synthetic[size=big]", "must be a number"),
])
def test_bad_synthetic_specs_are_one_line(spec, message):
    with pytest.raises(SpecError, match=message):
        data.check_spec(spec)


def test_synthetic_label_noise_changes_labels_not_inputs():
    clean = data.load("synthetic[train=2000,test=100,n_classes=5,size=4]")
    noisy = data.load("synthetic[train=2000,test=100,n_classes=5,size=4,noise=0.5]")
    assert noisy.info["label_noise"]["chosen"] == 1000
    changed = (noisy.train.labels != clean.train.labels).float().mean().item()
    assert 0.35 < changed < 0.45  # half replaced, a fifth of those by the true class again
    x_clean, _ = next(clean.train.batches(2000))
    x_noisy, y_noisy = next(noisy.train.batches(2000))
    assert torch.equal(x_clean, x_noisy) and torch.equal(y_noisy, noisy.train.labels)
    assert torch.equal(noisy.test.labels, clean.test.labels)  # the test split is never changed


@pytest.mark.parametrize("spec, message", [
    ("digits[size=100000]", "size=100000 .* above 4,096"),
    ("mnist1d[n=100000000]", "n=100000000 .* above 10,000,000"),
])
def test_sizes_a_spec_asks_for_are_capped_before_anything_is_built(spec, message):
    with pytest.raises(SpecError, match=message):
        data.check_spec(spec)


def test_mnist_is_read_from_idx_files_where_present_and_named_when_not(no_data):
    from files import fashion_root

    root = no_data / "root"
    with pytest.raises(DataNotFoundError, match=r"mnist not found \(looked in: .*root, .*root/mnist, .*MNIST/raw"):
        data.load("mnist", root=root)
    fashion_root(root / "MNIST" / "raw", images=20)  # torchvision's layout
    mnist = data.load("mnist[classes=0-4]", root=root)
    assert (len(mnist.train), mnist.input_shape, mnist.class_names) == (10, (1, 28, 28), ["0", "1", "2", "3", "4"])
    assert mnist.info["source"].endswith("MNIST/raw")
    rows = {row["name"]: row for row in data.list_datasets(root)}
    assert rows["mnist"]["available"] and "MNIST/raw" in rows["mnist"]["where"]


def test_pad_adds_a_black_border_after_the_resize_and_normalises_what_the_model_sees():
    plain, padded = data.load("digits"), data.load("digits[pad=2]")
    assert padded.input_shape == (1, 12, 12)
    assert torch.equal(padded.train.x[:, :, 2:-2, 2:-2], plain.train.x)
    border = padded.train.x.clone()
    border[:, :, 2:-2, 2:-2] = 1
    assert int((border == 0).sum()) == (144 - 64) * len(padded.train)  # the border is 0 (black)
    pixels = padded.train.x.double() / 255  # the normalisation is of the padded images (float64 reference)
    assert padded.train.mean[0] == pytest.approx(float(pixels.mean()), rel=1e-9)
    assert padded.train.std[0] == pytest.approx(float(pixels.std()), rel=1e-9)
    resized = data.load("digits[size=28,pad=2]")
    assert resized.input_shape == (1, 32, 32)  # Galanti et al.'s 28 + 2 x 2 = 32
    with pytest.raises(SpecError, match="pad"):
        data.load("digits[pad=-1]")


def test_pad_on_an_image_folder_borders_every_image(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("L", (8, 8), color=100 + 50 * i).save(tmp_path / split / cls / f"{i}.png")
    ds = data.load(f"imagefolder:{tmp_path}[pad=3,norm=none]")
    assert ds.input_shape == (1, 14, 14) and ds.info["format"]["pad"] == 3
    x, _ = next(iter(ds.test.batches(4)))
    assert x.shape == (4, 1, 14, 14) and float(x[:, :, :3].abs().max()) == 0.0
    assert float(x[:, :, 3:-3, 3:-3].min()) > 0.3


def test_synthetic_pattern_zero_gives_the_same_noise_without_the_class_patterns():
    from tunnelscope.data.synthetic import class_patterns

    spec = "synthetic[train=40,test=30,size=8,channels=1,n_classes=3{}]"
    plain, noise = data.load(spec.format("")), data.load(spec.format(",pattern=0"))
    x, y = next(iter(plain.test.batches(30)))
    z, y0 = next(iter(noise.test.batches(30)))
    assert torch.equal(y, y0)
    torch.testing.assert_close(z, x - class_patterns(3, 1, 8, 0)[y], rtol=0, atol=1e-6)
    with pytest.raises(SpecError, match="pattern=-1.0"):
        data.load(spec.format(",pattern=-1"))
