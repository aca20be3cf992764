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
        "started = time.perf_counter()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "while time.perf_counter() < started + 0.5:\n"  # work past several retries of the deferred interrupt
        "    pass\n"
        "SPUN = time.perf_counter() - started\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    tic = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):  # the deferred interrupt may land on any line after the import
        try:
            importlib.import_module(name)
        except KeyboardInterrupt:
            pytest.fail("the interrupt was raised inside the import")
        _spin(5)
    assert sys.modules[name].SPUN >= 0.5  # the import ran its whole body after the SIGTERM
    assert time.perf_counter() - tic < 4  # raised soon after the import, not after the spin's 5 s


def test_the_frame_check_sees_exec_generated_code():
    captured = {}
    exec("import sys\ncaptured['frame'] = sys._getframe()", {"captured": captured})
    assert interrupts.in_import_or_exec(captured["frame"])
    assert not interrupts.in_import_or_exec(sys._getframe())


def test_sigterm_during_an_atomic_write_lets_the_file_land_then_interrupts(sigterm_handler, tmp_path):
    """A checkpoint write interrupted half-way used to abort the process (torch's zip writer wrote
    again from its destructor to the closed file); the write now finishes first."""
    from tunnelscope.io import atomic_write

    def write(handle) -> None:
        handle.write(b"first half ")
        os.kill(os.getpid(), signal.SIGTERM)
        _spin(0.3)  # past several retries of the deferred interrupt
        handle.write(b"second half")

    tic = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "f.bin", write)
        _spin(5)
    assert time.perf_counter() - tic < 4  # raised soon after the write, not after the spin's 5 s
    assert (tmp_path / "f.bin").read_bytes() == b"first half second half"  # interrupted inside: no file
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


_INTERRUPTED_SAVE = """
import sys, torch
import torch.serialization as serialization
from io import BytesIO

def interrupted_exit(self, *args):  # Ctrl-C before torch.save finishes its archive
    raise KeyboardInterrupt

serialization._open_zipfile_writer_buffer.__exit__ = interrupted_exit
target = open(sys.argv[2], "wb") if sys.argv[1] == "file" else BytesIO()
try:
    torch.save({"w": torch.zeros(1000)}, target)
except KeyboardInterrupt as exc:
    kept = exc  # as in the CLI: its frames keep torch's writer alive until the interpreter exits
if sys.argv[1] == "file":
    target.close()  # what a with-block or atomic_write does
print("alive")
"""


@pytest.mark.parametrize("kind, survives", [("file", False), ("memory", True)])
def test_torch_save_interrupted_aborts_later_only_when_its_file_was_closed(kind, survives, tmp_path):
    """Why save_checkpoint serialises into memory first: torch.save interrupted before it finishes
    writing to a file that is then closed aborts the process when torch's writer is freed at exit
    (the CI failure: 'write to closed file', status -6); into a buffer nobody closes, it does not."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_SAVE, kind, str(tmp_path / "c.pt")],
                          capture_output=True, text=True, timeout=120)
    assert "alive" in proc.stdout and (proc.returncode == 0) == survives, (proc.returncode, proc.stderr[-300:])
