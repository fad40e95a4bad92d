"""The code's shape, checked: import layers without cycles, and a training core that reads in screens."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reslab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The reslab modules ``path`` imports (at module level only, or anywhere in it)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type hints only are no dependency at run time
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, top_level_only) - {_module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_imports_have_no_cycles():
    # Lazy imports (inside functions) count: they hide a cycle from Python, not from the reader.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _graph(top_level_only=False).items()}
    graph = {m: {d for d in deps if d != "reslab"} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_layers_point_one_way():
    graph = _graph(top_level_only=False)  # lazy imports count too
    for module, deps in graph.items():
        if module not in ("reslab.__main__", "reslab.entry"):  # the entry points are the ones that may
            assert "reslab.cli" not in deps, f"{module} imports the CLI"
        if module.startswith(("reslab.models", "reslab.data")) or module in (
                "reslab.checkpoint", "reslab.predict", "reslab.export", "reslab.inference", "reslab.fileio"):
            assert not any(d.startswith("reslab.train") for d in deps), f"{module} imports train/: {sorted(deps)}"
            assert not any(d.startswith("reslab.analysis") for d in deps), f"{module} imports analysis/"


def test_no_training_function_is_longer_than_a_screen():
    for path in (PACKAGE / "train").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path.name}:{node.lineno} {node.name} is {length} lines"
