"""Running the CLI in-process from tests."""

from tunnelscope.cli import main


def run_cli(args, capsys):
    """``main(args)`` (paths and numbers become strings); returns ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
