"""Nothing lost, nothing silent: through run.py, the last good checkpoint stays good, every bad input fails early
in one line (or warns in one line), and runs that start together cannot collide. Runs in this process (run_job)
unless the process is the subject."""
import csv
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.bad_inputs import CASES, probe
from sde.errors import NonFiniteError
from test_run import ROOT, SMALL_MLP, command, environment, run, run_job, run_job_with_edited_samples, run_main

FAST = {"text renamed .npy", "uint8 images channels-last", "typo in a key", "beta_max < beta_min"}
TESTED = FAST | {"truncated .npz", ".npz without x", "complex array", "folder as array path",
                 "uint8 images with 5 channels", "decompression-bomb PNG", "data far wider than the VP prior",
                 "sample.num=0", "eval.num beyond the held-out split", "eval.ode.method=foo", "device=mps without it",
                 "+typo at the top", "+typo in a part", "negative warmup", "without ema, sampled",
                 "without optimizer, resumed", "NaN EMA weights, sampled"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c[1], marks=() if c[1] in FAST else pytest.mark.slow)
                                  for c in CASES if c[1] in TESTED])
def test_bad_input_ends_in_one_line(case, tmp_path):
    """A case of each kind in the probe table (benchmarks/bad_inputs.py, which tries them all, each in a process of
    its own) ends as it should, through main() in this process: one error line with exit 2, or one warning line
    with the run finishing."""
    got, message, proc = probe(case, tmp_path, runner=lambda out, args, cwd: run_main(out, *args, cwd=cwd))
    assert got == case[4], proc.stderr
    assert message.startswith("error: " if case[4] == "error" else "warning: ")
    if case[4] == "warning":
        assert proc.returncode == 0 and (tmp_path / "out" / "metrics.json").exists()


def weights_finite(path):
    state = torch.load(path, weights_only=True)
    return all(torch.isfinite(v).all() for part in (state["model"], state["ema"]["shadow"]) for v in part.values()
               if v.is_floating_point()), state["step"]


@pytest.mark.slow
def test_a_blow_up_names_a_checkpoint_that_resumes(tmp_path):
    """The issue's recipe: 20 steps, then a resume at lr = 1e6 with a checkpoint every step, until the loss is NaN."""
    r = tmp_path / "R"
    run_job(r, "train.steps=20", "train.ckpt_every=1", *SMALL_MLP)
    proc = run_main(r, f"ckpt={r}/checkpoint.pt", "train.steps=300", "train.ckpt_every=1", "train.lr=1e6",
                    "train.warmup=1", *SMALL_MLP)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"the last good checkpoint is {r}/checkpoint.pt" in lines[0]
    finite, step = weights_finite(r / "checkpoint.pt")
    assert finite and step >= 20
    run_job(tmp_path / "again", f"ckpt={r}/checkpoint.pt", f"train.steps={step + 5}", *SMALL_MLP)
    assert weights_finite(tmp_path / "again" / "checkpoint.pt") == (True, step + 5)


@pytest.mark.slow
def test_non_finite_samples_end_in_one_line(tmp_path, monkeypatch):
    """A solver that returns NaN (here: a user's) stops the run with a NonFiniteError (the command line's one line,
    exit status 2) naming how many."""
    with pytest.raises(NonFiniteError) as error:
        run_job_with_edited_samples(tmp_path, monkeypatch, 'x[::2] = float("nan")')
    (line,) = str(error.value).splitlines()
    assert "5 of 10 samples are not finite (the first is number 0)" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.slow
def test_runs_started_together_get_their_own_directories(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), "model=oracle", "data=gmm", "solver=ddim", "solver.steps=3",
            "sample.num=10", "sample.plot=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 3 and all((d / "metrics.json").exists() for d in runs)


@pytest.mark.slow
def test_a_directory_held_by_a_live_run_is_refused(tmp_path):
    first = subprocess.Popen(command(tmp_path, "train.steps=100000", "train.ckpt_every=100000", *SMALL_MLP), cwd=ROOT,
                             env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "train_log.csv").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run(tmp_path, "train.steps=5", *SMALL_MLP)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"is in use by another live run (pid {first.pid})" in lines[0]
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_a_resumed_log_has_no_duplicate_steps_and_no_stale_temporaries(tmp_path):
    out = tmp_path / "out"
    run_job(out, "train.steps=30", "train.ckpt_every=10", "train.log_every=5", *SMALL_MLP)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["step"] = 20  # as if killed after the step-20 checkpoint, with the log written on to 30
    torch.save(state, tmp_path / "at20.pt")
    (out / "checkpoint.pt.tmp.12345").write_bytes(b"x" * 1000)
    run_job(out, f"ckpt={tmp_path}/at20.pt", "train.steps=40", "train.ckpt_every=10", "train.log_every=5", *SMALL_MLP)
    with open(out / "train_log.csv") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh)]
    assert steps == list(range(5, 41, 5))
    assert not list(out.glob("*.tmp*"))


@pytest.mark.slow
def test_a_module_named_like_a_dependency_in_the_working_directory_is_not_imported(tmp_path):
    (tmp_path / "sklearn.py").write_text("raise SystemExit('the working directory shadowed scikit-learn')\n")
    proc = run(tmp_path / "out", "data=digits", "model=unet", "model.net.channels=8", "model.net.multipliers=[1]",
               "model.net.attention_resolutions=[]", "model.net.num_res_blocks=1", "model.net.groups=4",
               "train.steps=1", "train.batch_size=4", "train.progress=false", "solver=ddim", "solver.steps=2",
               "sample.num=4", "sample.max_range=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("overrides, line", [
    (["+eval=ode", "eval.num=0"], "error: eval.num=0 is invalid: expected an integer >= 1"),
    (["+eval=elbo", "eval.batch=0"], "error: eval.batch=0 is invalid: expected an integer >= 1"),
    (["+eval=ode", "eval.ode.num=0"], "error: eval.ode.num=0 is invalid: expected an integer >= 1"),
    (["data=digits", "model=mlp", "+eval=ode", "eval.num=5000"], "error: eval.num=5000 exceeds the 180 held-out "),
    (["+likelihod=true"], "error: +likelihod is not an option: did you mean likelihood?"),
])
def test_an_error_names_the_key_the_user_sets(tmp_path, overrides, line):
    """An evaluation's option interpolated from a shared one (num: ${eval.num}) is named by the shared key."""
    proc = run_main(tmp_path, "model=oracle", "data=gmm", "train.steps=1", *overrides)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), proc.stderr
