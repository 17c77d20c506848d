"""The layering of the code: aligncap_core is a library usable without Prefect, it imports
nothing from the layers above it (aligncap_ops, tasks, flows), and its modules import each
other without cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "aligncap_core"
OUTER = ("prefect", "aligncap_ops", "tasks", "flows")

# Import every aligncap_core module in a fresh interpreter, then report which outer packages
# ended up in sys.modules (and any module that failed to import).
_IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback
import aligncap_core
outer = lambda: sorted({n.split(".")[0] for n in sys.modules} & set(sys.argv[1:]))
failed, names, loaded_by = {}, ["aligncap_core"], {}
for m in pkgutil.walk_packages(aligncap_core.__path__, "aligncap_core."):
    names.append(m.name)
    before = outer()
    try:
        importlib.import_module(m.name)
    except Exception:
        failed[m.name] = traceback.format_exc(limit=3)
    for pkg in set(outer()) - set(before):
        loaded_by[pkg] = m.name
print(json.dumps({"modules": names, "failed": failed, "outer": outer(), "loaded_by": loaded_by}))
"""


def _modules() -> dict[str, Path]:
    out = {}
    for p in CORE.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _walk_module_level(node: ast.AST):
    """The nodes Python runs at import: not function bodies, not `if TYPE_CHECKING:` blocks."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        yield from _walk_module_level(child)


def _imports(tree: ast.AST, module_level: bool = False) -> list[tuple[str, ast.stmt]]:
    """(imported name, statement) for every import in the tree (with module_level, only those
    that run at import); `from X import Y` yields X and X.Y (a submodule, when it is one)."""
    found = []
    for node in (_walk_module_level(tree) if module_level else ast.walk(tree)):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node))
            found += [(f"{node.module}.{a.name}", node) for a in node.names]
    return found


def test_importing_every_core_module_loads_no_prefect_and_no_outer_layer():
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *OUTER], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got["modules"]) > 50, got["modules"]  # the walk really found the package
    assert "aligncap_core.prefs.judge_types" in got["modules"]
    assert not got["failed"], got["failed"]
    assert got["outer"] == [], f"importing aligncap_core loaded (package: first module) {got['loaded_by']}"


def test_core_source_names_no_outer_layer():
    """Also the imports inside functions: only the CLI's stack commands load aligncap_ops."""
    bad = []
    for name, path in _modules().items():
        for imported, node in _imports(ast.parse(path.read_text())):
            top = imported.split(".")[0]
            if top in OUTER and not (name == "aligncap_core.cli" and top == "aligncap_ops"):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {imported}")
    assert not bad, "\n".join(bad)


def test_core_modules_import_each_other_without_cycles():
    """Module-level imports only (a function-level import is how a factory like make_judge
    reaches an optional backend). `from pkg import sub` depends on pkg.sub, not on pkg's
    __init__ (which Python has already started by then)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for imported, stmt in _imports(ast.parse(path.read_text()), module_level=True):
            if imported not in mods or imported == name:
                continue
            if isinstance(stmt, ast.ImportFrom) and imported == stmt.module and any(
                    f"{stmt.module}.{a.name}" in mods for a in stmt.names):
                continue  # `from pkg import sub`: the edge is to pkg.sub
            deps.add(imported)
        graph[name] = deps

    cycles, state = [], {}  # depth-first search; state: 1 on the stack, 2 done

    def visit(v: str, stack: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w, stack + [w])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v, [v])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
    assert "aligncap_core.prefs.judges" not in graph["aligncap_core.prefs.openai_judge"]
    assert "aligncap_core.prefs.openai_judge" not in graph["aligncap_core.prefs.judges"]
