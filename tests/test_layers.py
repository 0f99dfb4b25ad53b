"""The house's one-way arrows, read from the source: core (wanrt/) <- export <- engines <- runtime <- CLI.

Every `import` of a wanrt module, at module level or inside a function, is an arrow. A module's layer comes from its
path alone, so files added later are checked without editing this test:
  cli      wanrt/cli.py, wanrt/options.py, wanrt/__main__.py, any */cli.py or *_cli.py
  runtime  runtime/**      engines  engines/**      export  export/**      core  every other wanrt/*.py
tools/ and tests/ sit above everything and are not checked. No arrow may point to a higher layer, and the module
graph has no cycle (a package's __init__ importing its own submodules is not an arrow back).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "export", "engines", "runtime", "cli")
RANK = {name: i for i, name in enumerate(LAYERS)}
CLI_MODULES = {"wanrt.cli", "wanrt.options", "wanrt.__main__"}
UNCHECKED = ("wanrt.tools", "wanrt.tests")


def package_dirs() -> dict[str, Path]:
    """{"wanrt": ROOT/wanrt, "wanrt.export": ROOT/export, ...} from pyproject's package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {pkg: ROOT / d for pkg, d in mapping.items() if not pkg.startswith(UNCHECKED)}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out: dict[str, Path] = {}
    dirs = package_dirs()
    for pkg, d in dirs.items():
        for path in d.rglob("*.py"):
            rel = path.relative_to(d).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            sub = ".".join(parts)
            name = f"{pkg}.{sub}" if sub else pkg
            # a subpackage mapped on its own (wanrt.export) is found under its own dir, not wanrt/
            if pkg == "wanrt" and any(name == p or name.startswith(p + ".") for p in dirs if p != "wanrt"):
                continue
            out[name] = path
    return out


def layer(module: str) -> str:
    last = module.rsplit(".", 1)[-1]
    if module in CLI_MODULES or last == "cli" or last.endswith("_cli"):
        return "cli"
    for name in ("export", "engines", "runtime"):
        if module == f"wanrt.{name}" or module.startswith(f"wanrt.{name}."):
            return name
    return "core"


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported wanrt module, line) for every import statement in the file, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module if is_package else module.rsplit(".", 1)[0]
                pkg = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else base, node.lineno))
    return [(target, line) for target, line in out if target in known and target != module]


def graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    mods = modules()
    known = set(mods)
    return mods, {m: imports(m, p, known) for m, p in mods.items()}


def test_the_layer_map_sees_the_house():
    mods = modules()
    assert layer("wanrt.runtime.metrics_cli") == layer("wanrt.engines.cli") == layer("wanrt.options") == "cli"
    assert layer("wanrt.dit_io") == "core" and layer("wanrt.runtime.bench.run") == "runtime"
    for expected in ("wanrt.cli", "wanrt.dit_io", "wanrt.export.api", "wanrt.engines.build", "wanrt.runtime.backends"):
        assert expected in mods, expected
    assert {layer(m) for m in mods} == set(LAYERS)


def test_no_arrow_points_up():
    mods, edges = graph()
    upward = [f"{mods[m].relative_to(ROOT)}:{line} ({layer(m)}) imports {t} ({layer(t)})"
              for m, targets in edges.items() for t, line in targets if RANK[layer(t)] > RANK[layer(m)]]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def _cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring package -> own submodule arrows."""
    adj = {m: sorted({t for t, _ in ts if not t.startswith(m + ".")}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
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

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    _, edges = graph()
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_can_fail():
    """The checks above are only as good as the graph walk: a planted cycle and upward arrow are caught."""
    planted = {"wanrt.a": [("wanrt.b", 1)], "wanrt.b": [("wanrt.a", 2)], "wanrt.c": []}
    assert _cycles(planted) == [["wanrt.a", "wanrt.b"]]
    assert RANK[layer("wanrt.runtime.x")] > RANK[layer("wanrt.export.y")]


def test_backend_names_are_the_registry():
    """The Backend enum (CLI choices) and the runtime registry name the same backends."""
    from wanrt.choices import Backend
    from wanrt.runtime.backends import REGISTRY

    assert set(Backend.values()) == set(REGISTRY)
