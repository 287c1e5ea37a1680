"""The package's shape, read from its source: layers only point down, no import cycle, small modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tokentrim_cli"

# top to bottom; a module may import its own layer (without a cycle) and the layers below it
LAYERS = [
    ("command", ["cli", "__main__"]),
    ("batch", ["batch"]),
    ("job", ["run.job", "config.loading", "planner"]),
    ("run parts", ["run", "output", "live", "metrics", "toy", "config.notices", "evaluate"]),
    ("methods and presets", ["pruning", "config.presets"]),
    ("engine", ["engine"]),
    ("leaves", ["config", "config.settings", "config.checks", "errors", "signals", "startup", "run.timeline", "inputs",
                "__init__"]),
]


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """The layer of the longest prefix that names ``module`` (``run.timeline`` is a leaf, the rest of ``run`` not)."""
    name = module.removesuffix(".__init__")
    found = [(len(p), rank) for rank, (_, prefixes) in enumerate(LAYERS)
             for p in prefixes if name == p or name.startswith(p + ".")]
    if not found:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")
    return max(found)[1]


def imports(module: str, path: Path) -> set[str]:
    """Modules of the package that ``module`` imports anywhere (deferred imports inside functions count)."""
    package = module.split(".")[:-1]  # for a package's __init__, the package itself
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("tokentrim_cli"):
                target = node.module.removeprefix("tokentrim_cli").lstrip(".")
            else:
                continue
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            hits = [n for n in names if n in known or f"{n}.__init__" in known]
            found.update(hits or [target or "__init__"])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tokentrim_cli."):
                    found.add(a.name.removeprefix("tokentrim_cli."))
    return {m if m in known else f"{m}.__init__" for m in found if m != module} & set(known)


def graph() -> dict[str, set[str]]:
    return {m: imports(m, p) for m, p in modules().items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
            for m, targets in sorted(g.items()) for t in sorted(targets) if layer(t) < layer(m)]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [m, t] if t in stack else [m, t]
            if t not in state and (found := visit(t, stack + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_layers_only_point_down():
    assert not upward(graph())


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def test_the_checks_catch_what_they_are_for():
    g = graph()
    assert "run.job" in g["batch.run"] and "engine.cache" in g["pruning"]  # deferred and relative imports are read
    assert upward({"batch.run": {"cli"}}) == ["batch.run (batch) imports cli (command)"]  # the cycle issue 22 fixed
    assert find_cycle({"batch.run": {"cli"}, "cli": {"batch.run"}}) == ["batch.run", "cli", "batch.run"]


MAX_BODY_LINES = 60  # a function's statements, its signature and docstring not counted


def long_functions() -> dict[str, int]:
    """Functions of the package whose body (after the docstring) is longer than MAX_BODY_LINES."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if body and (lines := body[-1].end_lineno - body[0].lineno + 1) > MAX_BODY_LINES:
                found[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    return found


def test_functions_stay_short():
    assert not long_functions()


def test_ruff_complexity_and_argument_rules():
    """pyproject.toml's [tool.ruff.lint]: complexity (C901), arguments (PLR0913), statements (PLR0915); the few
    exceptions carry a noqa with their reason."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(PACKAGE)], capture_output=True,
                          text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
