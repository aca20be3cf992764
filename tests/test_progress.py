"""Progress where someone may be watching: a bar on a terminal or in a notebook with widgets,
plain periodic lines in logs and notebooks without widgets, nothing when switched off."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types

import pytest

import tunnelscope.progress as progress


class _Kernel:
    """A stand-in for IPython's notebook shell (only its class name is read)."""


_Kernel.__name__ = "ZMQInteractiveShell"


@pytest.mark.parametrize("tty, notebook, widgets, given, mode", [
    (True, False, False, None, "bar"),
    (False, False, False, None, "lines"),  # piped to a log: lines, not silence
    (False, False, False, True, "lines"),
    (True, False, False, False, "off"),
    (False, True, True, None, "bar"),
    (False, True, False, True, "lines"),  # a notebook without ipywidgets: lines, not an empty cell
])
def test_the_mode_follows_where_output_goes(monkeypatch, tty, notebook, widgets, given, mode):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    fake = types.ModuleType("IPython")
    fake.get_ipython = (lambda: _Kernel()) if notebook else (lambda: None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: object() if widgets else None)
    assert progress.progress_mode(given) == mode


def test_lines_say_count_share_time_and_what_is_left():
    out = io.StringIO()
    lines = progress._Lines(every=0, stream=out)
    task = lines.add_task("train pass", total=200, info="")
    lines.update(task, completed=50)
    lines.advance(task, 150)
    text = out.getvalue().splitlines()
    assert text[0].startswith("train pass: 50/200 (25%), 0 s, about 0 s to go")
    assert text[-1].startswith("train pass: 200/200 (100%)")


def test_a_quiet_short_task_prints_nothing():
    out = io.StringIO()
    lines = progress._Lines(every=30, stream=out)
    task = lines.add_task("test pass", total=10)
    for _ in range(10):
        lines.advance(task)
    assert out.getvalue() == ""


def test_an_analysis_piped_to_a_log_writes_progress_lines(tmp_path):
    env = {**os.environ, "TUNNELSCOPE_PROGRESS_EVERY": "0"}
    done = subprocess.run([sys.executable, "-m", "tunnelscope.cli", "analyze", "--model", "mlp-3x16", "--data",
                           "digits", "--metrics", "rank", "--device", "cpu", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("train pass: ") and "/1437" in line for line in done.stderr.splitlines())
    assert any(line.startswith("test pass: 360/360 (100%)") for line in done.stderr.splitlines())
