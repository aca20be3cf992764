"""The Python examples of docs/own-model-and-data.md run as written (each block in a fresh
namespace, in a temporary folder). A block whose first line is ``# needs: PACKAGE`` is skipped
with that reason when the package is not installed (a failure under ``make test``, which
installs it; see tests/optional.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import docs_runner
from optional import require

PAGE = Path(__file__).parents[1] / "docs" / "own-model-and-data.md"


def _blocks() -> list[str]:
    return [s.code for s in docs_runner.steps(PAGE) if s.kind == "python"] if PAGE.is_file() else []


def test_the_page_has_examples():
    assert len(_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_example_runs(index, tmp_path, monkeypatch, one_thread):
    code = _blocks()[index]
    first = code.splitlines()[0]
    if first.startswith("# needs:"):
        for package in first.removeprefix("# needs:").split(","):
            require(package.strip())
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{PAGE.name} example {index}", "exec"), {"__name__": f"docs_example_{index}"})
