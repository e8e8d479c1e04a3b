"""Nothing lost, nothing silent: through run.py, the last good checkpoint stays good, every bad input fails early
in one line (or warns in one line), and runs that start together cannot collide. Runs in this process (run_job)
unless the process is the subject."""
import csv
import re
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.bad_inputs import CASES, CLI_CASES, probe
from sde.errors import ConfigError, NonFiniteError
from test_run import ROOT, SMALL_MLP, command, environment, run, run_job, run_job_with_edited_samples, run_main

FAST = {"text renamed .npy", "uint8 images with 5 channels", "typo in a key", "complex array"}
TESTED = FAST | {"data far wider than the VP prior", "uint8 images channels-last", "beta_max < beta_min",
                 "truncated .npz", ".npz without x", "folder as array path", "decompression-bomb PNG", "sample.num=0",
                 "eval.num beyond the held-out split", "eval.ode.method=foo", "device=mps without it",
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
            "sample.num=10", "sample.plot=false", "threads=1"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2 and all((d / "metrics.json").exists() for d in runs)


@pytest.mark.slow
def test_a_directory_held_by_a_live_run_is_refused(tmp_path):
    first = subprocess.Popen(command(tmp_path, "train.steps=100000", "train.ckpt_every=100000", "train.batch_size=8",
                                     "threads=1", *SMALL_MLP), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "train_log.csv").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = run_main(tmp_path, "train.steps=5", *SMALL_MLP)
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
    proc = run(tmp_path / "out", "data=digits", "model=mlp", "model.net.hidden=16", "model.net.depth=1",
               "train.steps=1", "train.batch_size=4", "train.progress=false", "solver=ddim", "solver.steps=2",
               "sample.num=4", "sample.max_range=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("overrides, line", [
    (["+eval=ode", "eval.num=0"], "error: eval.num=0 is invalid: expected an integer >= 1"),
    pytest.param(["+eval=elbo", "eval.batch=0"], "error: eval.batch=0 is invalid: expected an integer >= 1",
                 marks=pytest.mark.slow),
    (["+eval=ode", "eval.ode.num=0"], "error: eval.ode.num=0 is invalid: expected an integer >= 1"),
    pytest.param(["data=digits", "model=mlp", "+eval=ode", "eval.num=5000"],
                 "error: eval.num=5000 exceeds the 180 held-out ", marks=pytest.mark.slow),
    (["+likelihod=true"], "error: +likelihod is not an option: did you mean likelihood?"),
])
def test_an_error_names_the_key_the_user_sets(tmp_path, overrides, line):
    """An evaluation's option interpolated from a shared one (num: ${eval.num}) is named by the shared key."""
    proc = run_main(tmp_path, "model=oracle", "data=gmm", "train.steps=1", *overrides)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(line), proc.stderr


# ---- command-line values (issue 25 item 2): CLI_CASES of benchmarks/bad_inputs.py, probe ids in brackets

