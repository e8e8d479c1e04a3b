"""run.py end to end: composition by group, outputs, a user's own SDE, and one-line errors."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *overrides, cwd=None):
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={tmp_path}", *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=300)


def test_oracle_ode_likelihood_writes_all_outputs(tmp_path):
    proc = run(tmp_path, "model=oracle", "data=gmm", "solver=ode", "likelihood=true", "sample.num=1000",
               "eval.num=300")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("nfe_sample", "sample_seconds", "nll", "bpd", "nfe_likelihood", "likelihood_seconds", "exact_nll"):
        assert key in metrics
    assert metrics["device"] == "cpu" or metrics["device"].startswith("cuda")
    assert abs(metrics["nll"] - metrics["exact_nll"]) / 2 < 0.01
    assert metrics["bpd"] == pytest.approx(metrics["nll"] / 2 / np.log(2))
    samples = np.load(tmp_path / "samples.npz")["x"]
    assert samples.shape == (1000, 2)
    lik = np.load(tmp_path / "likelihood.npz")
    assert lik["x"].shape == (300, 2) and lik["nll"].shape == (300,)
    assert lik["nll"].mean() == pytest.approx(metrics["nll"])
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert "nll" in proc.stdout and "exact_nll" in proc.stdout


def test_pc_with_other_sde_and_batches(tmp_path):
    proc = run(tmp_path, "sde=ve", "solver=pc", "solver.steps=200", "sample.num=600", "sample.batch=250")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["nfe_sample"] == 400
    assert metrics["weights_tv"] < 0.1
    assert np.load(tmp_path / "samples.npz")["x"].shape == (600, 2)
    assert "nll" not in metrics and not (tmp_path / "likelihood.npz").exists()


def test_high_dimensional_mixture_gets_projections(tmp_path):
    proc = run(tmp_path, "data=gmm_hd", "data.dim=16", "solver=ode", "solver.method=rk4", "solver.steps=20",
               "sample.num=300", "likelihood=true", "eval.num=50", "eval.ode.divergence=rademacher")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "samples.npz")["x"].shape == (300, 16)
    assert (tmp_path / "samples.png").exists()


def test_users_own_sde_by_target(tmp_path):
    """A process that states only f and g, importable from the working directory."""
    (tmp_path / "my_module.py").write_text(textwrap.dedent("""
        import torch
        from sde import SDE

        class MySDE(SDE):
            def __init__(self, beta_min=0.1, beta_max=20.0, T=1.0):
                self.beta_min, self.beta_max, self.T = beta_min, beta_max, T
                super().__init__()

            def f(self, t):
                return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

            def g(self, t):
                return torch.sqrt(self.beta_min + t * (self.beta_max - self.beta_min))
    """))
    out = tmp_path / "out"
    proc = run(out, "sde._target_=my_module.MySDE", "solver=ode", "likelihood=true", "sample.num=2000",
               "eval.num=200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sde"].startswith("MySDE")
    assert abs(metrics["nll"] - metrics["exact_nll"]) / 2 < 0.01
    assert metrics["weights_tv"] < 0.05


@pytest.mark.parametrize("overrides, needle", [
    (["sde=foo"], "sde='foo' is unknown: choose one of cosine, rf, subvp, ve, vp"),
    (["solver=rk45"], "solver='rk45' is unknown: choose one of em, ode, pc"),
    (["data.stds=[0.3,0.4,0.5,0.3,-0.4,0.5,0.3,0.4]"], "data.stds contains -0.4"),
    (["data.weights=[1,2,3]"], "data.weights has 3 entries but data.means has 8 components"),
    (["solver.predictor=heun"], "solver.predictor='heun' is unknown"),
    (["sde.beta_min=-2"], "beta_min=-2"),
    (["device=tpu"], "device='tpu' is unknown"),
    (["sde._target_=nowhere.Nothing"], "sde._target_=nowhere.Nothing"),
])
def test_bad_config_is_one_line(tmp_path, overrides, needle):
    proc = run(tmp_path, *overrides, "sample.num=10")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
