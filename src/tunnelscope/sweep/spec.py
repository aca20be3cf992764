"""The sweep specification: a YAML grid of variables, a cell template that uses them, and
the analysis every cell runs. Each combination of the grid's values is one *cell*,
identified by a content hash of its resolved configuration.

```yaml
name: mlp-depth-width
store: runs/sweeps/mlp-depth-width      # relative to the YAML file
grid:                                    # every combination is a cell
  depth: [4, 8]
  width: [64, 256]
  seed: [0, 1]
cell:                                    # {var} is replaced by the cell's value
  model: "mlp-{depth}x{width}"
  data: "fashion-mnist[classes=0-4]"
  epochs: 10
  seed: "{seed}"
analysis:
  ood: ["fashion-mnist[classes=5-9]", "digits[size=28]"]
  metrics: "probe,rank,nc"
  checkpoints: final                     # final | all | a list of steps
resources: {cpus: 1, gpus: 0}
```
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, SpecError, SweepConfigError

TOP_KEYS = {"name", "store", "grid", "cell", "analysis", "resources"}
CELL_KEYS = {"model", "data", "epochs", "recipe", "seed", "batch_size", "lr", "weight_decay", "schedule",
             "label_smoothing", "checkpoint_every", "early_checkpoints", "dense_steps", "train"}
ANALYSE_ONLY_KEYS = {"model", "data", "seed", "train"}  # a cell with train: false keeps only these
ANALYSIS_KEYS = {"ood", "metrics", "points", "reduce", "checkpoints", "max_samples", "probe_epochs", "protocol",
                 "cka_passes"}  # cka_passes has no default here, so the keys of earlier sweeps' cells stay
RESOURCE_KEYS = {"cpus", "gpus", "retries"}
ANALYSIS_DEFAULTS: dict[str, Any] = {"ood": [], "metrics": "probe,rank,nc", "points": "blocks", "reduce": "pool2",
                                     "checkpoints": "final", "max_samples": 10_000, "probe_epochs": 30,
                                     "protocol": "lbfgs"}
CELL_DEFAULTS: dict[str, Any] = {"epochs": 10, "recipe": "sgd", "seed": 0, "batch_size": 128}
RESOURCE_DEFAULTS: dict[str, Any] = {"cpus": 1, "gpus": 0, "retries": 2}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_CELLS = 10_000


MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # values in the parsed file, aliases counted each time they are used


def _check_expanded_size(raw: Any, where: str) -> None:
    """Refuse a file whose values, with YAML aliases expanded, exceed :data:`MAX_NODES` (an alias
    bomb: a few lines that expand to billions of values), counting without expanding."""
    seen = 0
    stack = [raw]
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SweepConfigError(f"{where} expands to more than {MAX_NODES:,} values (YAML aliases used over and "
                                   "over?); write the grid out")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _check_keys(given: dict, valid: set[str], where: str) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise SweepConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                               f"in {where}; valid keys: {', '.join(sorted(valid))}")


def _fill(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{var}`` in strings (a string that is exactly one placeholder keeps the value's type)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return variables[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)
    if isinstance(value, list):
        return [_fill(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, variables) for k, v in value.items()}
    return value


INT_KEYS = {"epochs", "seed", "batch_size", "checkpoint_every", "max_samples", "probe_epochs"}
FLOAT_KEYS = {"lr", "weight_decay", "label_smoothing"}


def _typed(section: dict[str, Any], where: str) -> dict[str, Any]:
    """Numbers as numbers (YAML reads ``1e-3`` as a string), ``checkpoints`` checked, so that a
    bad value fails when the sweep is read, not in every cell, and equal settings hash equally."""
    out = dict(section)
    for key, value in section.items():
        if value is None:
            continue
        try:
            if key in INT_KEYS:
                number = float(value)
                if not math.isfinite(number) or number != int(number):
                    raise ValueError
                out[key] = int(number)
            elif key in FLOAT_KEYS:
                out[key] = float(value)
                if not math.isfinite(out[key]):
                    raise ValueError
        except (TypeError, ValueError, OverflowError):
            kind = "an integer" if key in INT_KEYS else "a number"
            raise SweepConfigError(f"'{where}.{key}' must be a finite {kind.removeprefix('an ').removeprefix('a ')}, "
                                   f"not {value!r}") from None
    which = out.get("checkpoints")
    if where == "analysis" and not (which in ("final", "all") or (
            isinstance(which, list) and which and all(isinstance(s, int) for s in which))):
        raise SweepConfigError(f"'analysis.checkpoints' must be final, all or a list of training steps, not {which!r}")
    return out


def _check_resources(resources: dict[str, Any], where: str) -> None:
    """cpus > 0, gpus >= 0 (numbers), retries a whole number >= 0."""
    for key, low, strict in (("cpus", 0, True), ("gpus", 0, False), ("retries", 0, False)):
        value = resources[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if strict else value >= low) and (key != "retries" or float(value).is_integer())
        if not ok:
            need = {"cpus": "a number > 0", "gpus": "a number >= 0", "retries": "a whole number >= 0"}[key]
            raise SweepConfigError(f"'resources.{key}' in {where} must be {need}, not {value!r}")


@functools.lru_cache(maxsize=4096)
def _check_spec(kind: str, text: str) -> None:
    from .. import data, models

    (models.check_spec if kind == "model" else data.check_spec)(text)


def _validate_specs(cell: Cell) -> None:
    """The cell's model (a spec, or a checkpoint that exists), data and OOD specs; an OOD set
    that is the ID data is refused."""
    t, a = cell.train, cell.analysis
    if not isinstance(t["model"], str) or not isinstance(t["data"], str):
        raise SweepConfigError("'model' and 'data' must be strings")
    if not cell.trains and is_checkpoint_path(t["model"]):
        if not Path(t["model"]).is_file():
            raise SweepConfigError(f"checkpoint {t['model']} does not exist (a path is relative to the sweep file)")
    else:
        _check_spec("model", t["model"])
    _check_spec("data", t["data"])
    for ood in a["ood"] if isinstance(a["ood"], list) else [a["ood"]]:
        _check_spec("data", str(ood))
        if str(ood).replace(" ", "") == t["data"].replace(" ", ""):
            raise SweepConfigError(f"OOD set {ood!r} is the ID data itself; an OOD set must be other data "
                                   "(other classes, another dataset)")


def _validate(cell: Cell) -> None:
    """Everything about a cell that can be checked without data or a model, before any cell runs:
    a bad value fails the whole sweep at once, not each cell on a worker."""
    from ..capture import Reduction
    from ..engine.analyze import parse_metrics
    from ..probes import PROTOCOLS
    from ..train.recipes import Recipe

    t, a = cell.train, cell.analysis
    where = f"cell {cell.label()}"
    try:
        _validate_specs(cell)
        for key, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("checkpoint_every", 1),
                         ("max_samples", 0), ("probe_epochs", 1)):
            section = t if key in t else a
            if key in section and section[key] is not None and section[key] < low:
                raise SweepConfigError(f"'{key}' must be >= {low}, not {section[key]}")
        if cell.trains:
            Recipe.resolve(str(t.get("recipe", "sgd")), int(t["epochs"]), t.get("lr"), t.get("weight_decay"),
                           t.get("schedule"), None, t.get("label_smoothing"))
        parse_metrics(a["metrics"])
        Reduction.parse(str(a["reduce"]))
        if a["protocol"] not in PROTOCOLS:
            raise SweepConfigError(f"unknown probe protocol {a['protocol']!r}; valid: {', '.join(PROTOCOLS)}")
    except (SpecError, ConfigError) as exc:  # a bad spec string or setting, named by where it is
        raise SweepConfigError(f"{where}: {exc}") from None


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_placeholders(v) for v in value.values())) if value else set()
    return set()


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_top_level(raw: Any, where: str) -> None:
    """The sweep is a mapping of known keys, has ``name`` and ``cell``, and its sections are mappings."""
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{where} must be a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    _check_keys(raw, TOP_KEYS, where)
    for required in ("name", "cell"):
        if required not in raw:
            raise SweepConfigError(f"{where} lacks the key {required!r}")
    for section in ("grid", "cell", "analysis", "resources"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise SweepConfigError(f"'{section}' in {where} must be a mapping of keys to values, "
                                   f"not {type(raw[section]).__name__}")


def _checked_name(raw: dict[str, Any], where: str) -> str:
    """The sweep's name, checked to be usable as the store folder's name."""
    name = str(raw["name"])
    if not _NAME.fullmatch(name) or ".." in name:
        raise SweepConfigError(f"sweep name {name!r} in {where} must be letters, digits, '_', '.' and '-' "
                               "(it names the store folder), not a path")
    return name


def _checked_grid(raw: dict[str, Any], where: str) -> dict[str, list]:
    """The grid: non-empty lists of distinct single values, named like identifiers, at most ``MAX_CELLS`` cells."""
    grid = raw.get("grid") or {}
    if not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepConfigError(f"'grid' in {where} must map each variable to a non-empty list of values")
    cells = 1
    for values in grid.values():
        cells *= len(values)
    if cells > MAX_CELLS:
        raise SweepConfigError(f"the grid in {where} has {cells} cells, more than {MAX_CELLS}; split the sweep "
                               "into several files or use fewer values per variable")
    for variable, values in grid.items():
        if not re.fullmatch(r"\w+", str(variable)):
            raise SweepConfigError(f"grid variable {variable!r} must be letters, digits and underscores "
                                   f"(it is used as {{{variable}}})")
        if any(isinstance(v, (list, dict)) for v in values):
            raise SweepConfigError(f"grid variable {variable!r} takes single values (numbers or strings), "
                                   "not lists")
        if len(set(map(repr, values))) != len(values):
            raise SweepConfigError(f"grid variable {variable!r} lists a value twice: {values}")
    return grid


def _checked_sections(raw: dict[str, Any], grid: dict[str, list],
                      where: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``cell``, ``analysis`` and ``resources`` over their defaults, checked, using only grid variables."""
    given = raw.get("cell") or {}
    _check_keys({**CELL_DEFAULTS, **given}, CELL_KEYS, "'cell'")
    cell = _cell_section(given, where)
    for required in ("model", "data"):
        if required not in cell:
            raise SweepConfigError(f"'cell' in {where} lacks the key {required!r}")
    analysis = {**ANALYSIS_DEFAULTS, **(raw.get("analysis") or {})}
    _check_keys(analysis, ANALYSIS_KEYS, "'analysis'")
    resources = {**RESOURCE_DEFAULTS, **(raw.get("resources") or {})}
    _check_keys(resources, RESOURCE_KEYS, "'resources'")
    _check_resources(resources, where)
    undefined = sorted((_placeholders(cell) | _placeholders(analysis)) - set(grid))
    if undefined:
        raise SweepConfigError(f"placeholders {', '.join('{' + u + '}' for u in undefined)} are not grid "
                               f"variables; grid variables: {', '.join(grid) or '(none)'}")
    return cell, analysis, resources