CLI_LINES = {  # the start of each case's one line (after "error: " or "warning: ")
    "[h13]": "Could not delete from config. 'sample.nonexistent' does not exist. (~KEY deletes",
    "[a06]": "sample.plot='maybe' is invalid: expected true or false",
    "[s13]": "progress='maybe' is invalid: expected auto, true or false",
    "[s15]": "ckpt_override='maybe' is invalid: expected true or false",
    "[k51]": "ckpt_override='maybe' is invalid: expected true or false",
    "[t25]": "train.amp='maybe' is invalid: expected true or false",
    "[t31]": "train.progress='maybe' is invalid: expected auto, true or false",
    "[v09]": "solver.denoise='maybe' is invalid: expected true or false",
    "[v23]": "solver.lower_order_final='maybe' is invalid: expected true or false",
    "[s02]": f"seed={2 ** 70} is invalid: expected an integer in 0..2**63-1",
    "[s03]": "seed='abc' is invalid: expected an integer in 0..2**63-1",
    "[s04]": "seed=1.5 is invalid: expected an integer in 0..2**63-1",
    "[t29]": "train.seed='abc' is invalid: expected an integer in 0..2**63-1",
    "[d43]": "data.seed='abc' is invalid: expected an integer in 0..2**63-1",
    "[i24]": "mask.seed='abc' is invalid: expected an integer in 0..2**63-1",
    "[s11]": "device='meta' is unknown: use auto, cpu, cuda, cuda:N or mps",
    "[d35]": "data.path=",
    "[d36]": "data.path=",
    "[d37]": "data.path=",
    "[d40]": "data.test_fraction=0.99 holds out 10 of the 10 points",
    "[f10]": "data.size=0 is invalid: expected an integer >= 1",
    "[f11]": "data.size=-4 is invalid: expected an integer >= 1",
    "[f12]": "data.size='abc' is invalid: expected an integer >= 1",
    "[f13]": "data.size=7.5 is invalid: expected an integer >= 1",
    "[f08]": "data.path=",
    "[f21]": "data.path=",
    "[d31]": "data.key='x' names an array of a .npz file",
    "[d08]": "data.path=",
    "[m12]": "model.net.dropout=1.5 is invalid: expected a finite number >= 0 and <= 1",
    "[m13]": "model.net.dropout=-1 is invalid: expected a finite number >= 0 and <= 1",
    "[m14]": "model.net.attention_resolutions=['abc'] is invalid: expected a list of integers",
    "[i13]": "the mask random_mask(fraction=0, seed=0) knows no coordinate",
    "[i15]": "mask.box=[1, 2] is invalid: expected 4 integers",
    "[i18]": "mask.path=",
    "[i21]": "the mask coordinate_mask(coordinates=[0, 1]) knows every coordinate",
    "[i26]": "mask.box=[0, 0, 1, 1] applies to images",
    "[i27]": "mask.box=[0, 0, 2.7, 3.9] is invalid: expected 4 integers",
    "[l11]": "loss.t_min=0.9995 is invalid: expected a time below sde.T=0.999",
    "[e12]": "eval.ode.exact_max_dim=-1 is invalid: expected an integer >= 0",
    "[e23]": "eval.ode.",
    "[h11]": "'model.net.hidden=[1,' is not a valid override",
    "[h12]": "sample.num='${nothing.here}' cannot be resolved",
    "[k45]": "ckpt='",
    "[x05]": "data.path='",
    "[h07]": "train.steps=-1 is invalid: expected an integer >= 0 (run 1 of the sweep: train.steps=-1; no run was",
    "[v02]": "solver.eps=-1.0 is invalid",
    "[v03]": "solver.eps=1.0 is invalid",
    "[v29]": "solver.safety=5 is invalid",
    "[v30]": "solver.max_iters=1 reached before t = eps",
    "[p06]": "solver.grid=karras needs a finite sigma(T) = s/a, and the process",
    "[p14]": "solver.grid=karras needs a finite sigma(T) = s/a, and the process",
    "[p15]": "the process VESDE(sigma_min=0.01, sigma_max=1e+30) reaches s(T) = 1e+30 (sde.sigma_max=1e+30)",
    "[a14]": "4 of 4 samples are not finite",
    "[v40]": "solver._target_=os.getcwd takes no options",
}
CLI_IN = {"[a14]": "under guidance.scale=1e+30", "[k45]": "nonexistent-scoresde.pt' does not exist",
          "[x05]": "nonexistent-scoresde.npy' does not exist", "[p06]": "lower sde.T=1000000",
          "[p14]": "lower sde.beta_max=1000000", "[e23]": "expected a tolerance in (0, 0.1]",
          "[d37]": "label 1000000000 is invalid", "[d36]": "integer labels", "[d35]": "label 9223372036854775813",
          "[d08]": "beyond 1e+18", "[f08]": "(mode I;16): read at 8 bits, 0..65535 scaled to 0..255",
          "[f21]": "(mode F): read at 8 bits, 0..1 scaled to 0..255", "[i18]": "expected"}
BEFORE_HYDRA = {"[a06]", "[s13]", "[s15]", "[t25]", "[t31]", "[v09]", "[v23]", "[s02]", "[s03]", "[s04]", "[t29]",
                "[d43]", "[i24]", "[s11]", "[l11]", "[h11]", "[h12]", "[h13]", "[h07]"}
"""Refused from the command line alone: the run directory is never created."""
CLI_FAST = {"[a06] sample.plot=maybe", "[h13] ~KEY of a key the config lacks", "[s02] seed=2**70",
            "[s11] device=meta", "[h11] broken override syntax",
            "[h07] sweep whose second run is bad", "[f08] 16-bit PNGs", "[v02] solver.eps=-1"}


WHILE_SAMPLING = {"[a14]", "[v29]", "[v30]"}
"""Cases whose error only sampling can meet (after training has written its checkpoint)."""


@pytest.mark.parametrize("case", [pytest.param(c, id=c[1], marks=() if c[1] in CLI_FAST else pytest.mark.slow)
                                  for c in CLI_CASES])
def test_a_bad_command_line_value_ends_in_its_one_line(case, tmp_path):
    """Every case of CLI_CASES through main() in this process: its one line, naming the value (and, for a
    refusal that the command line alone shows, before the run directory exists); a warning's run finishes."""
    got, message, proc = probe(case, tmp_path, runner=lambda out, args, cwd: run_main(out, *args, cwd=cwd))
    tag = case[1].split()[0]
    assert got == case[4], proc.stderr
    kind = "error: " if case[4] == "error" else "warning: "
    expected = CLI_LINES.get(tag, case[1].split()[1].split("=")[0] + "=")
    assert message.startswith(kind + expected), message
    assert CLI_IN.get(tag, "") in message
    if case[4] == "warning":
        assert proc.returncode == 0 and (tmp_path / "out" / "metrics.json").exists()
    elif tag in WHILE_SAMPLING:
        assert not (tmp_path / "out" / "metrics.json").exists()
    else:
        assert not (tmp_path / "out" / "checkpoint.pt").exists() and not (tmp_path / "out" / "metrics.json").exists()
    if tag in BEFORE_HYDRA:
        assert not (tmp_path / "out").exists() and not (tmp_path / "multirun").exists()


