"""Running the CLI in-process from tests."""

from tunnelscope.cli import main


def run_cli(args, capsys):
    """``main(args)`` (paths and numbers become strings); returns ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tree(root) -> set[str]:
    """Every path under ``root``, relative to it (what a command may not leave behind)."""
    from pathlib import Path

    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def check_refusal(args, code: int, stdout: str, err: str, status: int, fragment: str) -> None:
    """A bad invocation's outcome: exit ``status``, one ``tunnelscope: error:`` line holding
    ``fragment``, no traceback, no internal name (a temporary file, ``weights_only=False``)."""
    assert code == status, (args, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunnelscope: error: "), (args, err)
    assert fragment in lines[0], (args, err)
    assert "Traceback" not in err + stdout and ".tmp" not in err and "weights_only=False" not in err, (args, err)
