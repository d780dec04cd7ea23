"""Architecture: the import graph of src/ runs one way, and modules and functions stay small.

The graph is built with ``ast`` from every ``import`` (at module level, inside functions and
under ``TYPE_CHECKING``) and every lazy ``"edgecompress.module:Name"`` string reference (the
format and pass tables load classes that way), so a dependency cannot hide from it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "edgecompress"

# lowest first; a module may import its own layer or a lower one, never a higher one
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaf types", ("errors", "options", "forms", "_io", "registry", "signature", "_version",
                    "_extras", "_progress", "data", "report", "measure", "quant", "quant_recipe",
                    "structure", "onnx_utils", "models", "losses", "training", "metadata", "context",
                    "job", "fold", "targets", "_checkpoint", "_yaml", "_ecm_archive", "mean_ap", "detection")),
    ("runtime", ("runtime", "artifact", "ecm_file", "lm")),
    ("deployable", ("deployable",)),
    ("export", ("export",)),
    ("passes and pipeline", ("passes", "pipeline", "stages", "formats", "students", "convert")),
    ("facade", ("__init__", "__main__", "api", "cli", "compress", "demo", "plot", "select", "serve",
                "cli_options", "compress_flags", "recipe_schema")),
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PKG).rglob("*.py"))}


def _resolve(current: str, is_pkg: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in mods:
            return cand
    return None


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports (ast walk: also inside functions)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, is_pkg, node.level, node.module)
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            ref = node.value
            if ":" in ref and " " not in ref:
                mod = ref.split(":", 1)[0]
                if mod.startswith(".") and mod.lstrip("."):
                    level = len(mod) - len(mod.lstrip("."))
                    targets = [_resolve(name, is_pkg, level, mod.lstrip("."))]
                elif mod.startswith(PKG + "."):
                    targets = [mod]
        for t in targets:
            if t.startswith(PKG):
                m = _known(t, mods)
                if m and m != name:
                    found.add(m)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, mods) for n, p in mods.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one module (cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = "__init__" if parts == [PKG] else parts[1]
    if len(parts) == 2 and top == "__main__":
        top = "__main__"
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module} is in no layer of tests/test_architecture.py LAYERS; "
                         f"add it to the layer it belongs to")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep == PKG:
                bad.append(f"{mod} imports the facade package {dep}")
            elif layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} "
                           f"({LAYERS[layer_of(dep)][0]})")
    return bad


def test_every_module_has_a_layer():
    for mod in modules():
        layer_of(mod)


def test_import_graph_has_no_cycle():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_upward_import():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_graph_sees_function_level_and_string_imports(tmp_path):
    """The analyser itself: an import inside a function and a lazy string ref both count."""
    mods = modules()
    graph = import_graph()
    assert "edgecompress.errors" in graph["edgecompress.registry"]
    assert "edgecompress.runtime.ort" in graph["edgecompress.formats"]  # "module:Class" string
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .errors import ConfigError\n")
    assert imports_of("edgecompress.m", src, mods) == {"edgecompress.errors"}


def test_registry_is_a_leaf():
    assert import_graph()["edgecompress.registry"] == {"edgecompress.errors"}


def test_exporters_never_see_the_deployable_model():
    """Exporters get an ExportJob; none imports the DeployableModel (not even for type hints)."""
    graph = import_graph()
    reach = {m for m, deps in graph.items() if m.startswith("edgecompress.export")
             and "edgecompress.deployable" in deps}
    assert not reach, f"exporters importing the DeployableModel: {sorted(reach)}"


def test_no_module_over_400_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    over = {n: k for n, k in long.items() if k > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_over_50_lines():
    over = []
    for n, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    over.append(f"{n}.{node.name}: {length}")
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"


def test_every_public_name_resolves_in_a_fresh_process():
    code = ("import edgecompress as ec\n"
            "for n in ec.__all__ + ['targets', 'students', 'Distill']:\n"
            "    getattr(ec, n)\n"
            "ec.load; ec.passes.QuantizePTQ; ec.targets.get_target; ec.students.build\n")
    for extra in ("", "import edgecompress.students\n"):
        res = subprocess.run([sys.executable, "-c", extra + code], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]


if __name__ == "__main__":  # a summary for notes: python tests/test_architecture.py
    g = import_graph()
    cyc = strongly_connected(g)
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} edges, "
          f"{len(cyc)} cycles, largest {max((len(c) for c in cyc), default=0)} modules")
    for c in cyc:
        print("  cycle:", ", ".join(c))
    for b in upward_imports(g):
        print("  upward:", b)
    pytest.main([__file__, "-q", "-k", "lines"])
