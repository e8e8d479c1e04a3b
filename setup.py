"""The packages of an install: sde, solvers, models and scoresde, with the checkout's conf/ as scoresde/conf."""
from pathlib import Path

from setuptools import find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml")))

setup(
    packages=find_packages(include=["sde", "sde.*", "solvers", "solvers.*", "models", "models.*",
                                    "scoresde", "scoresde.*"])
    + ["scoresde.conf"] + [f"scoresde.conf.{group}" for group in GROUPS],
    package_dir={"scoresde.conf": "conf"},
    package_data={"scoresde.conf": ["*.yaml"], **{f"scoresde.conf.{group}": ["*.yaml"] for group in GROUPS}},
)
