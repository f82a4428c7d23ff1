"""The package's shape (docs/architecture.md): layers that only point down, no import circle, no
source file over 800 lines, no function over 60 lines of code, imports inside functions only with a
reason. Read from the source with ``ast``, so a new module is checked the day it is added."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import lrpo

PACKAGE = Path(lrpo.__file__).parent

# Bottom to top. A module's layer is that of the longest prefix listed; a module may import from a
# lower layer, or from its own layer when both sit in the same package (``lrpo.rl.*``) or both are
# foundation modules. The same table, in words, is docs/architecture.md's.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("lrpo", "lrpo.optional", "lrpo.torch_floor", "lrpo.manifest", "lrpo.faults", "lrpo.memory",
                    "lrpo.distributed", "lrpo.engine", "lrpo.ema", "lrpo.precision", "lrpo.weights", "lrpo.fetch",
                    "lrpo.checkpoint", "lrpo.model_files", "lrpo.outputs", "lrpo.runlog", "lrpo.runs")),
    ("config", ("lrpo.config",)),
    ("primitives", ("lrpo.data", "lrpo.diffusion", "lrpo.nets")),
    ("degradation", ("lrpo.degradation",)),
    ("models", ("lrpo.rewards", "lrpo.policies")),
    ("scoring", ("lrpo.eval",)),
    ("workflows", ("lrpo.rl", "lrpo.pretrain", "lrpo.inference")),
    ("evaluation", ("lrpo.eval.evaluate", "lrpo.eval.report", "lrpo.eval.cli")),
    ("apps", ("lrpo.quickstart", "lrpo.demo", "lrpo.standins")),
    ("entry", ("lrpo.cli",)),  # the command line: dispatches to every app and workflow
]
MAX_FILE_LINES = 800
MAX_FUNCTION_CODE_LINES = 60
# modules that name higher modules as strings and import them on demand: registries whose entries
# live with the code that uses them (allowed, and nothing else may do it)
NAMED_LOADS = {
    "lrpo.weights": "the model-file catalogue: `lrpo weights list` imports the modules that register their files",
    "lrpo.faults": "test tooling: LRPO_FAULT_AT wraps the trainers' seams by name to kill a run at a chosen point",
}
# why an import may sit inside a function: an optional package, or the start-up time of a command
INNER_IMPORT_REASONS = ("optional", "start-up", "startup", "lazy")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    top_level: bool
    text: str


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The lrpo modules an import statement loads (the deepest known module of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if is_package else module.rpartition(".")[0]
        if node.level:
            base = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
            stem = f"{base}.{node.module}" if node.module else base
        else:
            stem = node.module or ""
        names = [f"{stem}.{a.name}" for a in node.names]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("lrpo"):
            found.append(name)
    return found


def import_edges() -> list[Edge]:
    files = source_files()
    known = set(files)
    edges = []
    for module, path in files.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, path.name == "__init__.py", known):
                    if target != module:
                        edges.append(Edge(module, target, node.lineno, id(node) in top, lines[node.lineno - 1].strip()))
    return edges


def named_module_edges() -> list[Edge]:
    """Modules named by a string constant (``importlib.import_module`` lists), docstrings excepted."""
    files = source_files()
    edges = []
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in files and node.value != module and id(node) not in docstrings:
                edges.append(Edge(module, node.value, node.lineno, True, repr(node.value)))
    return edges


def layer_of(module: str) -> tuple[int, str]:
    best, where = -1, (-1, "")
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, where = len(prefix), (index, prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")
    return where


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def allowed(source: str, target: str) -> bool:
    (ls, _), (lt, _) = layer_of(source), layer_of(target)
    if lt < ls:
        return True
    return lt == ls and (unit_of(source) == unit_of(target) or LAYERS[ls][0] == "foundation")


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def code_lines(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function that hold code: no docstring, blank line or comment."""
    body = node.body
    first = body[0]
    has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    start = first.end_lineno + 1 if has_doc else first.lineno
    return sum(1 for line in lines[start - 1 : node.end_lineno] if line.strip() and not line.strip().startswith("#"))


