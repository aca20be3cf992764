"""The README's and docs' snippets as a new user follows them (issue 25 item 6).

In ``make test``: every ``tunnelscope`` command of every page names a real subcommand and real
options, with every required option given (parsed by the CLI itself, so a renamed option or a
missing ``--out`` fails here), and every snippet the runner skips says why. ``make docs-test``
(run by CI after ``make test``) runs every snippet in order in one fresh folder
(:mod:`docs_runner`, about 15 minutes here) and fails on any step that fails.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
import pytest

import docs_runner
from tunnelscope.cli import cli

STEPS = [step for page in docs_runner.pages() for step in docs_runner.steps(page)]
COMMANDS = [s for s in STEPS if s.kind == "bash" and "tunnelscope " in f" {s.code}"]


def _arguments(command: str) -> list[str]:
    """The arguments after ``tunnelscope`` (``.venv/bin/``, ``torchrun ...`` and comments dropped)."""
    words = shlex.split(command, comments=True)
    at = next(i for i, w in enumerate(words) if w.endswith("tunnelscope"))
    return words[at + 1:]


def test_the_pages_hold_snippets_in_the_readmes_order():
    names = [p.name for p in docs_runner.pages()]
    assert names[0] == "README.md" and "probes.md" in names and len(STEPS) >= 60 and len(COMMANDS) >= 40


def _parse(args: list[str]) -> None:
    """Parse ``tunnelscope ARGS`` as the CLI would, without running it; a usage error raises. A
    path that does not exist yet passes (the page's earlier steps create it: docs-test checks)."""
    parent = cli.make_context("tunnelscope", list(args), resilient_parsing=True)
    command = cli.get_command(parent, args[0])
    if command is None:
        raise click.UsageError(f"no command {args[0]!r}")
    try:
        command.make_context(args[0], args[1:], parent=parent)
    except click.BadParameter as exc:
        if "does not exist" not in str(exc):
            raise


@pytest.mark.parametrize("step", COMMANDS, ids=[f"{s.page}#{s.index}" for s in COMMANDS])
def test_every_documented_command_parses(step):
    try:
        _parse(_arguments(step.code))
    except click.UsageError as exc:
        pytest.fail(f"{step.page}: {step.code}: {exc}")


def test_the_parse_check_catches_what_a_user_would_hit():
    with pytest.raises(click.UsageError, match="out"):
        _parse(["analyze", "--model", "timm:resnet18", "--data", "digits", "--metrics", "rank"])
    with pytest.raises(click.UsageError, match="--download"):
        _parse(["analyze", "--model", "x", "--data", "cifar10", "--download", "--out", "a"])
    with pytest.raises(click.UsageError, match="no command"):
        _parse(["analyse", "--data", "x"])
    _parse(["report", "runs/not-made-yet"])


def test_every_skipped_snippet_says_why():
    skipped = [s for s in STEPS if s.detail]
    assert skipped and all(len(s.detail.split()) >= 2 for s in skipped)
    slow = [s for s in skipped if s.detail.startswith("slow")]
    assert all(any(c.isdigit() for c in s.detail) for s in slow), "a slow step states its time"


def test_commands_are_joined_and_comments_dropped():
    body = ("# a comment\ntunnelscope analyze --data x \\\n    --out runs/a  # slow: 2 minutes\n\n"
            "tunnelscope report runs/a\n")
    assert docs_runner._commands(body) == ["tunnelscope analyze --data x --out runs/a  # slow: 2 minutes",
                                           "tunnelscope report runs/a"]
    assert docs_runner.SLOW_LINE.search("tunnelscope x  # a grid; slow: 40 minutes").group(1) == "slow: 40 minutes"
    assert docs_runner.SLOW_LINE.search("tunnelscope fetch cifar10  # needs network access").group(1)


@pytest.mark.skipif(os.environ.get("TUNNELSCOPE_DOCS_TEST") != "1",
                    reason="the whole walk-through takes about 15 minutes: make docs-test runs it")
def test_every_snippet_runs_in_order_in_one_folder(tmp_path: Path):
    done = docs_runner.run(tmp_path / "docs-run", slow=os.environ.get("TUNNELSCOPE_DOCS_SLOW") == "1")
    failed = [f"{s.page}#{s.index}: {s.code[:80]}: {s.detail}" for s in done if s.status == "failed"]
    assert not failed, "\n".join(failed)
    assert sum(s.status == "ok" for s in done) >= 40