def _cell_section(given: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``cell`` section over its defaults; with ``train: false`` (analyse the model as it is:
    a checkpoint file or a model spec at its initialisation) only the keys that apply, and a
    training key given anyway is refused."""
    train = given.get("train", True)
    if not isinstance(train, bool):
        raise SweepConfigError(f"'cell.train' in {where} must be true or false, not {train!r}")
    if train:
        return {**CELL_DEFAULTS, **given}
    training = sorted(set(given) - ANALYSE_ONLY_KEYS)
    if training:
        raise SweepConfigError(f"'cell' in {where} has train: false but training keys {', '.join(training)}; "
                               "drop them, or set train: true")
    return {"seed": CELL_DEFAULTS["seed"], **given}


def is_checkpoint_path(model: str) -> bool:
    """True when a cell's ``model`` names a checkpoint file rather than a model spec."""
    if model.startswith(("tv:", "timm:", "hf:")):
        return False
    return model.endswith((".pt", ".pth")) or "/" in model


def _store_path(raw: dict[str, Any], name: str, source: Path | None) -> Path:
    """The sweep's store folder, resolved against the sweep file's folder (or the working directory)."""
    base = source.parent if source else Path.cwd()
    store = Path(raw.get("store") or f"runs/sweeps/{name}")
    return (store if store.is_absolute() else base / store).resolve()


@dataclass(frozen=True)
class Cell:
    """One resolved combination: the grid values, the training config and the analysis config."""

    variables: dict[str, Any]
    train: dict[str, Any]
    analysis: dict[str, Any]

    @property
    def key(self) -> str:
        """A content hash of everything that changes the cell's numbers (16 hex digits)."""
        return _hash({"train": self.train, "analysis": self.analysis})

    @property
    def train_key(self) -> str:
        """A content hash of the training config alone: cells that differ only in their
        analysis share one training run."""
        return _hash({"train": self.train})

    @property
    def trains(self) -> bool:
        """False for a cell that analyses a model as it is (``train: false``), without training."""
        return self.train.get("train", True) is not False

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.variables.items()) or self.key


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    name: str
    store: Path
    grid: dict[str, list]
    cell: dict[str, Any]
    analysis: dict[str, Any]
    resources: dict[str, Any]
    source: Path | None = None
    cells: list[Cell] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Read and validate a YAML sweep file."""
        path = Path(path)
        if not path.is_file():
            raise SweepConfigError(f"sweep file {path} does not exist")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SweepConfigError(f"{path} is {path.stat().st_size:,} bytes; a sweep file is at most "
                                   f"{MAX_FILE_BYTES:,}")
        try:
            raw = yaml.safe_load(path.read_text())
            _check_expanded_size(raw, str(path))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise SweepConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: Any, source: Path | None = None) -> SweepSpec:
        """Validate a sweep given as a dict (as read from YAML)."""
        where = str(source) if source else "the sweep"
        _check_top_level(raw, where)
        name = _checked_name(raw, where)
        grid = _checked_grid(raw, where)
        cell, analysis, resources = _checked_sections(raw, grid, where)
        spec = cls(name, _store_path(raw, name, source), grid, cell, analysis, resources, source)
        spec.cells = spec._expand()
        return spec

    def _expand(self) -> list[Cell]:
        names = list(self.grid)
        cells = []
        for values in itertools.product(*(self.grid[n] for n in names)):
            variables = dict(zip(names, values))
            train = _typed(_fill(self.cell, variables), "cell")
            if train.get("train") is False and isinstance(train["model"], str) and is_checkpoint_path(train["model"]):
                base = self.source.parent if self.source else Path.cwd()
                train["model"] = str((base / train["model"]).resolve())  # the same file from any working folder
            cell = Cell(variables, train, _typed(_fill(self.analysis, variables), "analysis"))
            _validate(cell)
            cells.append(cell)
        keys = [c.key for c in cells]
        if len(set(keys)) != len(keys):
            raise SweepConfigError("two grid combinations give the same cell; a grid variable is not used by 'cell' or "
                                   "'analysis'")
        return cells


__all__ = ["Cell", "SweepSpec", "is_checkpoint_path"]
