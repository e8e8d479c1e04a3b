"""The floors of the code: nothing imports upward, and library code does not know the config's key names."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"sde": 0, "scoredata": 1, "models": 2, "solvers": 2, "training": 3, "evaluation": 3, "scoresde": 4}
LIBRARY = ("sde", "scoredata", "models", "solvers", "training", "evaluation")
CONFIG_KEY = re.compile(r"\b(solver|train|loss|eval)\.[a-z_]|\b(sde|model|data|sample)\.[a-z_]+(\.[a-z_]+)*=")


def modules(package):
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path):
    """Top-level names of our packages that a file imports (absolute imports; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_package_imports_upward_or_sideways(package):
    for path in modules(package):
        for other in imported_packages(path) - {package}:
            assert FLOORS[other] < FLOORS[package], \
                f"{path.relative_to(ROOT)} imports {other} (floor {FLOORS[other]}) from floor {FLOORS[package]}"


def test_the_floors_cover_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(FLOORS)


@pytest.mark.parametrize("package", LIBRARY)
def test_library_messages_do_not_name_config_keys(package):
    """Messages name a parameter by its own name; where it was configured is added by whoever built it."""
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not CONFIG_KEY.search(node.value), f"{path.relative_to(ROOT)}: {node.value!r}"


def test_data_sets_are_classes():
    import scoredata

    for name in scoredata.__all__:
        obj = getattr(scoredata, name)
        assert isinstance(obj, type) and issubclass(obj, scoredata.DataSet), name
