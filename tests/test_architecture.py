"""The shape of the code, checked: no import cycle, the training side works without TVM, and no
module or function grows past what a reader can hold (the import-linter contracts in
pyproject.toml are run by `make lint`)."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_gbd", "tvm_passes")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _cycle(graph) -> list | None:
    """One import cycle between modules of our packages, or None (iterative DFS)."""
    modules = sorted(m for m in graph.modules if m.startswith(PACKAGES))
    state = {}
    for start in modules:
        if start in state:
            continue
        stack = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c.startswith(PACKAGES)), None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
    return None


def test_no_import_cycle():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (
        ("lightning_gbd.a", "lightning_gbd.b"),
        ("lightning_gbd.b", "lightning_gbd.c"),
        ("lightning_gbd.c", "lightning_gbd.a"),
    ):
        graph.add_import(importer=a, imported=b)
    assert _cycle(graph) == ["lightning_gbd.a", "lightning_gbd.b", "lightning_gbd.c", "lightning_gbd.a"]


#: a child process in which TVM is not installed: every finder reports tvm, tvm_ffi and tvm_passes
#: as absent (``find_spec`` -> None), exactly what an environment without them looks like
WITHOUT_TVM = """
import importlib, pkgutil, sys
HIDDEN = ("tvm", "tvm_ffi", "tvm_passes")
class Hide:
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
assert importlib.util.find_spec("tvm") is None
import lightning_gbd
from lightning_gbd import GradualGroupSparsification, ForceRegularization, AtomicCheckpointIO, save_pt2
names = [m.name for m in pkgutil.walk_packages(lightning_gbd.__path__, "lightning_gbd.")]
for name in names:
    importlib.import_module(name)
assert not any(m.split(".")[0] in ("tvm", "tvm_passes") for m in sys.modules)
print(len(names))
"""


def test_training_side_imports_without_tvm():
    r = subprocess.run([sys.executable, "-c", WITHOUT_TVM], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) >= 15  # every module of the package was imported


def _sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions
