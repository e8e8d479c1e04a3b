"""Checkpoints know their model: through run.py, a checkpoint samples with its own process and network, and a
run that asks for another one ends in one line naming both values; bugs keep their tracebacks."""
import json
import textwrap

import numpy as np
import pytest
import torch

from test_run import SMALL_MLP, run

TRAIN = ["sde=subvp", "train.steps=5", "solver=ddim", "solver.steps=5", "sample.num=20", *SMALL_MLP]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 5-step run of the small MLP under the sub-VP process: its checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    proc = run(out, *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return out / "checkpoint.pt"


def one_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_checkpoint_records_its_configuration(trained):
    meta = torch.load(trained, weights_only=True)["meta"]
    assert meta["sde"]["_target_"] == "sde.SubVPSDE"
    assert meta["model"]["net"]["hidden"] == 64 and meta["model"]["parameterization"] == "eps"
    assert meta["data_spec"] == {"shape": [2], "num_classes": None, "levels": None, "value_range": None}


@pytest.mark.slow
def test_sampling_without_sde_or_model_uses_the_checkpoints_own(trained, tmp_path):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "solver=ddim", "solver.steps=5", "sample.num=20",
               "sample.max_range=0")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["sde"].startswith("SubVPSDE") and metrics["train_steps"] == 5
    first = np.load(trained.parent / "samples.npz")["x"]
    assert np.allclose(np.load(tmp_path / "samples.npz")["x"], first, atol=1e-5)


@pytest.mark.parametrize("override, needle", [
    ("sde=vp", "was trained with sde._target_='sde.SubVPSDE' but this run has sde._target_='sde.VPSDE'"),
    pytest.param("model.parameterization=x0", "was trained with model.parameterization='eps' but this run has "
                                  "model.parameterization='x0'", marks=pytest.mark.slow),
    pytest.param("model.sigma_data=0.5", "was trained with model.sigma_data=1.0 but this run has "
                 "model.sigma_data=0.5", marks=pytest.mark.slow),
    pytest.param("model.net.hidden=32", "was trained with model.net.hidden=64 but this run has "
                 "model.net.hidden=32", marks=pytest.mark.slow),
    pytest.param("model=unet", "was trained with model.net._target_='models.MLP' but this run has "
                 "model.net._target_='models.UNet'", marks=pytest.mark.slow),
])
def test_another_process_or_network_is_one_line(trained, tmp_path, override, needle):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", override, "sample.num=20")
    line = one_line(proc)
    assert needle in line and "ckpt_override=true" in line


@pytest.mark.slow
def test_override_samples_under_another_process(trained, tmp_path):
    """ckpt_override=true: the user takes responsibility; the network still has to fit."""
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "sde=vp", "ckpt_override=true", "solver=ddim",
               "solver.steps=5", "sample.num=20", "sample.max_range=0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["sde"].startswith("VPSDE")


@pytest.mark.slow
def test_data_of_another_shape_is_one_line(trained, tmp_path):
    proc = run(tmp_path, f"ckpt={trained}", "train.steps=0", "data=gmm_hd", "data.dim=3", "sample.num=20")
    assert "was trained on data with shape [2]; this data set" in one_line(proc)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_resume_is_one_line(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "partial.pt")
    proc = run(tmp_path / "out", f"ckpt={tmp_path / 'partial.pt'}", "train.steps=10", *SMALL_MLP)
    assert "lacks optimizer: it cannot resume training" in one_line(proc)


@pytest.mark.parametrize("error", ["ValueError", pytest.param("TypeError", marks=pytest.mark.slow)])
def test_a_bug_keeps_its_traceback(tmp_path, error):
    """An exception that is not a ConfigError, raised inside a solver or a constructor, is a bug."""
    (tmp_path / "buggy.py").write_text(textwrap.dedent(f"""
        from solvers import EulerMaruyama

        class Buggy(EulerMaruyama):
            def solve(self, sde, score, x, eps, generator):
                raise {error}("an internal {error}")

        class BuggyInit(EulerMaruyama):
            def __init__(self, **options):
                raise {error}("an internal {error} in a constructor")
    """))
    for target, message in (("buggy.Buggy", f"an internal {error}"),
                            ("buggy.BuggyInit", f"an internal {error} in a constructor")):
        proc = run(tmp_path / "out", "model=oracle", "data=gmm", "solver=em", f"solver._target_={target}",
                   "sample.num=10", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" in proc.stderr and f"{error}: {message}" in proc.stderr
