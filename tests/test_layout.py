"""The floors of the code: nothing imports upward or in a circle, and library code does not know the config's
key names."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"sde": 0, "scoresde.paths": 0, "scoresde.data": 1, "models": 2, "solvers": 2, "scoresde.training": 3,
          "scoresde.evaluation": 3, "scoresde.inputs": 3.5, "scoresde": 4.5, "scoresde.pipeline": 4, "scoresde.tasks": 5,
          "scoresde.cli": 6,
          "run": 7, "benchmarks": 7}
"""The floor of each package (``scoresde`` itself: its ``__init__``, the front door's lazy re-export); a module may
import only from lower floors or from its own package."""
LIBRARY = ("sde", "scoresde.data", "models", "solvers", "scoresde.training", "scoresde.evaluation")
CONFIG_KEY = re.compile(r"\b(solver|train|loss|eval)\.[a-z_]|\b(sde|model|data|sample)\.[a-z_]+(\.[a-z_]+)*=")
SOURCES = ("sde", "solvers", "models", "scoresde", "benchmarks", "run.py")

KNOWN = {}
"""Violations of today's code, each with its reason; delete an entry when it is fixed (a test says so)."""


def floor_of(module):
    """The entry of FLOORS a dotted module name belongs to (the longest prefix), or None."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in FLOORS:
            return ".".join(parts[:k])
    return None


def module_files():
    """Every module of SOURCES by its dotted name (a package by its ``__init__``)."""
    files = {}
    for source in SOURCES:
        for path in sorted([ROOT / source] if source.endswith(".py") else (ROOT / source).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


FILES = module_files()


def modules(package):
    """The files whose floor is ``package``'s (not those of its parts that have a floor of their own)."""
    return [path for name, path in sorted(FILES.items()) if floor_of(name) == package]


def known(name):
    """The longest prefix of a dotted name that is one of our modules, or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in FILES:
            return ".".join(parts[:k])
    return None


def imports(name):
    """The modules of ours that module ``name`` imports, anywhere in its body (relative imports resolved)."""
    path = FILES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:
                found.add(known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in FILES else known(base))
    return found - {None, name}


GRAPH = {name: imports(name) for name in FILES}


def upward(graph=GRAPH):
    """'A -> B' for each import of a module B whose floor is not below A's (other than A's own package)."""
    out = set()
    for name, targets in graph.items():
        mine = floor_of(name)
        for target in targets:
            theirs = floor_of(target)
            if theirs != mine and FLOORS[theirs] >= FLOORS[mine]:
                out.add(f"{name} -> {target}")
    return out


def circles(graph=GRAPH):
    """'cycle: A -> B -> ... -> A' for each strongly connected group of modules (Tarjan), named by its first
    member in sorted order and a shortest circle through it."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w), group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = set()
    for group in groups:
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(graph[path[-1]] & group)
            if start in nxt:
                out.add("cycle: " + " -> ".join(path + [start]))
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w), paths.append(path + [w])
    return out


@pytest.mark.parametrize("package", sorted(k for k in FLOORS if modules(k)))
def test_no_module_imports_upward_or_sideways(package):
    bad = sorted(edge for edge in upward() - set(KNOWN) if floor_of(edge.split(" -> ")[0]) == package)
    assert not bad, "imports from the same or a higher floor:\n" + "\n".join(
        f"{edge} (floor {FLOORS[floor_of(edge.split(' -> ')[1])]} from {FLOORS[package]})" for edge in bad)


def test_no_modules_import_each_other_in_a_circle():
    bad = sorted(circles() - set(KNOWN))
    assert not bad, "import circles:\n" + "\n".join(bad)


def test_the_checks_find_circles_and_upward_imports():
    graph = {"sde": {"models"}, "models": {"solvers.fast"}, "solvers.fast": {"solvers.grids"},
             "solvers.grids": {"solvers.fast"}, "solvers": {"sde"}}
    assert circles(graph) == {"cycle: solvers.fast -> solvers.grids -> solvers.fast"}
    assert upward(graph) == {"sde -> models", "models -> solvers.fast"}


def test_every_known_violation_is_still_there():
    """An entry of KNOWN that no longer occurs has been fixed: delete it."""
    assert not sorted(set(KNOWN) - upward() - circles())


def test_every_module_has_a_floor_and_every_package_is_named():
    assert not [name for name in FILES if floor_of(name) is None]
    packages = {name for name, path in FILES.items() if path.name == "__init__.py"}
    assert not sorted(packages - set(FLOORS)), "a new package needs its floor in FLOORS"


@pytest.mark.parametrize("package", LIBRARY)
def test_library_messages_do_not_name_config_keys(package):
    """Messages name a parameter by its own name; where it was configured is added by whoever built it."""
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not CONFIG_KEY.search(node.value), f"{path.relative_to(ROOT)}: {node.value!r}"


def test_data_sets_are_classes():
    import scoresde.data

    for name in scoresde.data.__all__:
        obj = getattr(scoresde.data, name)
        assert isinstance(obj, type) and issubclass(obj, scoresde.data.DataSet), name
