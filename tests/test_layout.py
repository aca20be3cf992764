"""The package's import graph: no cycles, and arrows only the right way: down the layer table
of docs/architecture.md (:data:`LAYERS`), never up it.

Every ``import`` counts, at module level or inside a function (deferred imports still
couple modules); only ``if TYPE_CHECKING:`` blocks are left out. A module's own parent
packages are not arrows (Python imports them first in any case), and ``from pkg import
name`` is an arrow to the submodule ``pkg.name`` when there is one, else to ``pkg``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "tunnelscope"


def module_name(path: Path) -> str:
    parts = ("tunnelscope",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, modules: set[str]) -> set[str]:
    """The tunnelscope modules ``path`` imports (resolved to the deepest existing module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for p in paths:
        for target in imports(p, modules):
            # importing a package only to reach a submodule is an arrow to that submodule
            g.add_edge(module_name(p), target)
    return g


def test_the_import_graph_has_no_cycle(graph):
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"{len(cycles)} import cycles, e.g. {' -> '.join(min(cycles, key=len))}"


def test_metrics_do_not_import_capture_and_nothing_imports_the_cli(graph):
    metrics = [m for m in graph if m.startswith("tunnelscope.metrics")]
    assert not [(a, b) for a in metrics for b in graph.successors(a) if b.startswith("tunnelscope.capture")]
    assert not [a for a in graph.predecessors("tunnelscope.cli")]


def test_results_do_not_import_the_report(graph):
    assert not [b for b in graph.successors("tunnelscope.results") if b.startswith("tunnelscope.report")]


MAX_BODY = 50  # lines after the docstring; the signature and docstring do not count


def body_lengths(path: Path) -> list[tuple[str, int]]:
    """``(function, lines)`` for every function in ``path``: its lines from the first statement
    after the docstring to its end."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
            out.append((node.name, (node.end_lineno or node.lineno) - body[0].lineno + 1))
    return out


def test_body_lengths_are_measured_from_the_first_statement_after_the_docstring(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('def f(\n    a,\n):\n    """Doc.\n\n    More."""\n    x = a\n    return x\n\n\n'
                      'def g():\n    return 1\n')
    assert body_lengths(source) == [("f", 2), ("g", 1)]


def test_no_function_body_is_longer_than_one_screen():
    long = [(str(p.relative_to(ROOT)), name, lines) for p in sorted(ROOT.rglob("*.py"))
            for name, lines in body_lengths(p) if lines > MAX_BODY]
    assert not long, f"function bodies over {MAX_BODY} lines: {long}"


# The layer table of docs/architecture.md, lowest first: a module may import its own layer and
# the layers below it, never one above. Every top-level module or package must be placed.
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary", {"errors", "io", "interrupts", "features", "device", "threads", "rundir", "summary", "specs",
                    "versions", "progress", "checkpoint", "jsontypes"}),
    ("data and models", {"data", "models"}),
    ("capture", {"capture"}),
    ("metrics", {"metrics"}),
    ("probes and the tunnel", {"logistic", "probes", "tunnel", "uncertainty", "verdict"}),
    ("results", {"readback", "results"}),
    ("engine", {"engine"}),
    ("training and sweeps", {"train", "sweep"}),
    ("report", {"report"}),
    ("experiments", {"experiments"}),
    ("integrations", {"integrations"}),
    ("cli and the package facade", {"cli", "cli_experiments", "cli_support", ""}),
]

# Arrows against the table, each with the reason it is tolerated for now. Remove an entry when
# its arrow goes; an entry whose arrow is gone fails the test, so the list stays true.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("tunnelscope.report.sweep_explain", "tunnelscope.experiments.explain"):
        "the sweep page's 'what explains transfer' section runs the explain experiment; it belongs "
        "with the experiment (or the sweep page in a layer above experiments)",
}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s top-level name (``""``: the package itself)."""
    top = module.split(".")[1] if "." in module else ""
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS (and of docs/architecture.md): place it")


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_higher_layer(graph):
    upward = {(a, b) for a, b in graph.edges if layer_of(b) > layer_of(a)}
    named = [f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
             for a, b in sorted(upward - set(ALLOWED_UPWARD))]
    assert not named, "imports of a higher layer:\n" + "\n".join(named)
    gone = set(ALLOWED_UPWARD) - upward
    assert not gone, f"allowed exceptions that no longer occur (remove them): {sorted(gone)}"


def test_the_layer_table_of_the_docs_lists_every_top_level_name():
    """docs/architecture.md's table names the same modules, in the same layers, as LAYERS."""
    doc = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    in_docs = [{name.strip("`/").split(".")[-1] for name in re.findall(r"`[^`]+`", row.split(" | ")[0])}
               for row in rows]
    assert in_docs == [members - {""} for _, members in LAYERS]


# ---------------------------------------------------------------------------------------- settings travel whole
MAX_SETTINGS_ONE_BY_ONE = 8
# the one place settings are spelled out field by field: the object itself, and the CLI building it
SETTINGS_BUILDERS = {"AnalysisSettings", "from_dict"}


def settings_passed_one_by_one(path: Path, fields: frozenset[str]) -> list[tuple[str, int, int]]:
    """``(call, line, count)`` of every call in ``path`` that passes analysis settings as keywords
    (keyword arguments or dict-literal keys named like an ``AnalysisSettings`` field)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func).rsplit(".", 1)[-1]
        keys = {k.arg for k in node.keywords if k.arg in fields}
        for arg in node.args:
            if isinstance(arg, ast.Dict):
                keys |= {k.value for k in arg.keys if isinstance(k, ast.Constant) and k.value in fields}
        if len(keys) > MAX_SETTINGS_ONE_BY_ONE and name not in SETTINGS_BUILDERS:
            found.append((name, node.lineno, len(keys)))
    return found


def test_no_call_passes_more_than_eight_settings_one_by_one():
    from tunnelscope.engine.settings import FIELDS

    offenders = [f"{p.relative_to(ROOT)}:{line} {name}(...) passes {n} settings"
                 for p in sorted(ROOT.rglob("*.py")) for name, line, n in settings_passed_one_by_one(p, FIELDS)]
    assert not offenders, "pass an AnalysisSettings instead:\n" + "\n".join(offenders)


def test_the_settings_check_counts_keywords_and_dict_keys(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("f(a, points=1, reduce=2, seed=3, device=4, batch_size=5, max_dim=6, resamples=7, probe=8, "
                    "ncc_eps=9)\ng({'points': 1, 'seed': 2})\nAnalysisSettings(points=1, reduce=2, seed=3, device=4, "
                    "batch_size=5, max_dim=6, resamples=7, probe=8, ncc_eps=9)\n")
    from tunnelscope.engine.settings import FIELDS

    assert settings_passed_one_by_one(code, FIELDS) == [("f", 1, 9)]
