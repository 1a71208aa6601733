"""The repository's layering (docs/architecture.md): library packages never import the commands
(`tools/`, the root scripts), `utils/` imports no other package of the repo, module imports form
no cycle, and no file edits `sys.path` to find the repo (the editable install does that)."""
import ast
from pathlib import Path
from typing import Dict, Iterable, List, Set

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("configs", "models", "transport", "datasets", "tokenizer", "utils", "training", "evaluation",
           "sampling")
COMMANDS = ("tools", "train", "train_tokenizer", "train_semvae", "inference", "extract_features")
PROJECT = LIBRARY + COMMANDS


def imported_modules(source: str, module: str) -> Set[str]:
    """Absolute names of every module `source` imports, at any depth (function-level too)."""
    names: Set[str] = set()
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def python_files(roots: Iterable[str]) -> List[Path]:
    files = []
    for root in roots:
        path = REPO / root
        files += sorted(path.rglob("*.py")) if path.is_dir() else [REPO / f"{root}.py"]
    return [f for f in files if f.is_file()]


def top(name: str) -> str:
    return name.split(".")[0]


def violations(files: Iterable[Path], forbidden: Iterable[str]) -> List[str]:
    forbidden = set(forbidden)
    out = []
    for path in files:
        for name in imported_modules(path.read_text(), module_name(path)):
            if top(name) in forbidden:
                out.append(f"{path.relative_to(REPO)} imports {name}")
    return out


def test_checker_catches_a_library_import_of_tools():
    bad = "def f():\n    from tools.adm_evaluator import main\n"
    assert "tools.adm_evaluator" in imported_modules(bad, "models.lightningdit")
    assert top("tools.adm_evaluator") in COMMANDS
    assert "train" in {top(n) for n in imported_modules("import train\n", "datasets.toy")}
    assert "models.build" in imported_modules("from ..build import x\n", "models.sub.mod") or \
        "models.build" in imported_modules("from .build import x\n", "models.ema")


@pytest.mark.parametrize("package", LIBRARY)
def test_library_never_imports_commands(package):
    assert violations(python_files([package]), COMMANDS) == []


def test_utils_is_a_leaf():
    assert violations(python_files(["utils"]), [p for p in PROJECT if p != "utils"]) == []


def test_no_import_cycles():
    files = python_files(PROJECT)
    modules = {module_name(f): f for f in files}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in imported_modules(path.read_text(), name):
            # `from pkg import mod` names pkg.mod; keep the longest prefix that is a module here
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                deps.add(imported)
        graph[name] = deps
    # a package's __init__ importing its own submodules is not a cycle worth reporting
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_no_sys_path_edits():
    offenders = [str(p.relative_to(REPO)) for p in python_files(PROJECT + ("docs",))
                 if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]
    assert offenders == []
