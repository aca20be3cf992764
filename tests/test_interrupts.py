"""SIGTERM raises KeyboardInterrupt at once, except inside an import, where it waits for the import to end."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time

import pytest

from tunnelscope import interrupts


@pytest.fixture
def sigterm_handler():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    signal.signal(signal.SIGTERM, interrupts.interrupt)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGTERM, before[0])
    signal.signal(signal.SIGALRM, before[1])


def _spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def test_sigterm_outside_an_import_interrupts_at_once(sigterm_handler):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        _spin(5)


def test_sigterm_during_an_import_lets_it_finish_then_interrupts(sigterm_handler, tmp_path, monkeypatch):
    name = "module_that_gets_terminated_while_importing"
    (tmp_path / f"{name}.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "deadline = time.perf_counter() + 0.5\n"
        "while time.perf_counter() < deadline:\n"  # work past several retries of the deferred interrupt
        "    pass\n"
        "FINISHED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    tic = time.perf_counter()
    module = importlib.import_module(name)  # no KeyboardInterrupt inside the import
    assert module.FINISHED
    with pytest.raises(KeyboardInterrupt):
        _spin(5)
    assert time.perf_counter() - tic < 4  # raised soon after the import, not after the spin's 5 s


def test_the_frame_check_sees_exec_generated_code():
    captured = {}
    exec("import sys\ncaptured['frame'] = sys._getframe()", {"captured": captured})
    assert interrupts.in_import_or_exec(captured["frame"])
    assert not interrupts.in_import_or_exec(sys._getframe())
