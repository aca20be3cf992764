"""Run every fenced snippet of the README and docs/ in reading order, in one folder, as a new user
following them would (issue 25 item 6).

Pages are read in the README's order (the README, then each page its Documentation list links,
then any other page). A ``bash`` block runs command by command (``\\`` continuations joined,
``.venv/bin/`` pointing at this interpreter's environment, ``make demo`` as ``tunnelscope demo``);
a ``python`` block runs in one namespace per page. A block is skipped, with the reason recorded,
when the line before its fence is an HTML comment ``<!-- docs-test: skip REASON -->`` (a
placeholder, a cluster address, a download) or ``<!-- docs-test: slow TIME -->`` (run only with
``TUNNELSCOPE_DOCS_SLOW=1``; the page states TIME). A command whose comment says ``slow: TIME``
is skipped the same way, and one whose comment says what it ``needs`` (network access, a Ray
cluster, a model of your own) always. Untagged fences are output or file listings, not run.
Standalone: ``python tests/docs_runner.py FOLDER`` prints one line per step.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- docs-test: (skip|slow) ([^>]*?) -->\n)?```(\w*)\n(.*?)```", re.S)
SLOW_LINE = re.compile(r"#.*?\b(slow: .+|needs .+)$")
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}  # untagged: output, not code


@dataclass
class Step:
    """One command or Python block: where it is, what it runs, and how it went."""

    page: str
    index: int
    kind: str
    code: str
    status: str = "pending"  # ok, failed, skipped
    seconds: float = 0.0
    detail: str = ""


def pages() -> list[Path]:
    """The README, then the docs pages in the order its Documentation list gives, then the rest."""
    readme = ROOT / "README.md"
    linked = [ROOT / m for m in re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme.read_text())]
    rest = sorted(p for p in (ROOT / "docs").glob("*.md") if p not in linked)
    return [readme, *dict.fromkeys(p for p in linked if p.is_file()), *rest]


def steps(page: Path) -> list[Step]:
    """The page's steps in order: a bash block's commands one by one, a python block whole."""
    out: list[Step] = []
    name = str(page.relative_to(ROOT))
    for marker, reason, language, body in FENCE.findall(page.read_text()):
        kind = LANGUAGES.get(language)
        if kind is None:  # yaml, text, ... : not runnable
            continue
        skip = f"{marker}: {reason}" if marker else ""
        if kind == "python":
            out.append(Step(name, len(out), "python", body, detail=skip))
            continue
        for command in _commands(body):
            line_skip = m.group(1) if (m := SLOW_LINE.search(command)) else ""
            out.append(Step(name, len(out), "bash", command, detail=skip or line_skip))
    return out


def _commands(body: str) -> list[str]:
    """A bash block's commands, continuation lines joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _shell(command: str) -> str:
    """A command as run here: ``.venv/bin/`` to this environment, ``make demo`` as the demo."""
    bin_dir = Path(sys.executable).parent
    command = command.replace(".venv/bin/", f"{bin_dir}/")
    command = re.sub(r"^make demo\b", f"{bin_dir}/tunnelscope demo", command)
    if command.startswith(("tunnelscope ", "torchrun ")):
        command = f"{bin_dir}/{command}"
    return command


def run(folder: Path, slow: bool = False, log=None) -> list[Step]:
    """Every step of every page in ``folder`` (made if missing), in order; returns them with their outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "examples").exists():  # a copy: the sweeps' stores are relative to their YAML files
        shutil.copytree(ROOT / "examples", folder / "examples")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done: list[Step] = []
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for page in pages():
            namespace: dict = {"__name__": f"docs_{page.stem}"}
            for step in steps(page):
                if step.detail and not (slow and step.detail.startswith("slow")):
                    step.status = "skipped"
                elif step.code.split()[:2] in (["make", "test"], ["make", "setup"]):
                    step.status, step.detail = "skipped", "the test suite itself"
                else:
                    _run_step(step, namespace, env, folder)
                done.append(step)
                if log:
                    log(step)
    finally:
        os.chdir(cwd)
    return done


def _run_step(step: Step, namespace: dict, env: dict, folder: Path) -> None:
    tic = time.perf_counter()
    try:
        if step.kind == "python":
            exec(compile(step.code, f"{step.page} block {step.index}", "exec"), namespace)
            step.status = "ok"
        else:
            proc = subprocess.run(_shell(step.code), shell=True, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=1800)
            step.status = "ok" if proc.returncode == 0 else "failed"
            if proc.returncode:
                step.detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    except Exception as exc:  # a snippet may raise anything: it is recorded, not hidden
        step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"[:300]
        step.detail += "\n" + "".join(traceback.format_exc().splitlines(True)[-3:])
    step.seconds = time.perf_counter() - tic


def main() -> int:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs-run")

    def log(step: Step) -> None:
        first = shlex.split(step.code)[0:3] if step.kind == "bash" else step.code.strip().splitlines()[:1]
        print(f"{step.status:8s} {step.seconds:7.1f}s {step.page}#{step.index} {' '.join(first)[:70]}  "
              f"{step.detail.splitlines()[0] if step.detail else ''}", flush=True)

    done = run(folder, slow=os.environ.get("TUNNELSCOPE_DOCS_SLOW") == "1", log=log)
    counts = {s: sum(step.status == s for step in done) for s in ("ok", "failed", "skipped")}
    print(f"{counts} in {sum(step.seconds for step in done):.0f} s")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
