"""The package is layered: the CLI is the top floor, and no module imports one that imports it back.

A lower module that reaches up into the CLI for a helper (``from ..cli import ...``) makes the command
line part of the library: the two can only be read, tested and changed together. The graph below is
read from the source with ``ast``, so it sees function-level (lazy) imports as well as module-level
ones; a lazy import breaks a loop at import time but not the dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = "ticketbench"
SRC = REPO / "src" / PACKAGE


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source.

    ``from . import x`` imports module x when x is a submodule, else the package (a name of its
    ``__init__``); ``from .a import b`` imports ``a`` (and ``a.b`` if that is a submodule). The parent
    packages that Python initialises on the way to a submodule are not counted: they are not a choice
    of the importing module. Dynamic imports (``importlib.import_module``) are not seen.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base not in known:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
            if node.module:
                found.add(base)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_lazy_imports():
    g = graph()
    assert "ticketbench.imp" in g["ticketbench.report.audit"]  # inside audit(), not at module level
    assert "ticketbench.runtime" in g["ticketbench.analysis.commands"]  # from .. import runtime
    assert "ticketbench.analysis" in g["ticketbench.analysis.hessian"]  # from . import HessianConfig


def test_no_module_but_the_cli_imports_the_cli():
    """Only ``python -m ticketbench`` (``__main__``, the CLI's other door) imports it."""
    g = graph()
    assert [m for m, targets in g.items() if f"{PACKAGE}.cli" in targets and m != f"{PACKAGE}.__main__"] == []


def test_the_package_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_parser_and_the_runtime_flags_do_not_import_torch():
    """``ticketbench --help`` answers at once: building the parser (runtime flags included) loads no torch."""
    code = ("import sys; import ticketbench.cli as cli, ticketbench.runtime as rt; "
            "rt.from_args(cli.build_parser().parse_args(['evaluate', 'x'])); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


LOW_FLOORS = {
    f"{PACKAGE}.layout": set(),
    f"{PACKAGE}.plan": {f"{PACKAGE}.config", f"{PACKAGE}.layout"},
}
"""The run layout and the job plan sit just above the config: Snakemake imports them to build the DAG, and
the report, the audit and the CLI read paths and jobs from them."""


def test_the_run_layout_and_the_job_plan_are_low_floors():
    g = graph()
    assert {m: g[m] - allowed for m, allowed in LOW_FLOORS.items()} == {m: set() for m in LOW_FLOORS}
    for user in (f"{PACKAGE}.imp", f"{PACKAGE}.report.tables", f"{PACKAGE}.report.audit", f"{PACKAGE}.report.document"):
        assert g[user] & set(LOW_FLOORS), f"{user} spells the layout or the plan itself"


def test_the_layout_and_the_plan_do_not_import_torch():
    """What Snakemake imports at DAG-build time and `ticketbench plan/status` need: no torch, no pandas."""
    code = ("import sys; import ticketbench.layout, ticketbench.plan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_environment_is_a_low_floor_that_the_analyses_read_instead_of_the_report():
    """Where a job ran and in which layout is read back from one low module (``environment``), so the
    analyses, the audit and the CLI need no report module for it; no analysis imports the report."""
    g = graph()
    assert g[f"{PACKAGE}.environment"] == set()
    analyses = [m for m in g if m.startswith(f"{PACKAGE}.analysis")]
    assert {m: sorted(t for t in g[m] if t.startswith(f"{PACKAGE}.report")) for m in analyses} == {m: [] for m in analyses}
    code = "import sys, ticketbench.environment; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