# --------------------------------------------------------------------------------------------
# the checks on this package
# --------------------------------------------------------------------------------------------
def test_every_module_has_a_layer():
    for module in source_files():
        layer_of(module)


def test_no_import_circle():
    assert cycles(import_edges()) == []


def test_imports_point_down_the_layers():
    bad = [f"{e.source} (line {e.line}) -> {e.target}: {LAYERS[layer_of(e.source)[0]][0]} may not import "
           f"{LAYERS[layer_of(e.target)[0]][0]}" for e in import_edges() if not allowed(e.source, e.target)]
    assert bad == []


def test_modules_named_as_strings_point_down_too():
    bad = [f"{e.source} (line {e.line}) names {e.target}" for e in named_module_edges()
           if not allowed(e.source, e.target) and e.source not in NAMED_LOADS]
    assert bad == []
    # the exceptions are real (a stale entry would hide nothing)
    assert {e.source for e in named_module_edges() if not allowed(e.source, e.target)} == set(NAMED_LOADS)


def test_no_source_file_over_800_lines():
    long = {m: len(p.read_text().splitlines()) for m, p in source_files().items()}
    assert {m: n for m, n in long.items() if n > MAX_FILE_LINES} == {}


def test_no_function_over_60_lines_of_code():
    long = []
    for module, path in source_files().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(lines, node) > MAX_FUNCTION_CODE_LINES:
                long.append(f"{module}.{node.name} ({code_lines(lines, node)} lines)")
    assert long == []


def test_imports_of_lrpo_modules_inside_functions_say_why():
    # an lrpo module imported inside a function hides a dependency; the few that must (start-up
    # time of `lrpo --help`) say so on the line
    hidden = [f"{e.source}:{e.line}: {e.text}" for e in import_edges()
              if not e.top_level and not any(r in e.text.lower() for r in INNER_IMPORT_REASONS)]
    assert hidden == []


def test_tests_mirror_the_package():
    # tests/<folder>/ holds the tests of src/lrpo/<folder>/ (bench/: of the benchmark scripts);
    # the tests of top-level modules and of the whole (layout, docs, hostile files) sit in tests/
    tests = Path(__file__).parent
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - packages - {"bench"} == set()
    for test in tests.glob("test_*.py"):
        subject = test.stem.removeprefix("test_")
        assert subject not in packages, f"{test.name} tests the package {subject}: move it to tests/{subject}/"


# --------------------------------------------------------------------------------------------
# the checks themselves, on made-up graphs (they must be able to fail)
# --------------------------------------------------------------------------------------------
def test_cycles_finds_a_circle_and_nothing_in_a_chain():
    chain = [Edge("a", "b", 1, True, ""), Edge("b", "c", 1, True, "")]
    assert cycles(chain) == []
    circle = chain + [Edge("c", "a", 1, True, "")]
    assert cycles(circle) == [["a", "b", "c"]]


@pytest.mark.parametrize("source, target, ok", [
    ("lrpo.rl.trainer", "lrpo.policies.loading", True),  # workflows -> models: down
    ("lrpo.rl.trainer", "lrpo.inference.restorer", False),  # siblings in one layer
    ("lrpo.config", "lrpo.rl.losses", False),  # up
    ("lrpo.eval.metrics", "lrpo.eval.evaluate", False),  # scoring -> evaluation: up inside one package
    ("lrpo.eval.evaluate", "lrpo.inference.restorer", True),
    ("lrpo.checkpoint", "lrpo.manifest", True),  # foundation modules among themselves
    ("lrpo.policies.latent", "lrpo.rewards.clip_models", False),
])
def test_layer_rule(source, target, ok):
    assert allowed(source, target) is ok


def test_code_lines_skip_docstring_comments_and_blanks():
    src = 'def f():\n    """doc\n    more"""\n    # note\n\n    a = 1\n    return a\n'
    node = ast.parse(src).body[0]
    assert code_lines(src.splitlines(), node) == 2  # `a = 1`, `return a`
