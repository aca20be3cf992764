"""A model spec's random initialisation is drawn from the run's seed: same seed, same model, same results."""

from __future__ import annotations

import hashlib

import pytest
import torch

from cli_helpers import run_cli
from tunnelscope import analyze, data, models, train

SPEC = "mlp-4x64"
DATA = "digits[size=8]"


@pytest.fixture(scope="module")
def digits8() -> data.Dataset:
    return data.load(DATA)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits8):
    """One epoch of the spec on digits, seed 3, with its step-0 checkpoint."""
    return train(SPEC, digits8, epochs=1, out=tmp_path_factory.mktemp("seeded"), seed=3, progress=False)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _params(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def test_build_with_a_seed_is_reproducible_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _params(models.build(SPEC, 10, (1, 8, 8), seed=5))
    assert torch.equal(torch.get_rng_state(), before)  # nothing outside the build is disturbed
    torch.manual_seed(999)  # whatever the global state, the seed decides
    second = _params(models.build(SPEC, 10, (1, 8, 8), seed=5))
    other = _params(models.build(SPEC, 10, (1, 8, 8), seed=6))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_a_seeded_build_is_the_model_training_starts_from(trained_run, digits8):
    start, meta = models.load_model(trained_run.out / "checkpoints" / "step-0000000.pt")
    assert meta["step"] == 0
    built = models.build(SPEC, digits8.num_classes, digits8.input_shape, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(_params(built), _params(start)))


def test_three_identical_analyses_of_a_random_model_agree_and_record_the_seed(digits8):
    def ranks(seed: int) -> list[float]:
        torch.manual_seed(torch.seed() % 1000)  # a different global state before each call
        results = analyze(SPEC, digits8, metrics="rank", seed=seed, progress=False, resamples=0)
        assert results.config["model"]["init_seed"] == seed
        return results.curve("rank").tolist()

    runs = [ranks(0) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert ranks(1) != runs[0]


@pytest.mark.parametrize("model", ["spec", "checkpoint"])
def test_two_identical_cli_runs_write_identical_results(model, tmp_path, capsys, trained_run):
    source = SPEC if model == "spec" else trained_run.final_checkpoint
    digests = []
    for name in ("a", "b"):
        code, _, err = run_cli(["analyze", "--model", source, "--data", DATA, "--metrics", "probe,rank",
                                "--max-samples", 300, "--resamples", 20, "--out", tmp_path / name, "--quiet"], capsys)
        assert code == 0, err
        digests.append(_digest(tmp_path / name / "results.parquet"))
    assert digests[0] == digests[1]
