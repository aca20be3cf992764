"""``tunnelscope reproduce PAPER``: one recipe per paper (``examples/papers/PAPER.yaml``), run at
the paper's own scale (``full``) or on synthetic stand-ins of the same shapes and class counts
(``tiny``), ending in the paper's figures.

A recipe holds the paper's headline experiment as a sweep (``sweep:``, the sections of a sweep
file: ``grid``, ``cell``, ``analysis``, ``resources``) and/or an inversion (``invert:``, a
training run then ``tunnelscope invert`` of its last checkpoint), at the paper's scale, and
under ``tiny:`` what the small run changes: each key it names inside a section replaces the
recipe's (a dict is updated key by key, so ``tiny: {sweep: {grid: {depth: [2, 3]}}}`` swaps
one grid variable and keeps the others). ``compute`` says what a step costs (measured) and
what the full run is projected to take; the header comment says it too.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..io import write_json, write_text

RECIPES_DIR = Path(__file__).resolve().parents[3] / "examples" / "papers"  # in the source tree
SCALES = ("tiny", "full")
RECIPE_KEYS = {"paper", "title", "claim", "figures", "compute", "sweep", "invert", "tiny"}
INVERT_KEYS = {"model", "data", "epochs", "batch_size", "recipe", "images", "points", "steps", "restarts",
               "starts", "refine_steps", "seed"}
INVERT_CONFIG_KEYS = ("steps", "restarts", "starts", "refine_steps", "seed")  # the invert keys that are InvertConfig's
RECIPE_FILE, SWEEP_FILE = "recipe.json", "sweep.yaml"


@dataclass
class Recipe:
    """A paper's recipe at one scale: the sweep and/or inversion it runs, and what it says of itself."""

    paper: str
    title: str
    claim: str
    scale: str
    compute: dict[str, str]
    sweep: dict[str, Any] | None = None
    invert: dict[str, Any] | None = None
    figures: list[str] = field(default_factory=list)
    source: Path | None = None


def recipe_names() -> list[str]:
    """The papers with a recipe in the source tree's ``examples/papers/``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def load_recipe(paper: str | Path, scale: str = "tiny") -> Recipe:
    """The recipe named ``paper`` (``examples/papers/PAPER.yaml``) or at the path ``paper``, at ``scale``."""
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    path = Path(paper)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{paper}.yaml"
        if not path.is_file():
            names = ", ".join(recipe_names()) or f"none found in {RECIPES_DIR}"
            raise ConfigError(f"no recipe for {paper!r}; the recipes: {names} (or give a recipe file's path; they "
                              "are in the repository's examples/papers/)")
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return _parsed(raw, scale, path)


def _parsed(raw: Any, scale: str, path: Path) -> Recipe:
    if not isinstance(raw, dict) or not {"paper", "title"} <= raw.keys():
        raise ConfigError(f"recipe {path} must be a mapping with at least 'paper' and 'title'")
    if unknown := sorted(set(raw) - RECIPE_KEYS):
        raise ConfigError(f"recipe {path}: unknown key(s) {unknown}; valid: {sorted(RECIPE_KEYS)}")
    if "sweep" not in raw and "invert" not in raw:
        raise ConfigError(f"recipe {path} runs nothing: give a 'sweep' or an 'invert' section")
    chosen = {k: copy.deepcopy(raw.get(k)) for k in ("sweep", "invert")}
    if scale == "tiny":
        for section, changes in (raw.get("tiny") or {}).items():
            base = chosen.get(section)
            if not isinstance(base, dict) or not isinstance(changes, dict):
                raise ConfigError(f"recipe {path}: tiny changes {section!r}, which the recipe does not have as a "
                                  "section")
            chosen[section] = _changed(base, changes)
    if chosen["invert"] is not None and (unknown := sorted(set(chosen["invert"]) - INVERT_KEYS)):
        raise ConfigError(f"recipe {path}: unknown invert key(s) {unknown}; valid: {sorted(INVERT_KEYS)}")
    return Recipe(str(raw["paper"]), str(raw["title"]), str(raw.get("claim", "")), scale,
                  dict(raw.get("compute") or {}), chosen["sweep"], chosen["invert"], list(raw.get("figures") or []),
                  path)


def _changed(section: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``section`` with each key of ``changes`` replaced (dicts updated key by key, one level)."""
    out = dict(section)
    for key, value in changes.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def reproduce(paper: str | Path, scale: str = "tiny", out: str | Path | None = None, address: str | None = None,
              max_concurrent: int | None = None, device: str = "auto", progress: bool | None = None) -> dict:
    """Run a paper's recipe at ``scale`` into ``out`` (default ``runs/reproduce/PAPER-SCALE``): its
    sweep (resumable, as ``tunnelscope sweep``; on Ray with ``address``) and report, then its
    inversion. Returns what ran and where; ``recipe.json`` in ``out`` records the resolved recipe."""
    recipe = load_recipe(paper, scale)
    folder = Path(out) if out is not None else Path("runs") / "reproduce" / f"{recipe.paper}-{scale}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RECIPE_FILE, {"paper": recipe.paper, "title": recipe.title, "scale": scale,
                                      "source": str(recipe.source), "compute": recipe.compute,
                                      "sweep": recipe.sweep, "invert": recipe.invert})
    done: dict[str, Any] = {"paper": recipe.paper, "scale": scale, "out": str(folder)}
    if recipe.sweep is not None:
        done["sweep"] = _run_sweep(recipe, folder, address, max_concurrent, device, progress)
    if recipe.invert is not None:
        done["invert"] = _run_inversion(recipe.invert, folder / "invert", device, progress)
    return done


