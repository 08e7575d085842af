"""The package's shape: no import cycle, and data flows one way through the layers.

Every ``import`` in ``separator/`` counts, at module level or inside a function (a lazy import
is still a dependency).  Modules are grouped in layers, from the protocol's vocabulary up to
the command line; a module may import its own layer and the layers below, never above::

    errors, protocol, codecs, naming, runtime, filehash, progress   the vocabulary, process settings
    request, storage, media                                    the request, the files, ffmpeg
    core                                                       separation (models and streaming)
    workers                                                    processes that run tasks (local, Ray)
    jobs                                                       one job: engine, store, scheduler
    batch, server, evaluate, api                               running many: catalogues, services, scoring
    cli, separator/__init__, every __main__                    the command line, the public names
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "separator"

LAYERS = [
    {"errors", "protocol", "codecs", "naming", "runtime", "filehash", "progress"},
    {"request", "storage", "media"},
    {"core"},
    {"workers"},
    {"jobs"},
    {"batch", "server", "evaluate", "api"},
    {"cli", "__init__", "__main__"},     # the command line; the package's public face; entry points
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``separator`` modules that ``name`` imports (a package's ``__init__`` counts as the package)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base[: len(base) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("separator"):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    top = "__main__" if name.endswith(".__main__") else name.split(".")[1] if "." in name else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{name} is in no layer: add its folder to LAYERS")


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_data_flows_one_way():
    reach_back = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                        if layer(b) > layer(a))
    assert reach_back == []


def test_the_walk_sees_lazy_imports():
    """The graph is built from every import statement, not only the module-level ones."""
    g = graph()
    assert "separator.core.registry" in g["separator.api"]
    assert any(d.startswith("separator.media") for d in g["separator.jobs.engine"])


def test_the_command_line_starts_without_the_heavy_libraries():
    """``separator --help`` (and parsing any command) imports neither torch nor numpy nor
    pydantic: they load when a command runs."""
    import subprocess
    import sys
    code = ("import sys, separator.cli; separator.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
