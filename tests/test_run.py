"""run.py end to end: composition by group, outputs, a user's own SDE, and one-line errors. A run whose outputs
are the subject runs in this process (run_job, as run.py composes and runs it); a subprocess only where the
process is the subject (exit codes, one-line errors, kills)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sde.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def command(out, *overrides):
    return [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={out}", *overrides]


def environment():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run(out, *overrides, cwd=None):
    return subprocess.run(command(out, *overrides), capture_output=True, text=True, cwd=cwd or ROOT,
                          env=environment(), timeout=600)


def run_job(out, *overrides):
    """``python run.py hydra.run.dir=OUT OVERRIDES`` in this process (scoresde.cli.main.run, torch's thread count
    kept): its metrics."""
    import torch

    from scoresde.cli.main import run as run_in_process

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        return run_in_process([f"threads={threads}", *overrides], out)
    finally:
        torch.set_num_threads(threads)


def run_main(out, *overrides, cwd=None):
    """``run(out, *overrides, cwd=cwd)`` in this process: the command line's main() with stdout and stderr
    captured and its exit status kept, as a subprocess.CompletedProcess (what the process would print and return,
    for tests of one-line errors that need no process of their own), at torch's thread count unless the overrides
    set threads=. The working directory, sys.path, sys.argv, warning filters and torch's thread count are restored
    afterwards, and modules imported from ``cwd`` dropped."""
    import contextlib
    import io
    import warnings

    import torch

    from scoresde.cli.main import main

    cwd = Path(cwd or ROOT)
    saved = os.getcwd(), sys.path[:], sys.argv[:], torch.get_num_threads(), os.environ.pop("HYDRA_FULL_ERROR", None)
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.resetwarnings()
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                threads = [] if any(o.startswith("threads=") for o in overrides) else [f"threads={saved[3]}"]
                main([f"hydra.run.dir={out}", *threads, *overrides])
            except SystemExit as end:
                code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
    finally:
        os.chdir(saved[0])
        sys.path[:], sys.argv[:] = saved[1], saved[2]
        torch.set_num_threads(saved[3])
        if saved[4] is not None:
            os.environ["HYDRA_FULL_ERROR"] = saved[4]
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(cwd)) and cwd != ROOT:
                del sys.modules[name]
    return subprocess.CompletedProcess(["run.py", *overrides], code, stdout.getvalue(), stderr.getvalue())


def write_edited_solver(tmp_path, edit):
    """A user's solver (Euler–Maruyama) in tmp_path/edited.py whose samples get the Python statement ``edit``
    (on x) applied before they are returned; the overrides that run it on the oracle."""
    (tmp_path / "edited.py").write_text(textwrap.dedent(f"""
        from solvers import EulerMaruyama

        class Edited(EulerMaruyama):
            def solve(self, sde, score, x, eps, generator):
                x = super().solve(sde, score, x, eps, generator)
                {edit}
                return x
    """))
    return ["model=oracle", "data=gmm", "solver=em", "solver.steps=5", "solver._target_=edited.Edited"]


def run_with_edited_samples(tmp_path, edit, num=10):
    """run.py (a subprocess) on the oracle with write_edited_solver's solver, ``num`` samples."""
    return run(tmp_path / "out", *write_edited_solver(tmp_path, edit), f"sample.num={num}", cwd=tmp_path)


