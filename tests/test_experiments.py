"""The experiments package: every ExperimentResult kind is covered by the contract check."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import tunnelscope.experiments as experiments
from tunnelscope.experiments.base import ExperimentResult

TESTS = Path(__file__).parent


def _result_classes() -> list[type[ExperimentResult]]:
    for info in pkgutil.iter_modules(experiments.__path__):
        importlib.import_module(f"{experiments.__name__}.{info.name}")
    found, todo = [], list(ExperimentResult.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_experiment_result_kind_is_unique_and_has_a_contract_test():
    classes = _result_classes()
    kinds = [cls.kind for cls in classes]
    assert len(kinds) == len(set(kinds)), kinds
    sources = [p.read_text() for p in TESTS.rglob("test_*.py")]
    for cls in classes:  # some test module names the class and checks the contract on a result of it
        assert any(re.search(r"check_contract\(|def test_\w*contract", text) and cls.__name__ in text
                   for text in sources), cls
