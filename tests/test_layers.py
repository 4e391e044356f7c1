"""Folders are the architecture: each package's folder is its import path, each layer imports only the layers below
it (docs/architecture.md), and there is no import cycle. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> folder (the folder path is the import path below it)
PACKAGES = {
    "xlsearch": "xlsearch",
    "xlsearch_indexer": "indexer/xlsearch_indexer",
    "xlsearch_server": "server/xlsearch_server",
    "xlsearch_bench": "bench/xlsearch_bench",
    "xlsearch_cli": "cli/xlsearch_cli",
    "xlsearch_training": "training/xlsearch_training",
    "xlsearch_client": "clients/xlsearch_client",
}
# The core's stages, bottom first: a module may import its own stage and the stages before it.
CORE_STAGES = [
    "xlsearch.errors",
    "xlsearch.common",
    "xlsearch.v1",
    "xlsearch.data",
    "xlsearch.encode",
    "xlsearch.bundle",
    "xlsearch.index",
    "xlsearch.search",
    "xlsearch.eval",
]
# Which packages each package may import (besides itself).
ALLOWED = {
    "xlsearch": set(),
    "xlsearch_client": set(),  # the light client: grpcio + protobuf only
    "xlsearch_indexer": {"xlsearch"},
    "xlsearch_server": {"xlsearch"},
    "xlsearch_training": {"xlsearch"},
    "xlsearch_bench": {"xlsearch", "xlsearch_server", "xlsearch_indexer", "xlsearch_client"},
    # xlsearch_training: only `xlsearch bundle` (pretrained tower export), imported lazily inside that command
    "xlsearch_cli": {
        "xlsearch",
        "xlsearch_server",
        "xlsearch_indexer",
        "xlsearch_bench",
        "xlsearch_client",
        "xlsearch_training",
    },
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        base = REPO / folder
        for f in base.rglob("*.py"):
            if f.name.endswith(("_pb2.py", "_pb2_grpc.py")) or "__pycache__" in f.parts:
                continue
            parts = [pkg, *f.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            names.update(subs)
            if len(subs) < len(node.names):
                names.add(base)
    found = set()
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _stage(module: str) -> int:
    if module == "xlsearch":
        return 0
    for n, stage in enumerate(CORE_STAGES):
        if module == stage or module.startswith(stage + "."):
            return n
    raise AssertionError(
        f"{module}: not in a core stage; add its folder to CORE_STAGES and docs/architecture.md"
    )


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in graph.items():
        pkg = module.split(".")[0]
        for dep in deps:
            dep_pkg = dep.split(".")[0]
            if dep_pkg != pkg and dep_pkg not in ALLOWED[pkg]:
                found.append(f"{module} -> {dep}")
            elif pkg == dep_pkg == "xlsearch" and _stage(dep) > _stage(module):
                found.append(f"{module} -> {dep} (core stage {CORE_STAGES[_stage(dep)]} is above)")
    return sorted(found)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_package_imports_only_the_layers_below_it(graph: dict[str, set[str]]) -> None:
    upward = upward_imports(graph)
    assert not upward, "imports of a layer above:\n" + "\n".join(upward)


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert not import_cycles(graph)


def test_the_checks_find_what_they_must_refuse(tmp_path: Path) -> None:
    """Not vacuous: an import inside a function is seen, an upward import and a cycle are reported."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from xlsearch.search.engine import SearchEngine\n", encoding="utf-8")
    b.write_text("def later():\n    import xlsearch_server.app\n", encoding="utf-8")
    mods = {"xlsearch.data.a": a, "xlsearch.search.engine": b, "xlsearch_server.app": b}
    graph = {
        "xlsearch.data.a": _imports("xlsearch.data.a", a, mods),
        "xlsearch.search.engine": _imports("x", b, mods),
    }
    assert graph == {
        "xlsearch.data.a": {"xlsearch.search.engine"},
        "xlsearch.search.engine": {"xlsearch_server.app"},
    }
    assert upward_imports(graph) == [
        "xlsearch.data.a -> xlsearch.search.engine (core stage xlsearch.search is above)",
        "xlsearch.search.engine -> xlsearch_server.app",
    ]
    assert import_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [
        ["p.a", "p.b", "p.c"]
    ]


def test_every_module_is_small() -> None:
    """One job per module: none over 450 lines outside generated code (we aim under ~400)."""
    big = {
        str(p.relative_to(REPO)): n
        for p in _modules().values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert not big, f"modules over 450 lines: {big}"


def test_no_serving_package_imports_torch() -> None:
    """Every module of the torch-free packages (the core, indexer, server, benchmarks, command line) imported in
    one fresh interpreter: torch, torchvision, open_clip and cn_clip stay out of sys.modules."""
    import subprocess
    import sys

    serving = sorted(m for m in _modules() if m.split(".")[0] not in ("xlsearch_training", "xlsearch_client"))
    code = (
        "import importlib, sys\n"
        f"for name in {serving!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = {'torch', 'torchvision', 'open_clip', 'cn_clip'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
