"""The Python front door: the README's snippet, run as written on a trained run, gives what run.py gives."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresde
from models import MixtureScore
from scoresde.data import DataSpec, GaussianMixture
from sde import CheckpointError, ConfigError, VESDE, VPSDE
from test_run import SMALL_MLP, run_main as run

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet():
    """The README's Python block that starts with ``import scoresde``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    snippet = [b for b in blocks if b.startswith("import scoresde")]
    assert len(snippet) == 1, "the README shows the front door once"
    return snippet[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run of the README's command, in the folder the snippet reads."""
    cwd = tmp_path_factory.mktemp("frontdoor")
    out = cwd / "outputs" / "checkerboard"
    proc = run(out, "train.steps=200", "solver=dpm", "solver.steps=20", "sample.num=2000", *SMALL_MLP)
    assert proc.returncode == 0, proc.stderr
    return cwd, out


def test_readme_snippet_is_short():
    lines = [line for line in readme_snippet().splitlines() if line.strip()]
    assert len(lines) <= 6


@pytest.mark.slow
def test_readme_snippet_runs_and_matches_run_py(trained, monkeypatch):
    cwd, out = trained
    monkeypatch.chdir(cwd)
    scope = {}
    exec(compile(readme_snippet(), "README.md", "exec"), scope)  # noqa: S102 - the documented code, as written
    pipe, x, nll = scope["pipe"], scope["x"], scope["nll"]
    assert type(scope["sde"]).__name__ == "VPSDE" and scope["model"] is pipe.model
    assert pipe.step == 200 and pipe.data.shape == (2,)
    assert x.shape == (2000, 2) and torch.isfinite(x).all()
    # run.py sampled the same seed with the same solver: the same points
    assert np.allclose(x.cpu().numpy(), np.load(out / "samples.npz")["x"], atol=1e-5)
    assert torch.equal(pipe.sample(2000), x) and pipe.solver().steps == 20  # the run's own solver by default
    assert nll.shape == (100,) and torch.isfinite(nll).all()
    assert np.isfinite(pipe.bits_per_dim(nll))


@pytest.mark.slow
def test_load_takes_a_run_directory_or_its_checkpoint(trained):
    _, out = trained
    by_dir, by_file = scoresde.load(out, device="cpu"), scoresde.load(out / "checkpoint.pt", device="cpu")
    x = torch.randn(5, 2)
    t = torch.full((5,), 0.5)
    assert torch.equal(by_dir.model(x, t), by_file.model(x, t))
    raw = scoresde.load(out, device="cpu", ema=False)
    assert not torch.equal(raw.model(x, t), by_dir.model(x, t))


def test_the_nll_of_the_front_door_is_exact_on_the_oracle():
    sde = VESDE()
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.5], [1, 3])
    pipe = scoresde.Pipeline(sde, MixtureScore(sde, mix), mix, device="cpu")
    x = mix.sample(200, torch.Generator().manual_seed(0), dtype=torch.float64)
    nll = pipe.nll(x)
    assert (nll.mean() - (-mix.log_prob(x).mean())).abs() / 2 < 0.01


def test_a_loaded_run_samples_with_its_own_solver_by_default():
    """A pipeline whose config records a solver (as a loaded checkpoint's does) samples with it, options on top;
    without one the default is DPM-Solver's."""
    sde = VPSDE()
    mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.5], [1, 3])
    recorded = {"solver": {"_target_": "solvers.DDIM", "steps": 7, "eps": None, "denoise": False,
                           "grid": {"_target_": "solvers.grids.UniformTime"}}}
    pipe = scoresde.Pipeline(sde, MixtureScore(sde, mix), mix, device="cpu", config=recorded)
    assert type(pipe.solver()).__name__ == "DDIM" and pipe.solver().steps == 7
    assert pipe.solver(steps=3).steps == 3 and type(pipe.solver(steps=3).grid).__name__ == "UniformTime"
    x, stats = pipe.sample(50, info=True)
    assert stats["nfe"] == 7
    assert torch.equal(x, pipe.sample(50, solver=pipe.solver()))
    with pytest.raises(ConfigError, match="^order=2 is not an option of the solver this model was trained to sample "
                                          "with \\(solvers.DDIM\\): its options are steps, eps, denoise, grid"):
        pipe.sample(5, order=2)
    bare = scoresde.Pipeline(sde, MixtureScore(sde, mix), mix, device="cpu")
    assert type(bare.solver()).__name__ == "DPMSolver" and bare.solver().steps == 60


def test_bits_per_dim_reads_8_bit_data_on_their_scale():
    pipe = scoresde.Pipeline(VPSDE(), None, DataSpec((1, 8, 8), levels=256, value_range=(-1, 1)))
    assert pipe.bits_per_dim(torch.zeros(3)) == pytest.approx(7.0)


@pytest.mark.slow
def test_bad_input_to_the_front_door_is_a_config_error(trained, tmp_path):
    _, out = trained
    with pytest.raises(CheckpointError, match="does not exist"):
        scoresde.load(tmp_path / "nothing")
    pipe = scoresde.load(out, device="cpu")
    with pytest.raises(ConfigError, match="solver='rk45' is unknown: choose one of"):
        pipe.sample(10, solver="rk45")
    with pytest.raises(ConfigError, match="^steps=0 is invalid"):
        pipe.sample(10, solver="dpm", steps=0)
    with pytest.raises(ConfigError, match="^method='foo' is unknown"):
        pipe.nll(torch.zeros(3, 2), method="foo")
    with pytest.raises(ConfigError, match="num=0 is invalid"):
        pipe.sample(0)
    with pytest.raises(ConfigError, match="device='tpu' is unknown"):
        scoresde.load(out, device="tpu")


@pytest.mark.slow
def test_a_checkpoint_without_its_config_says_so(trained, tmp_path):
    _, out = trained
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["meta"] = {}
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="does not record its sde, model and data shape"):
        scoresde.load(tmp_path / "old.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 200


@pytest.mark.slow
def test_a_checkpoint_with_non_finite_weights_is_refused(trained, tmp_path):
    _, out = trained
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    next(iter(state["ema"]["shadow"].values())).fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="holds non-finite EMA weights"):
        scoresde.load(tmp_path / "nan.pt")
    assert scoresde.load(tmp_path / "nan.pt", ema=False).step == 200
