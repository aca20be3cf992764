"""The contract every ExperimentResult keeps, checked on one real result of each kind.

``check_contract(result, tmp_path)`` is called by each experiment's own tests (they know how
to make a small result); tests/test_experiments.py checks that every kind is covered.
"""

from __future__ import annotations

import json

import pytest

from tunnelscope.errors import RunDirectoryError
from tunnelscope.experiments.base import ExperimentResult
from tunnelscope.report.experiments import draw_experiment, figure_names


def check_contract(result: ExperimentResult, tmp_path) -> ExperimentResult:
    """save → load round-trips the tables and config; config.json (written last) names the kind;
    a directory without it reads as partial; claim refuses a taken directory (and another kind's),
    overwrite replaces it. Returns the loaded result."""
    out = tmp_path / f"contract-{result.kind}"
    paths = result.save(out)
    assert paths[-1] == out / "config.json", "config.json must be written last"
    saved = json.loads((out / "config.json").read_text())
    assert saved["kind"] == result.kind
    drawn = draw_experiment(result.kind, result.figure_tables(), saved)
    assert set(drawn) <= set(figure_names(result.kind))
    for name in figure_names(result.kind):  # every figure its tables can show, and none they cannot
        assert ((out / f"{name}.png").is_file() and (out / f"{name}.svg").is_file()) == (name in drawn), name
    page = (out / "report.html").read_text()  # one self-contained page: every figure embedded, the config
    assert page.count('src="data:image/png;base64,') == len(drawn) and f"tunnelscope {result.kind}" in page
    loaded = type(result).load(out)
    before, after = result.tables(), loaded.tables()
    assert set(before) == set(after)
    for name, frame in before.items():  # the same text: every value, its column and its row survive
        on_disk = (out / result.table_files[name]).read_text()
        assert frame.to_csv(index=False) == on_disk == after[name].to_csv(index=False), name
    assert loaded.saved_config() == json.loads(json.dumps(saved))
    with pytest.raises(RunDirectoryError, match="already holds"):
        result.save(out)  # taken
    result.save(out, overwrite=True)
    (out / "config.json").unlink()
    with pytest.raises(RunDirectoryError, match="partial"):
        type(result).load(out)
    other = tmp_path / f"contract-{result.kind}-analysis"
    other.mkdir()
    (other / "summary.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="holds an analysis run"):
        result.save(other, overwrite=True)  # another kind's directory is never replaced
    return loaded
