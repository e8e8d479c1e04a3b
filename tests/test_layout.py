"""The floors of the code: nothing imports upward, and library code does not know the config's key names."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"sde": 0, "scoresde.data": 1, "models": 2, "solvers": 2, "scoresde.training": 3, "scoresde.evaluation": 3,
          "scoresde": 4, "scoresde.tasks": 5, "scoresde.cli": 6}
LIBRARY = ("sde", "scoresde.data", "models", "solvers", "scoresde.training", "scoresde.evaluation")
CONFIG_KEY = re.compile(r"\b(solver|train|loss|eval)\.[a-z_]|\b(sde|model|data|sample)\.[a-z_]+(\.[a-z_]+)*=")


def floor_of(module):
    """The package of FLOORS a dotted module name belongs to (the longest prefix), or None."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in FLOORS:
            return ".".join(parts[:k])
    return None


def modules(package):
    """The files of a package of FLOORS, without those of its subpackages that have a floor of their own."""
    root = ROOT / package.replace(".", "/")
    return sorted(p for p in root.rglob("*.py")
                  if floor_of(".".join(p.relative_to(ROOT).with_suffix("").parts)) == package)


def imported_packages(path):
    """The packages of FLOORS that a file imports (absolute imports; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(floor_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(floor_of(node.module))
    return names - {None}


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_package_imports_upward_or_sideways(package):
    for path in modules(package):
        for other in imported_packages(path) - {package}:
            assert FLOORS[other] < FLOORS[package], \
                f"{path.relative_to(ROOT)} imports {other} (floor {FLOORS[other]}) from floor {FLOORS[package]}"


def test_the_floors_cover_every_package():
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/*/__init__.py")}
    packages |= {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "benchmarks"} == set(FLOORS)


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
