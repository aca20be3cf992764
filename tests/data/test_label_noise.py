"""The ``noise=F`` dataset modifier: seeded random training labels, test split untouched."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from tunnelscope import data
from tunnelscope.data.common import add_label_noise
from tunnelscope.errors import SpecError

SMALL = "fashion-mnist[classes=0-4,per_class=200,test_per_class=50{}]"


def _pair(spec: str, noise: str) -> tuple[data.Dataset, data.Dataset]:
    return data.load(spec.format("")), data.load(spec.format(f",noise={noise}"))


def _contingency(clean: data.Dataset, noisy: data.Dataset) -> np.ndarray:
    table = np.zeros((clean.num_classes, clean.num_classes))
    np.add.at(table, (clean.train.labels.numpy(), noisy.train.labels.numpy()), 1)
    return table


@pytest.mark.parametrize("n, fraction", [(1000, 0.3), (1001, 0.25), (7, 0.5), (999, 0.9995), (50, 1.0), (50, 0.0)])
def test_exactly_round_f_n_labels_are_replaced(n, fraction):
    # with 2**40 classes a drawn label equals the true one (0) with probability 2**-40,
    # so every replaced label shows: the replaced positions can be counted directly
    noisy, record = add_label_noise(torch.zeros(n, dtype=torch.long), fraction, 2**40, seed=3)
    assert int((noisy != 0).sum()) == round(fraction * n) == record["chosen"]


def test_changed_count_matches_a_direct_comparison_and_inputs_are_untouched():
    clean, noisy = _pair(SMALL, "0.3")
    n, num_classes = len(clean.train), clean.num_classes
    record = noisy.info["label_noise"]
    changed = int((noisy.train.labels != clean.train.labels).sum())
    assert record["chosen"] == round(0.3 * n) == 300
    assert record["changed"] == changed
    # each replaced label differs with probability 1 - 1/C: Binomial(300, 0.8), sd 6.9
    assert abs(changed - 0.3 * n * (1 - 1 / num_classes)) < 5 * np.sqrt(300 * 0.8 * 0.2)
    assert torch.equal(noisy.train.x, clean.train.x)
    assert torch.equal(noisy.test.x, clean.test.x) and torch.equal(noisy.test.labels, clean.test.labels)
    assert noisy.train.labels.min() >= 0 and noisy.train.labels.max() < num_classes
    batch_labels = torch.cat([y for _, y in noisy.train.batches(256)])
    assert torch.equal(batch_labels, noisy.train.labels)


def test_same_spec_same_labels_other_seed_other_labels():
    first, again = data.load("digits[noise=0.2]"), data.load("digits[noise=0.2]")
    other = data.load("digits[noise=0.2,seed=1]")
    clean = data.load("digits")
    assert torch.equal(first.train.labels, again.train.labels)
    assert torch.equal(other.train.x, first.train.x)  # digits has no subsampling: only the noise moves
    assert not torch.equal(other.train.labels, first.train.labels)
    changed_first = first.train.labels != clean.train.labels
    changed_other = other.train.labels != clean.train.labels
    assert (changed_first != changed_other).sum() > 100
    assert other.info["label_noise"]["seed"] == 1 and first.info["label_noise"]["seed"] == 0


def test_noise_zero_changes_nothing_and_no_modifier_records_none():
    clean, zero = _pair(SMALL, "0")
    assert torch.equal(zero.train.labels, clean.train.labels)
    assert zero.info["label_noise"]["chosen"] == zero.info["label_noise"]["changed"] == 0
    assert clean.info["label_noise"] is None


def test_full_noise_gives_uniform_labels_independent_of_the_truth():
    spec = "fashion-mnist[classes=0-4,per_class=600,test_per_class=10{}]"
    clean, noisy = _pair(spec, "1")
    counts = torch.bincount(noisy.train.labels, minlength=5).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.chi2_contingency(_contingency(clean, noisy)).pvalue > 1e-3
    # the same test sees the dependence that half the labels kept
    _, half = _pair(spec, "0.5")
    assert stats.chi2_contingency(_contingency(clean, half)).pvalue < 1e-10


def test_signals_and_record_is_json_and_one_line():
    clean, noisy = _pair("mnist1d[n=1000{}]", "0.4")
    record = noisy.info["label_noise"]
    assert record["changed"] == int((noisy.train.labels != clean.train.labels).sum())
    assert record["chosen"] == round(0.4 * len(clean.train)) and record["num_classes"] == 10
    assert json.loads(json.dumps(noisy.info))["label_noise"] == record
    assert "\n" not in record["description"] and "noise=0.4" in record["description"]


def test_imagefolder_noise_reaches_the_batches(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 3)):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    clean = data.load(f"imagefolder:{tmp_path}[size=8]")
    noisy = data.load(f"imagefolder:{tmp_path}[size=8,noise=0.5]")
    record = noisy.info["label_noise"]
    assert record["chosen"] == 18 and record["changed"] == int((noisy.train.labels != clean.train.labels).sum())
    assert record["changed"] > 0
    assert torch.equal(torch.cat([y for _, y in noisy.train.batches(36)]), noisy.train.labels)
    assert torch.equal(noisy.test.labels, clean.test.labels)


@pytest.mark.parametrize("value", ["2", "abc", "-0.1", "nan", "inf", "1.0001"])
def test_bad_values_are_refused(value):
    spec = f"digits[noise={value}]"
    for call in (data.check_spec, data.load):
        with pytest.raises(SpecError, match=r"noise=.* must be a number from 0 to 1") as err:
            call(spec)
        assert "\n" not in str(err.value)


def test_modifier_is_listed():
    with pytest.raises(SpecError, match=r"valid modifiers for digits: .*\bnoise\b"):  # the parser offers it
        data.check_spec("digits[nosie=0.1]")
    assert all("noise" in row["modifiers"] for row in data.list_datasets())
    data.check_spec("cifar10[noise=0.1]")  # torchvision sets accept it (they go through the same builder)


def test_training_run_records_the_noise(tmp_path):
    from tunnelscope.rundir import RUN_FILE
    from tunnelscope.train import train

    spec = "digits[per_class=20,test_per_class=5,noise=0.25]"
    train("mlp-3x32", spec, epochs=1, batch_size=50, out=tmp_path, device="cpu", progress=False,
          early_checkpoints=False)
    run = json.loads((tmp_path / RUN_FILE).read_text())
    assert run["data"]["label_noise"] == data.load(spec).info["label_noise"]
    assert run["data"]["label_noise"]["chosen"] == 50
