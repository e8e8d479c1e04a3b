"""An install from the checkout, used from outside it: ``pip install .`` into a fresh environment adds exactly the
packages sde, solvers, models and scoresde, ships the configs inside scoresde, gives the ``score-sde`` command,
and a run it trains loads and samples through the installed front door."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_run import SMALL_MLP

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"sde", "solvers", "models", "scoresde"}

pytestmark = pytest.mark.slow


def tracked_files():
    """The checkout's files as git sees them (committed, or new and not ignored), without build leftovers."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def environment():
    """The environment of a user's shell: nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return {**env, "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtual environment that sees the system's packages (torch and the rest are not downloaded again), with
    the checkout copied file by file and installed into it (not editable). Its own pip is left out: the system's
    pip and setuptools build the wheel."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    for name in tracked_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", base / "venv"],
                   check=True)
    python = base / "venv" / "bin" / "python"
    proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", str(src)], capture_output=True, text=True, cwd=base,
                          env=environment(), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    away = base / "elsewhere"
    away.mkdir()
    return {"python": python, "bin": base / "venv" / "bin", "site": site, "cwd": away}


def python(venv, code):
    """``code`` run by the environment's interpreter in a folder outside the checkout."""
    proc = subprocess.run([venv["python"], "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=venv["cwd"], env=environment(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dist_info(venv):
    (found,) = venv["site"].glob("score_sde-*.dist-info")
    return found


def test_the_install_adds_exactly_four_packages(venv):
    info = dist_info(venv)
    assert set((info / "top_level.txt").read_text().split()) == PACKAGES
    tops = {line.split(",")[0].split("/")[0] for line in (info / "RECORD").read_text().splitlines()}
    tops = {t for t in tops if not t.endswith(".dist-info") and not t.startswith("..") and t != "__pycache__"}
    assert tops == PACKAGES


def test_the_packages_import_from_the_install_not_the_checkout(venv, installed):
    for file in installed:
        assert Path(file).resolve().is_relative_to(venv["site"].resolve()), file


def test_the_configs_are_inside_the_installed_package(venv):
    conf = Path(python(venv, "from scoresde.paths import config_dir; print(config_dir())").strip())
    assert conf == venv["site"].resolve() / "scoresde" / "conf"
    shipped = sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    for group in ("sde", "model", "data", "solver"):
        assert (conf / group).is_dir(), group


@pytest.fixture(scope="module")
def trained(venv, tmp_path_factory):
    """A 20-step run made by the installed ``score-sde`` command, or by the checkout's run.py while the command's
    module (scoresde.cli.main) does not exist yet; whether the command made it."""
    out = tmp_path_factory.mktemp("run") / "out"
    overrides = [f"hydra.run.dir={out}", "train.steps=20", "sample.num=100", "solver=dpm", "solver.steps=20",
                 *SMALL_MLP]
    command = (venv["site"] / "scoresde" / "cli" / "main.py").is_file()
    if command:
        args, env = [venv["bin"] / "score-sde", *overrides], environment()
    else:
        args, env = [sys.executable, ROOT / "run.py", *overrides], {**environment(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=venv["cwd"], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, command


def test_the_console_command_trains_a_run(venv, trained):
    assert (venv["bin"] / "score-sde").is_file()
    out, command = trained
    if not command:
        pytest.skip("scoresde.cli.main does not exist yet (the command-line package of another branch)")
    assert (out / "checkpoint.pt").is_file() and (out / "samples.npz").is_file()
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 20


@pytest.fixture(scope="module")
def installed(venv, trained):
    """One process of the environment's interpreter, outside the checkout (each start imports torch): it imports
    the four packages, then samples 100 points of the command's run through the installed front door; the
    packages' files."""
    out, _ = trained
    return json.loads(python(venv, f"""
        import json, models, scoresde, sde, solvers
        import torch
        pipe = scoresde.load({str(out)!r})
        x = pipe.sample(100, solver="dpm", steps=20)
        assert x.shape == (100, 2) and torch.isfinite(x).all(), x
        print(json.dumps([m.__file__ for m in (sde, solvers, models, scoresde)]))
    """))


def test_the_installed_front_door_samples_a_run(venv, installed):
    assert Path(installed[3]).resolve().is_relative_to(venv["site"].resolve())
