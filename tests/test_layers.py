"""The house's one-way arrows, read from the source: core (wanrt/) <- export <- engines <- runtime <- commands.

Every `import` of a wanrt module, at module level or inside a function, is an arrow. A module's layer is its folder,
nothing else, so files added later are checked without editing this test:
  commands  commands/** (every click module)     runtime  runtime/**     engines  engines/**     export  export/**
  core      wanrt/** (wanrt/__main__.py, the interpreter's `python -m wanrt` entry, sits above every layer)
tools/ and tests/ sit above everything and are not checked. No arrow may point to a higher layer, and the module
graph has no cycle (a package's __init__ importing its own submodules is not an arrow back). Beside the arrows:
the torch-free modules never import torch, no `click.Choice([...])` literal outside the commands, and engine
flavour names only inside engines/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # the [dev] extra installs it on 3.10

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "export", "engines", "runtime", "commands")
RANK = {name: i for i, name in enumerate(LAYERS)}
ENTRY_POINTS = {"wanrt.__main__"}  # `python -m wanrt`: above every layer by what it is, not where it sits
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
    """The module's folder: wanrt.<folder>.* for the four upper layers, core for everything else in wanrt/."""
    if module in ENTRY_POINTS:
        return "commands"
    for name in ("export", "engines", "runtime", "commands"):
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
    assert {layer(f"wanrt.commands.{m}") for m in ("eval", "build", "options")} == {"commands"}
    assert layer("wanrt.dit_io") == "core" and layer("wanrt.runtime.bench.run") == "runtime"
    # a name no longer decides: a `cli.py` outside commands/ is in its folder's layer (and so may not import up)
    assert layer("wanrt.runtime.serving.cli") == "runtime" and layer("wanrt.export.extract_cli") == "export"
    for expected in ("wanrt.commands.main", "wanrt.dit_io", "wanrt.export.api", "wanrt.engines.trt.build",
                     "wanrt.runtime.backends"):
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
    from wanrt.runtime.backend_names import Backend
    from wanrt.runtime.backends import REGISTRY

    assert set(Backend.values()) == set(REGISTRY)


# ---------------------------------------------------------------------------------------------- beside the arrows
# Modules that the torch-free serving process and the manifests' readers load: importing any of them must not load
# torch (the serving layer starts in ~1 s and reads the I/O contract instead of copying it).
TORCH_FREE = ("wanrt.manifests", "wanrt.io_contract", "wanrt.jsonio", "wanrt.text", "wanrt.errors",
              "wanrt.runtime.serving.app", "wanrt.runtime.serving.requests", "wanrt.runtime.serving.front",
              "wanrt.runtime.serving.bodies", "wanrt.runtime.serving.job_store", "wanrt.runtime.serving.scheduler",
              "wanrt.runtime.serving.limits", "wanrt.runtime.serving.stacks", "wanrt.runtime.serving.catalog",
              "wanrt.runtime.schedule")
HEAVY = ("torch", "diffusers", "onnx", "onnxruntime", "transformers")
# the names of engine flavours and of the backends they bring: spelled only inside engines/ (the registry hands
# them to everyone else)
FLAVOUR_NAMES = {"tensorrt", "rtx", "openvino", "ov", "trt"}


def load_time_imports(path: Path) -> set[str]:
    """Top-level names of every module imported when the file is imported (function bodies excluded)."""
    out: set[str] = set()
    stack = list(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return out


def heavy_reached(start: str, load_imports: dict[str, set[str]]) -> list[str]:
    """'a -> b -> torch' for every heavy library the module loads, following wanrt modules at load time."""
    seen, queue, found = {start}, [(start, [start])], []
    while queue:
        mod, via = queue.pop(0)
        for target in sorted(load_imports.get(mod, ())):
            if target.split(".")[0] in HEAVY:
                found.append(" -> ".join([*via, target]))
            elif target in load_imports and target not in seen:
                seen.add(target)
                queue.append((target, [*via, target]))
    return found


def test_torch_free_modules_never_load_torch():
    mods = modules()
    load_imports = {m: load_time_imports(p) for m, p in mods.items()}
    missing = [m for m in TORCH_FREE if m not in mods]
    assert not missing, f"listed torch-free but not in the tree: {missing}"
    reached = [chain for m in TORCH_FREE for chain in heavy_reached(m, load_imports)]
    assert not reached, "torch-free modules that load a heavy library:\n" + "\n".join(reached)


def test_torch_free_check_can_fail():
    """A planted `import torch` two modules down is found, with its path."""
    planted = {"wanrt.manifests": {"wanrt.video_shape"}, "wanrt.video_shape": {"wanrt.helper"},
               "wanrt.helper": {"torch.nn"}}
    assert heavy_reached("wanrt.manifests", planted) == ["wanrt.manifests -> wanrt.video_shape -> wanrt.helper "
                                                         "-> torch.nn"]


def choice_literals(source: str) -> list[int]:
    """Lines of `click.Choice([...])` / `click.Choice((...))` literals: choices come from one vocabulary."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Choice"
                and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))):
            out.append(node.lineno)
    return out


def flavour_literals(source: str) -> list[int]:
    """Lines of string constants that are a flavour or flavour-backend name (docstrings are prose, not code)."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value in FLAVOUR_NAMES and id(n) not in docstrings]


def test_no_choice_literals_outside_commands_and_no_flavour_names_outside_engines():
    choices, flavours = [], []
    for m, path in modules().items():
        source = path.read_text(encoding="utf-8")
        if layer(m) != "commands":
            choices += [f"{path.relative_to(ROOT)}:{ln}" for ln in choice_literals(source)]
        if layer(m) != "engines":
            flavours += [f"{path.relative_to(ROOT)}:{ln}" for ln in flavour_literals(source)]
    assert not choices, "click.Choice literals outside commands/:\n" + "\n".join(choices)
    assert not flavours, "flavour names outside engines/ (ask the registry):\n" + "\n".join(flavours)


def test_literal_checks_can_fail():
    assert choice_literals('import click\nx = click.Choice(["a", "b"])\n') == [2]
    assert flavour_literals('"""openvino is prose here"""\nif name == "ov":\n    pass\n') == [2]


def local_wanrt_imports(source: str) -> list[int]:
    """Lines of imports of wanrt inside a function with no comment on them: imports belong at module level, and a
    lazy one says why on its own line (`# lazy: torch, kept out of the serve driver`)."""
    lines, out = source.splitlines(), []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            if (relative or any(n.split(".")[0] == "wanrt" for n in names)) and not any(
                    "#" in ln for ln in lines[node.lineno - 1:node.end_lineno]):
                out.append(node.lineno)
    return sorted(set(out))


def test_function_local_wanrt_imports_only_in_commands_or_with_a_reason():
    found = [f"{path.relative_to(ROOT)}:{ln}" for m, path in modules().items() if layer(m) != "commands"
             for ln in local_wanrt_imports(path.read_text(encoding="utf-8"))]
    assert not found, "function-local wanrt imports without a `# lazy: why` comment:\n" + "\n".join(found)


def test_local_import_check_can_fail():
    planted = ("from wanrt.errors import WanrtError\n\ndef f():\n    from wanrt.dit_io import DitIO\n"
               "    import torch  # a third-party library is not this rule's\n"
               "    from wanrt.export import api  # lazy: torch\n    return DitIO\n")
    assert local_wanrt_imports(planted) == [4]
