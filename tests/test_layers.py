"""The shape of lib/: packages by concern, imports one way, no cycles, no model folder.

Every `import lib...` statement (module level or inside a function) is read
with ast, so a lazy import counts the same as a top-level one. The layers are
those of docs/architecture.md; a module may import its own layer or any lower.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
MODEL_FOLDERS = ("lenet5", "resnet18", "resnet50", "gpt2")

# lowest first; a name is a top-level module of lib or a package (all its modules)
LAYERS = (
    ("lib", "errors", "jsonio", "names", "lifeline", "spec"),
    ("optim", "pruning", "data", "nn", "gpu_monitor", "trackers", "provenance", "variant_budgets", "models"),
    ("config", "upstream_aliases"),
    ("matrix",),
    ("run",),
    ("train",),
    ("results",),
    ("report",),
    ("reproduce",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_TOP_LEVEL_MODULES = 12


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "lib"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            # `from lib.run import runner`: the submodule is what is imported
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if (LIB.parent / (node.module + "." + alias.name).replace(".", "/")).with_suffix(".py").is_file()]
    return found


LIB_FILES = sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)
GRAPH = {_module_name(p): {m for _, m in _imports(p) if m == "lib" or m.startswith("lib.")} for p in LIB_FILES}


def test_every_lib_module_has_a_layer():
    assert not [m for m in GRAPH if _layer(m) not in RANK]


def test_lib_never_imports_a_model_folder():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in LIB_FILES for line, m in _imports(p)
           if m.split(".")[0] in MODEL_FOLDERS]
    assert not bad, "\n".join(bad)


def test_imports_only_go_down():
    bad = [f"{p.relative_to(ROOT)}:{line}: {_layer(_module_name(p))} imports {m} ({_layer(m)})"
           for p in LIB_FILES for line, m in _imports(p)
           if m.startswith("lib.") and _layer(m) in RANK and RANK[_layer(m)] > RANK[_layer(_module_name(p))]]
    assert not bad, "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    # a package's __init__ is imported with each of its modules; that edge is not a cycle
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in GRAPH.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_lib_has_few_top_level_modules():
    modules = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


@pytest.mark.parametrize("package", sorted({p.parent.name for p in LIB_FILES if p.parent != LIB}))
def test_every_package_says_what_it_holds(package):
    init = LIB / package / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"lib/{package}/__init__.py"