def bool_options():
    """(group choice overrides, key) of every option whose default is true or false, in every option of every
    group (and the run's own options), from the composed configs: each key of a group under each of the group's
    options, every other key once."""
    from scoresde.cli.args import GROUPS, flatten
    from scoresde.cli.values import resolved
    from scoresde.paths import config_dir

    found, seen = [], set()
    for group in GROUPS:
        for path in sorted((config_dir() / group).glob("*.yaml")):
            choice = [f"+eval={path.stem}" if group == "eval" else f"{group}={path.stem}"]
            if group in ("model", "eval", "task") and path.stem in ("oracle", "fid", "colorize"):
                choice.append("data=digits" if path.stem != "oracle" else "data=gmm")
            cfg = compose_config(choice)
            keys = [key for key, value in flatten(resolved(cfg)).items()
                    if isinstance(value, bool) and not key.startswith("hydra.")]
            found += [(choice, key) for key in keys if key not in seen or key.startswith(f"{group}.")]
            seen.update(keys)
    return found


def compose_config(overrides):
    """The composed config of ``overrides`` (a copy: each group choice is composed once, as the command line's
    checks compose it)."""
    from scoresde.cli.args import composed
    from scoresde.paths import config_dir

    return composed(config_dir(), overrides)


@pytest.mark.slow
def test_every_boolean_option_refuses_what_is_not_a_boolean():
    """One rule for all: each option whose default is a boolean, in any group's option, takes true or false and
    refuses 'maybe', 1 and 'yes' in one line naming it; the switches with auto also take auto."""
    from omegaconf import OmegaConf

    from scoresde.cli.values import check_config

    options = bool_options()
    keys = {key for _, key in options}
    assert {"sample.plot", "ckpt_override", "ckpt_trusted", "train.amp", "solver.denoise", "loss.stratified",
            "eval.conditional", "model.conditional", "data.flip", "eval.classifier.required"} <= keys
    assert any(key == "solver.lower_order_final" for _, key in options)
    for choice, key in options:
        reference = compose_config(choice)
        for bad in ("maybe", 1, "yes"):
            cfg = reference.copy()
            OmegaConf.update(cfg, key, bad, force_add=True)
            with pytest.raises(ConfigError) as error:
                check_config(cfg, reference)
            name = str(error.value).split("=")[0]
            assert str(error.value) == f"{name}={bad!r} is invalid: expected true or false"
            assert name.rpartition(".")[2] == key.rpartition(".")[2]  # the key, or an option interpolating it
        cfg = reference.copy()
        OmegaConf.update(cfg, key, not OmegaConf.select(reference, key))
        check_config(cfg, reference)
    reference = compose_config([])
    for key in ("progress", "train.channels_last"):
        for good in ("auto", True, False):
            cfg = reference.copy()
            OmegaConf.update(cfg, key, good)
            check_config(cfg, reference)


@pytest.mark.parametrize("value", [0, 1, 2 ** 63 - 1])
def test_a_seed_in_range_is_accepted(value):
    from omegaconf import OmegaConf

    from scoresde.cli.values import check_config

    reference = compose_config(["mask=random"])
    for key in ("seed", "train.seed", "mask.seed"):
        cfg = reference.copy()
        OmegaConf.update(cfg, key, value)
        check_config(cfg, reference)
    OmegaConf.update(cfg, "seed", 2 ** 63)
    with pytest.raises(ConfigError, match=r"seed=9223372036854775808 is invalid: expected an integer in 0..2\*\*63-1"):
        check_config(cfg, reference)


def test_home_is_expanded_at_the_start_of_a_value_only():
    import os

    from scoresde.cli.values import expand_home

    home = os.path.expanduser("~")
    assert expand_home("data.path=~/data/cifar-10-batches-py") == f"data.path={home}/data/cifar-10-batches-py"
    assert expand_home("ckpt=~") == f"ckpt={home}"
    assert expand_home("~solver.eps") == "~solver.eps"
    assert expand_home("data.path=a~/b") == "data.path=a~/b"
    assert expand_home("+data.path=~/x") == f"+data.path={home}/x"


def test_model_and_likelihood_options_are_checked_where_they_are_built():
    from models.unet import UNet
    from solvers import ProbabilityFlowODE
    from solvers.likelihood import ODELikelihood

    small = dict(channels=8, multipliers=[1], attention_resolutions=[], num_res_blocks=1, groups=4)
    UNet((1, 8, 8), **small, dropout=1.0)
    for bad, line in [(dict(dropout=1.5), "dropout=1.5 is invalid"), (dict(multipliers=[1.5]), "multipliers=[1.5]"),
                      (dict(attention_resolutions=["abc"]), "attention_resolutions=['abc']"),
                      (dict(channels="x"), "channels='x'")]:
        with pytest.raises(ConfigError, match=re.escape(line)):
            UNet((1, 8, 8), **{**small, **bad})
    for make in (ProbabilityFlowODE, ODELikelihood):
        make(rtol=0.1, atol=0.1)
        for bad in (dict(rtol=0.11), dict(atol=0), dict(rtol=float("nan"))):
            with pytest.raises(ConfigError, match=r"expected a tolerance in \(0, 0.1\]"):
                make(**bad)
