"""What a run directory holds: every file name in one place, and whether a directory is free.

An **analysis** directory (``tunnelscope analyze --out``) holds ``results.parquet``,
``config.json``, ``figures/``, ``report.html`` and, written last, ``summary.json``: a
directory without it holds a partial run. An inversion adds ``inversion.parquet`` and
``inversion.json``. A **training** directory (``tunnelscope train --out``) holds
``run.json``, ``history.csv``, ``resume.pt`` and ``checkpoints/step-NNNNNNN.pt``.
A **comparison** writes ``compare.csv``, ``runs.csv`` and ``seeds.csv``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RunDirectoryError

# analysis
RESULTS_FILE, SUMMARY_FILE, CONFIG_FILE = "results.parquet", "summary.json", "config.json"
FIGURES_DIR, REPORT_FILE = "figures", "report.html"
INVERSION_FILE, INVERSION_CONFIG = "inversion.parquet", "inversion.json"
# training
RUN_FILE, HISTORY_FILE, RESUME_FILE, CKPT_DIR = "run.json", "history.csv", "resume.pt", "checkpoints"
# comparison and sweeps
COMPARE_FILE, RUNS_FILE, SEEDS_FILE, COLLECTED_FILE = "compare.csv", "runs.csv", "seeds.csv", "collected.parquet"


KIND_KEY = "kind"  # the key of config.json that names an experiment directory's kind
_STEP_NAME = re.compile(r"step-(\d+)\.[A-Za-z0-9]+")


def step_name(step: int, suffix: str = "pt") -> str:
    """The file name of what was taken or measured at ``step``: ``step-NNNNNNN.<suffix>``."""
    return f"step-{step:07d}.{suffix}"


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken at ``step``, inside :data:`CKPT_DIR`."""
    return step_name(step, "pt")


def step_of(path: str | Path) -> int | None:
    """The step a ``step-NNNNNNN.<suffix>`` file name stands for, or None for any other name."""
    match = _STEP_NAME.fullmatch(Path(path).name)
    return int(match[1]) if match else None


def steps_in(folder: str | Path, suffix: str) -> dict[int, Path]:
    """The ``step-NNNNNNN.<suffix>`` files of ``folder`` by step, in step order ({} if there is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {step: p for p in folder.glob(f"step-*.{suffix}") if (step := step_of(p)) is not None}
    return dict(sorted(found.items()))


def checkpoints(run_dir: str | Path, required: bool = False) -> dict[int, Path]:
    """A training run's checkpoints ``checkpoints/step-NNNNNNN.pt`` by step, in step order.

    ``required`` refuses (:class:`RunDirectoryError`) a ``run_dir`` that is not a folder or holds
    no checkpoint, saying what to give instead."""
    run_dir = Path(run_dir)
    if required and not run_dir.is_dir():
        raise RunDirectoryError(f"run directory {run_dir} does not exist or is not a folder; give the --out folder "
                                "of 'tunnelscope train'")
    found = steps_in(run_dir / CKPT_DIR, "pt")
    if required and not found:
        raise RunDirectoryError(f"{run_dir} holds no checkpoints ({CKPT_DIR}/step-NNNNNNN.pt); give the --out folder "
                                "of 'tunnelscope train'")
    return found


def foreign_checkpoint(run: dict, path: str | Path, model_spec: object, data_spec: object, seed: object) -> str | None:
    """Why the checkpoint at ``path`` (its model, training data and seed) is not one of the run
    whose ``run.json`` is ``run``, or None when it is (or ``run`` records no configuration): a
    checkpoint copied in from another run must not be read as a step of this one."""
    config = run.get("config") if isinstance(run.get("config"), dict) else None
    if config is None:
        return None
    theirs = {"model": model_spec, "data": data_spec, "seed": seed}
    differ = [f"{key} {value!r} (the run's: {config.get(key)!r})" for key, value in theirs.items()
              if key in config and config[key] != value]
    return f"{path} is not a checkpoint of this run: its {', '.join(differ)}" if differ else None


def kind_of(directory: str | Path) -> str | None:
    """What ``directory`` holds: an experiment's kind (from its ``config.json``), ``"analysis"``,
    ``"training"``, or None for a free (missing or empty-of-results) directory."""
    out = Path(directory)
    if (out / RESULTS_FILE).exists() or (out / SUMMARY_FILE).exists():
        return "analysis"
    if (out / RUN_FILE).exists() or (out / CKPT_DIR).exists():
        return "training"
    config = out / CONFIG_FILE
    if config.is_file():
        try:
            recorded = json.loads(config.read_text())
        except (OSError, ValueError):
            return "unknown"
        return recorded.get(KIND_KEY, "unknown") if isinstance(recorded, dict) else "unknown"
    return None


def refuse_links(directory: str | Path) -> None:
    """Refuse an output directory that is a link, or holds a sub-folder that is one: writing or
    deleting there would change files outside it (``run/dynamics -> ../v2``)."""
    out = Path(directory)
    if out.is_symlink():
        raise RunDirectoryError(f"{out} is a link (to {os.readlink(out)}); tunnelscope does not write through links: "
                                "give the real folder")
    if out.is_dir():
        for child in out.iterdir():
            if child.is_symlink() and child.is_dir():
                raise RunDirectoryError(f"{child} is a link to a folder ({os.readlink(child)}); tunnelscope does not "
                                        "write through links: remove the link or choose another --out")


def claim(directory: str | Path, kind: str, overwrite: bool = False, files: tuple[str, ...] = ()) -> Path:
    """Take ``directory`` for an experiment of ``kind`` and return it, created.

    A directory holding a training run, an analysis or another kind's experiment is refused
    (:class:`RunDirectoryError`); one holding the same kind (``config.json`` names it) or any
    of ``files`` (what a partial run of this kind leaves) is refused unless ``overwrite``,
    which removes ``config.json`` first, so the directory reads as partial until the new
    experiment finishes."""
    out = Path(directory)
    refuse_links(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out} is a file, not a directory; choose another --out")
    held = kind_of(out)
    if held not in (None, kind, "unknown"):
        raise RunDirectoryError(f"{out} holds {_article(held)} {held} run, not a {kind} experiment; choose another "
                                "--out")
    partial = [name for name in files if (out / name).exists()]
    if (held is not None or partial) and not overwrite:
        what = f"a partial ({partial[0]})" if held is None else "a finished"
        raise RunDirectoryError(f"{out} already holds {what} {kind} experiment; pass --overwrite (overwrite=True) "
                                "to replace it or choose another --out")
    if overwrite:
        remove_stale_temps(out)
    (out / CONFIG_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write leaves (``.NAME.*.tmp``, in ``out``
    and its sub-folders one level down; links are not followed); returns what was removed."""
    if not out.is_dir() or out.is_symlink():
        return []
    folders = [out] + [p for p in out.iterdir() if p.is_dir() and not p.is_symlink()]
    removed = []
    for folder in folders:
        for temp in folder.glob(".*.tmp"):
            if temp.is_file() and not temp.is_symlink():
                temp.unlink(missing_ok=True)
                removed.append(temp)
    return removed


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # errors that mean "no room to write"