def run_job_with_edited_samples(tmp_path, monkeypatch, edit, num=10):
    """run_job on the oracle with write_edited_solver's solver (importable from tmp_path), ``num`` samples."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "edited", raising=False)
    return run_job(tmp_path / "out", *write_edited_solver(tmp_path, edit), f"sample.num={num}")


SMALL_MLP = ["model.net.hidden=64", "model.net.depth=2", "model.net.embed_dim=32", "train.progress=false",
             "sample.max_range=0"]  # a few training steps leave samples anywhere: smoke tests skip the range check


@pytest.mark.slow
def test_oracle_ode_likelihood_writes_all_outputs(tmp_path, capsys):
    metrics = run_job(tmp_path, "model=oracle", "data=gmm", "solver=ode", "likelihood=true", "sample.num=1000",
                      "eval.num=300")
    stdout = capsys.readouterr().out
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
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
    assert "nll" in stdout and "exact_nll" in stdout


@pytest.mark.slow
def test_pc_with_other_sde_and_batches(tmp_path):
    metrics = run_job(tmp_path, "model=oracle", "data=gmm", "sde=ve", "solver=pc", "solver.steps=200",
                      "sample.num=600", "sample.batch=250")
    assert metrics["nfe_sample"] == 400
    assert metrics["weights_tv"] < 0.1
    assert np.load(tmp_path / "samples.npz")["x"].shape == (600, 2)
    assert "nll" not in metrics and not (tmp_path / "likelihood.npz").exists()


@pytest.mark.slow
def test_high_dimensional_mixture_gets_projections(tmp_path):
    run_job(tmp_path, "model=oracle", "data=gmm_hd", "data.dim=16", "solver=ode", "solver.method=rk4",
            "solver.steps=20", "sample.num=300", "likelihood=true", "eval.num=50", "eval.ode.divergence=rademacher")
    assert np.load(tmp_path / "samples.npz")["x"].shape == (300, 16)
    assert (tmp_path / "samples.png").exists()


@pytest.mark.slow
def test_users_own_sde_by_target(tmp_path, monkeypatch):
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
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_module", raising=False)
    metrics = run_job(tmp_path / "out", "model=oracle", "data=gmm", "sde._target_=my_module.MySDE", "solver=ode",
                      "likelihood=true", "sample.num=2000", "eval.num=200")
    assert metrics["sde"].startswith("MySDE")
    assert abs(metrics["nll"] - metrics["exact_nll"]) / 2 < 0.01
    assert metrics["weights_tv"] < 0.05


@pytest.mark.parametrize("overrides, needle", [
    (["sde=foo"], "sde='foo' is unknown: choose one of cosine, rf, subvp, ve, vp"),
    pytest.param(["solver=rk45"], "solver='rk45' is unknown: choose one of", marks=pytest.mark.slow),
    pytest.param(["data.stds=[0.3,0.4,0.5,0.3,-0.4,0.5,0.3,0.4]"], "data.stds contains -0.4", marks=pytest.mark.slow),
    (["data.weights=[1,2,3]"], "data.weights has 3 entries but data.means has 8 components"),
    pytest.param(["solver=pc", "solver.predictor=heun"], "solver.predictor='heun' is unknown", marks=pytest.mark.slow),
    pytest.param(["sde.beta_min=-2"], "beta_min=-2", marks=pytest.mark.slow),
    pytest.param(["device=tpu"], "device='tpu' is unknown", marks=pytest.mark.slow),
    pytest.param(["sde._target_=nowhere.Nothing"], "sde._target_=nowhere.Nothing", marks=pytest.mark.slow),
])
def test_bad_config_is_one_line(tmp_path, overrides, needle):
    """The first case through a process of its own, the others through main() in this process."""
    runner = run if overrides == ["sde=foo"] else run_main
    proc = runner(tmp_path, "model=oracle", "data=gmm", *overrides, "sample.num=10")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_default_job_trains_samples_and_writes_everything(tmp_path):
    """The default job (MLP on the checkerboard, PC sampling), shortened."""
    metrics = run_job(tmp_path, "train.steps=150", "train.ckpt_every=50", "solver.steps=50", "sample.num=300",
                      "likelihood=true", "eval.num=100", *SMALL_MLP)
    assert metrics["train_steps"] == 150 and metrics["train_seconds"] > 0
    assert metrics["exact_nll"] == pytest.approx(np.log(8))
    assert np.isfinite(metrics["nll"])
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 7  # a row every train.log_every=25 steps
    for name in ("checkpoint.pt", "samples.npz", "samples.png", "likelihood.npz"):
        assert (tmp_path / name).exists()

    again = tmp_path / "sample_only"
    assert run_job(again, f"ckpt={tmp_path / 'checkpoint.pt'}", "train.steps=0", "solver.steps=50", "sample.num=300",
                   *SMALL_MLP)["train_steps"] == 150
    first = np.load(tmp_path / "samples.npz")["x"]
    assert np.allclose(np.load(again / "samples.npz")["x"], first, atol=1e-5)


@pytest.mark.slow
def test_unet_on_digits(tmp_path):
    metrics = run_job(tmp_path, "data=digits", "model=unet", "model.net.channels=16", "model.net.multipliers=[1,2]",
                      "model.net.attention_resolutions=[4]", "model.net.num_res_blocks=1", "train.steps=3",
                      "sample.max_range=0", "train.batch_size=8", "train.progress=false", "solver=ode",
                      "solver.method=euler", "solver.steps=4", "sample.num=9", "likelihood=true", "eval.num=4",
                      "eval.ode.method=euler", "eval.ode.steps=3", "eval.ode.max_error=0")
    assert np.load(tmp_path / "samples.npz")["x"].shape == (9, 1, 8, 8)
    assert metrics["bpd"] == pytest.approx(metrics["nll"] / 64 / np.log(2) + 7)
    lik = np.load(tmp_path / "likelihood.npz")
    assert lik["x"].shape == (4, 1, 8, 8) and lik["nll"].shape == (4,)


def kill_after_first_checkpoint(argv, out, cwd):
    """Start ``argv`` (a run into ``out``), SIGKILL it once its first checkpoint is written, and return that
    checkpoint's path; the run must still be going when it is killed."""
    errors = Path(out).parent / f"{Path(out).name}.stderr"
    with open(errors, "w") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, env=environment(), stdout=subprocess.DEVNULL, stderr=fh)
    ckpt = Path(out) / "checkpoint.pt"
    try:
        deadline = time.time() + 240
        while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed: {errors.read_text()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return ckpt


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL mid-run (of 1200 steps), then ckpt=... continues from the last checkpoint to the step count asked
    (400)."""
    first = tmp_path / "first"
    args = ["train.ckpt_every=100", "train.batch_size=64", "solver=ode", "sample.num=100", *SMALL_MLP]
    ckpt = kill_after_first_checkpoint(command(first, "train.steps=1200", *args, "threads=1"), first, ROOT)
    import torch

    step = torch.load(ckpt, weights_only=True)["step"]
    assert 100 <= step < 400 and step % 100 == 0
    second = tmp_path / "second"
    done = run_main(second, f"ckpt={ckpt}", "train.steps=400", *args)
    assert done.returncode == 0, done.stderr
    assert json.loads((second / "metrics.json").read_text())["train_steps"] == 400
    rows = (second / "train_log.csv").read_text().splitlines()
    assert rows[1].startswith(f"{step + 25},") and rows[-1].startswith("400,")  # a row every train.log_every=25


@pytest.mark.slow
@pytest.mark.parametrize("setup, overrides, needle", [
    (None, ["data=array", "data.path=missing.npy"], "data.path='missing.npy' does not exist"),
    (lambda d: np.save(d / "empty.npy", np.zeros((0, 2))), ["data=array", "data.path={d}/empty.npy"], "is empty"),
    (lambda d: np.save(d / "nan.npy", np.array([[0.0, 1.0], [np.nan, 0.0]])), ["data=array", "data.path={d}/nan.npy"],
     "contains NaN or inf (first in sample 1)"),
    (lambda d: np.save(d / "flat.npy", np.zeros(7)), ["data=array", "data.path={d}/flat.npy"], "has shape (7,)"),
    (lambda d: (d / "imgs").mkdir(), ["data=folder", "data.path={d}/imgs"], "holds no PNG or JPEG images"),
    (None, ["data=array"], "data.path must be set"),
])
def test_bad_data_is_one_line(tmp_path, setup, overrides, needle):
    """Bad data ends the run with a ConfigError, which the command line prints as its one line."""
    if setup is not None:
        setup(tmp_path)
    with pytest.raises(ConfigError) as error:
        run_job(tmp_path / "out", *[o.format(d=tmp_path) for o in overrides], "train.steps=5", *SMALL_MLP)
    assert needle in str(error.value).splitlines()[0]
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_one_line(tmp_path):
    run_job(tmp_path / "a", "train.steps=5", "solver.steps=5", "sample.num=10", *SMALL_MLP)
    proc = run_main(tmp_path / "b", f"ckpt={tmp_path / 'a' / 'checkpoint.pt'}", "train.steps=0",
                    "model.net.hidden=32", "model.net.depth=2", "model.net.embed_dim=32")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "was trained with model.net.hidden=64 but this run has model.net.hidden=32" in lines[0]
    proc = run_main(tmp_path / "c", f"ckpt={tmp_path / 'a' / 'checkpoint.pt'}", "train.steps=0",
                    "model.net.hidden=32", "model.net.depth=2", "model.net.embed_dim=32", "ckpt_override=true")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "was written for a different model" in lines[0]


@pytest.mark.slow
def test_nan_loss_is_one_line_and_keeps_the_checkpoint(tmp_path):
    (tmp_path / "nanloss.py").write_text(textwrap.dedent("""
        from scoresde.training import DSMLoss

        class NaNAfter(DSMLoss):
            def __init__(self, bad=30, **kwargs):
                super().__init__(**kwargs)
                self.calls, self.bad = 0, bad

            def __call__(self, model, sde, x0, generator=None):
                self.calls += 1
                value = super().__call__(model, sde, x0, generator)
                return value * float("nan") if self.calls >= self.bad else value
    """))
    out = tmp_path / "out"
    proc = run_main(out, "loss._target_=nanloss.NaNAfter", "train.steps=100", "train.ckpt_every=20", *SMALL_MLP,
                    cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "the loss became nan at step 30; the last good checkpoint is" in lines[0]
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


TINY = ["train.steps=3", "model.net.hidden=16", "model.net.depth=1", "model.net.embed_dim=8", "train.progress=false",
        "solver=ddim", "solver.steps=3", "sample.num=10", "sample.max_range=0", "sample.plot=false"]


def snapshot(out):
    """Every file of a run directory (its .hydra/ included; the lock left out) with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line_error(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_new_run_into_a_finished_runs_directory_is_refused_and_changes_nothing(tmp_path):
    """Hydra writes .hydra/ before the job runs: the directory is checked before that, in main()."""
    out = tmp_path / "run"
    assert run_main(out, *TINY).returncode == 0
    before = snapshot(out)
    assert {"checkpoint.pt", "train_log.csv", "metrics.json", ".hydra/config.yaml",
            ".hydra/overrides.yaml"} <= set(before)
    line = one_line_error(run_main(out, *TINY[1:], "train.steps=5", "seed=7", "data=moons"))
    assert line == (f"error: hydra.run.dir={str(out)!r} holds a finished run (checkpoint.pt, metrics.json), which a "
                    f"new run would overwrite: give a new directory, or resume that run with ckpt={out}")
    assert snapshot(out) == before
    other = run_main(out, *TINY[1:], "train.steps=5", f"ckpt={tmp_path}")
    assert "holds a finished run" in one_line_error(other) and snapshot(out) == before


def test_a_finished_run_is_kept_wherever_the_run_directory_comes_from(tmp_path, monkeypatch):
    """hydra.run.dir given by an interpolation (as a config file or the environment gives it) is the composed
    one that Hydra's run callback claims before anything is written; a sweep into a directory that holds finished
    runs is refused as it starts."""
    out = tmp_path / "run"
    assert run_main(out, *TINY).returncode == 0
    before = snapshot(out)
    monkeypatch.setenv("PROBE_RUN_DIR", str(out))
    line = one_line_error(run_main(tmp_path / "elsewhere", *TINY, "hydra.run.dir=${oc.env:PROBE_RUN_DIR}"))
    assert line.startswith(f"error: hydra.run.dir={str(out)!r} holds a finished run")
    assert snapshot(out) == before and not (tmp_path / "elsewhere").exists()
    sweep = tmp_path / "sweep"
    assert run_main(out, *TINY, "-m", f"hydra.sweep.dir={sweep}", "seed=1,2").returncode == 0
    kept = snapshot(sweep)
    line = one_line_error(run_main(out, *TINY, "-m", f"hydra.sweep.dir={sweep}", "seed=3"))
    assert line == (f"error: hydra.sweep.dir={str(sweep)!r} holds finished runs (0, 1), which this sweep's runs "
                    "would overwrite: give a new directory")
    assert snapshot(sweep) == kept


@pytest.mark.parametrize("ckpt", ["{out}", pytest.param("{out}/checkpoint.pt", marks=pytest.mark.slow)])
def test_a_run_that_resumes_the_run_in_its_directory_goes_on(tmp_path, ckpt):
    out = tmp_path / "run"
    assert run_main(out, *TINY).returncode == 0
    proc = run_main(out, *TINY[1:], "train.steps=6", "ckpt=" + ckpt.format(out=out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 6


def test_a_run_refused_by_a_live_run_leaves_its_directory_as_it_was(tmp_path):
    """The live run holds out/.lock (here a process that takes it as run.py does); the refused run writes
    nothing there, .hydra/ included."""
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "overrides.yaml").write_text("- train.steps=4000\n")
    (out / ".hydra" / "config.yaml").write_text("seed: 3\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fh = open({str(out / '.lock')!r}, "a+")
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(str(os.getpid())); fh.flush()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(out)
        line = one_line_error(run_main(out, *TINY, "seed=7"))
        assert line == (f"error: hydra.run.dir={str(out)!r} is in use by another live run (pid {holder.pid}): give "
                        "each run its own directory")
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_run_directory_that_cannot_be_made_is_one_line_and_nothing_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, why in [(tmp_path / "file", "is not a directory: give a folder for the run's outputs"),
                     (tmp_path / "file" / "run", "cannot be created (Not a directory): give a folder you can write"),
                     (Path("/dev/null"), "is not a directory"), (Path("/proc/probe_run"), "cannot be created")]:
        line = one_line_error(run_main(out, *TINY))
        assert line.startswith(f"error: hydra.run.dir={str(out)!r} {why}"), line
    assert (tmp_path / "file").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_full_disk_at_the_start_is_one_line_before_hydra_writes(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    line = one_line_error(run_main(out, *TINY))
    assert line == (f"error: hydra.run.dir={str(out)!r} cannot be written (No space left on device): free some space "
                    "or give another folder")
    assert not (out / ".hydra").exists()


def test_a_full_disk_while_writing_samples_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    def full(fh, **arrays):
        fh.write(b"PK" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    out = tmp_path / "run"
    line = one_line_error(run_main(out, "model=oracle", "data=gmm", "solver=ddim", "solver.steps=3", "sample.num=10",
                                   "sample.plot=false"))
    assert line == (f"error: {out / 'samples.npz'} could not be written (No space left on device); any previous file "
                    "there is kept whole: free some space, or write the run elsewhere")
    assert not list(out.glob("samples.npz*")) and not (out / "metrics.json").exists()


def test_an_undertrained_model_warns_counts_and_keeps_its_samples(tmp_path):
    """Samples beyond sample.max_range times the data's largest magnitude (here a bound of 0.01 that 3 training
    steps cannot meet) are a warning, recorded in metrics.json, not an error."""
    out = tmp_path / "run"
    proc = run_main(out, *[a for a in TINY if not a.startswith("sample.max_range")], "sample.max_range=0.01")
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "of 10 samples lie beyond 0.01 times the data's largest magnitude" in warned[0]
    assert "the model is undertrained or the solver diverged; they are kept in samples.npz" in warned[0]
    metrics = json.loads((out / "metrics.json").read_text())
    x = np.load(out / "samples.npz")["x"]
    assert x.shape == (10, 2) and 1 <= metrics["samples_out_of_range"] <= 10
    assert metrics["samples_out_of_range_ratio"] == pytest.approx(np.abs(x).max() / 2, rel=0.01)  # checkerboard M≈2


@pytest.mark.slow
def test_a_fatal_signal_prints_the_stack_it_struck_in(tmp_path):
    """SIGBUS (what reading a memory-mapped .npy truncated under the run raises) cannot be caught: run.py prints
    where it struck (faulthandler) instead of dying without a word."""
    (tmp_path / "bus.py").write_text(textwrap.dedent("""
        import os
        import signal

        from sde import VPSDE

        class Bus(VPSDE):
            def __init__(self, **kwargs):
                os.kill(os.getpid(), signal.SIGBUS)
    """))
    proc = run(tmp_path / "out", "model=oracle", "data=gmm", "sde._target_=bus.Bus", cwd=tmp_path)
    assert proc.returncode == -signal.SIGBUS
    assert "Fatal Python error: Bus error" in proc.stderr and 'bus.py", line 9 in __init__' in proc.stderr


@pytest.mark.parametrize("extra", [["sample.num=[1,"], ["--cfg", "job"]])
def test_a_command_hydra_refuses_or_does_not_run_creates_no_run_directory(tmp_path, extra):
    out = tmp_path / "run"
    proc = run_main(out, *TINY, *extra)
    assert not out.exists()
    if "--cfg" in extra:
        assert proc.returncode == 0 and "sample:" in proc.stdout, proc.stderr
    else:
        assert proc.returncode != 0


def test_a_finished_run_without_a_lock_file_gets_none_from_a_refused_run(tmp_path):
    out = tmp_path / "run"
    assert run_main(out, *TINY).returncode == 0
    (out / ".lock").unlink()
    assert "holds a finished run" in one_line_error(run_main(out, *TINY))
    assert not (out / ".lock").exists()