def _run_sweep(recipe: Recipe, folder: Path, address: str | None, max_concurrent: int | None, device: str,
               progress: bool | None) -> dict[str, Any]:
    from ..report.sweep import write_sweep_report
    from ..sweep import SweepSpec
    from ..sweep.run import run_sweep

    assert recipe.sweep is not None
    spec_file = folder / SWEEP_FILE
    sweep = _with_environment(recipe.sweep, recipe)
    write_text(spec_file, yaml.safe_dump({"name": f"{recipe.paper}-{recipe.scale}", "store": ".", **sweep},
                                         sort_keys=False))
    spec = SweepSpec.load(spec_file)
    outcome = run_sweep(spec, address=address, max_concurrent=max_concurrent, device=device, progress=progress)
    report = write_sweep_report(spec)
    if outcome.failed:
        key, error = next(iter(outcome.failed.items()))
        raise ConfigError(f"{len(outcome.failed)} of {len(spec.cells)} cells of {recipe.paper}'s recipe failed; "
                          f"cell {key}: {error}; 'tunnelscope sweep status {spec_file}' lists them")
    return {"spec": str(spec_file), "cells": len(spec.cells), "ran": len(outcome.ran), "report": str(report)}


def _with_environment(value: Any, recipe: Recipe) -> Any:
    """``value`` with ``${NAME}`` replaced by the environment's ``NAME`` (a recipe's data folders);
    refuses one that is not set, naming it."""
    if isinstance(value, dict):
        return {k: _with_environment(v, recipe) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_environment(v, recipe) for v in value]
    if not isinstance(value, str):
        return value
    expanded = os.path.expandvars(value)
    if missing := re.findall(r"\$\{(\w+)\}", expanded):
        raise ConfigError(f"{recipe.paper}'s recipe at scale {recipe.scale} reads the folder ${{{missing[0]}}}: set "
                          f"the environment variable {missing[0]} (see the header of {recipe.source}), or run "
                          "--scale tiny")
    return expanded


def _run_inversion(settings: dict[str, Any], folder: Path, device: str, progress: bool | None) -> dict[str, Any]:
    from ..train.loop import train_once
    from .inversion import InvertConfig, invert_checkpoint

    final = train_once(settings["model"], settings["data"], settings.get("epochs", 10), folder / "train",
                       batch_size=settings.get("batch_size", 128), recipe=settings.get("recipe"),
                       seed=settings.get("seed", 0), device=device, progress=progress, early_checkpoints=False)
    config = InvertConfig(**{k: settings[k] for k in INVERT_CONFIG_KEYS if k in settings})  # unset: the config's
    invert_checkpoint(final, settings["data"], folder / "inversion", images=settings.get("images", 8),
                      points=settings.get("points", "blocks"), config=config, device=device, overwrite=True,
                      progress=progress)
    return {"training": str(folder / "train"), "inversion": str(folder / "inversion"),
            "report": str(folder / "inversion" / "report.html")}


__all__ = ["RECIPES_DIR", "Recipe", "load_recipe", "recipe_names", "reproduce"]