@contextmanager
def whole_or_nothing(directory: str | Path, resumable: bool = False) -> Iterator[None]:
    """Write a run's files inside this block: if it fails (a full disk, an error, Ctrl-C), every
    file the block wrote or replaced in ``directory`` is removed, and the folders it made, so no
    partial run is left behind; with ``resumable`` the files stay (they are what a rerun goes on
    from) and only folders left empty go. A full disk becomes a one-line
    :class:`RunDirectoryError` that says so and how to go on."""
    out = Path(directory)
    files, folders = _stamps(out), _folders(out)
    try:
        yield
    except BaseException as exc:
        _remove_since(out, None if resumable else files, folders)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            kept = ("what was finished is kept there; free space and run the command again to go on" if resumable
                    else "what this run had written there was removed; free space and run the command again")
            raise RunDirectoryError(f"{os.strerror(exc.errno).lower()} while writing {exc.filename or out}: "
                                    f"{kept}") from None
        raise


def _stamps(out: Path) -> dict[Path, tuple[int, int, int]]:
    """Every file under ``out`` (links not followed) with its inode, size and modification time
    (an atomic write replaces the inode; a write in place changes the size or the time)."""
    stamps = {}
    for path in _walk(out):
        if path.is_file():
            st = path.lstat()
            stamps[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


def _folders(out: Path) -> set[Path]:
    """``out`` and every folder under it (links not followed), if it exists."""
    return {out, *(p for p in _walk(out) if p.is_dir())} if out.is_dir() else set()


def _walk(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if not p.is_symlink()] if out.is_dir() and not out.is_symlink() else []


def _remove_since(out: Path, files: dict[Path, tuple[int, int, int]] | None, folders: set[Path]) -> None:
    """Remove the files under ``out`` that are not in ``files`` as they were (none when ``files``
    is None), then the empty folders that were not in ``folders``, deepest first."""
    if files is not None:
        for path, stamp in _stamps(out).items():
            if files.get(path) != stamp:
                path.unlink(missing_ok=True)
    for folder in sorted(_folders(out) - folders, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def check_free(directory: str | Path, overwrite: bool) -> bool:
    """Whether ``directory`` already holds analysis results; refuses it unless ``overwrite``."""
    out = Path(directory)
    refuse_links(out)
    complete = (out / SUMMARY_FILE).exists()
    taken = complete or (out / RESULTS_FILE).exists()
    if taken and not overwrite and not complete:
        raise RunDirectoryError(f"{out} holds a partial analysis (no {SUMMARY_FILE}: an earlier run stopped before "
                                "finishing); pass --overwrite (overwrite=True) to replace it or choose another --out")
    if taken and not overwrite:
        raise RunDirectoryError(f"{out} already holds analysis results; pass --overwrite (overwrite=True) "
                                "to replace them or choose another --out")
    if overwrite:
        remove_stale_temps(out)  # what a killed earlier run left half-written
    return taken


__all__ = ["CKPT_DIR", "COLLECTED_FILE", "COMPARE_FILE", "CONFIG_FILE", "DISK_FULL", "FIGURES_DIR", "HISTORY_FILE",
           "INVERSION_CONFIG", "INVERSION_FILE", "KIND_KEY", "REPORT_FILE", "RESULTS_FILE", "RESUME_FILE", "RUNS_FILE",
           "RUN_FILE", "SEEDS_FILE", "SUMMARY_FILE", "check_free", "checkpoint_name", "checkpoints", "claim",
           "kind_of", "refuse_links", "remove_stale_temps", "step_name", "step_of", "steps_in", "whole_or_nothing"]
