"""Tries run.py on a table of bad inputs (data files, config values, checkpoints) and counts how each ended:
a one-line error (exit 2), a one-line warning with the run going on, a traceback, a multi-line error, or silence.

    python -m benchmarks.bad_inputs --out benchmarks/results/bad_inputs.md

Every case names the outcome a user should get; the table lists each case beside what it got.
"""
import argparse
import atexit
import inspect
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.net.hidden=32", "model.net.depth=1", "model.net.embed_dim=16", "train.progress=false",
         "solver=ddim", "solver.steps=5", "sample.num=20", "sample.max_range=0"]


def _npz(name, **arrays):
    return lambda d: np.savez(d / name, **arrays)


def _npy(name, array):
    return lambda d: np.save(d / name, array)


def _truncated(d):
    np.savez(d / "whole.npz", x=np.random.default_rng(0).normal(size=(200, 2)))
    (d / "truncated.npz").write_bytes((d / "whole.npz").read_bytes()[:300])


def _bomb(d):
    from PIL import Image

    (d / "bomb").mkdir()
    Image.new("L", (8, 8)).save(d / "bomb" / "small.png")
    Image.new("L", (10000, 10000)).save(d / "bomb" / "big.png")


def _text_npy(d):
    (d / "text.npy").write_text("1,2\n3,4\n")


def _checkpoint(d, runner, edit=None):
    """A checkpoint of a 3-step run (through ``runner``, as the case itself runs), optionally edited."""
    out = d / "trained"
    if not (out / "checkpoint.pt").exists():
        runner(out, ["train.steps=3", *SMALL], cwd=d)
    if edit is not None:
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        edit(state)
        torch.save(state, d / "edited.pt")


def _drop(key):
    return lambda d, runner: _checkpoint(d, runner, lambda s: s.pop(key))


def _nan_ema(d, runner):
    def poison(state):
        for v in state["ema"]["shadow"].values():
            if v.is_floating_point():
                v.fill_(float("nan"))
    _checkpoint(d, runner, poison)


A = ["data=array", "data.path={d}/x.npy"]
CASES = [
    # category, name, setup, overrides, expected ("error" | "warning")
    ("data", "missing file", None, ["data=array", "data.path={d}/missing.npy"], "error"),
    ("data", "folder as array path", lambda d: (d / "adir").mkdir(), ["data=array", "data.path={d}/adir"], "error"),
    ("data", "text renamed .npy", _text_npy, ["data=array", "data.path={d}/text.npy"], "error"),
    ("data", "truncated .npz", _truncated, ["data=array", "data.path={d}/truncated.npz"], "error"),
    ("data", ".npz without x", _npz("ab.npz", a=np.zeros((9, 2)), b=np.ones((9, 2))),
     ["data=array", "data.path={d}/ab.npz"], "error"),
    ("data", "complex array", _npy("x.npy", np.ones((9, 2)) * (1 + 1j)), A, "error"),
    ("data", "object array", _npy("x.npy", np.array([[1, "a"]] * 5, dtype=object)), A, "error"),
    ("data", "empty array", _npy("x.npy", np.zeros((0, 2))), A, "error"),
    ("data", "NaN in array", _npy("x.npy", np.array([[0.0, 1.0], [np.nan, 0.0]] * 3)), A, "error"),
    ("data", "rank-1 array", _npy("x.npy", np.zeros(7)), A, "error"),
    ("data", "uint8 images with 2 channels", _npy("x.npy", np.zeros((9, 2, 8, 8), np.uint8)),
     A + ["model=unet"], "error"),
    ("data", "uint8 images with 5 channels", _npy("x.npy", np.zeros((9, 5, 8, 8), np.uint8)),
     A + ["model=unet"], "error"),
    ("data", "uint8 images channels-last", _npy("x.npy", np.zeros((9, 8, 8, 3), np.uint8)),
     A + ["model=unet", "model.net.channels=8", "model.net.multipliers=[1]", "model.net.attention_resolutions=[]",
          "model.net.num_res_blocks=1", "model.net.groups=4", "train.batch_size=4", "likelihood=false"], "warning"),
    ("data", "labels array of the wrong length", _npz("xy.npz", x=np.zeros((9, 2)), y=np.zeros(4, int)),
     ["data=array", "data.path={d}/xy.npz", "data.labels=y"], "error"),
    ("data", "folder without images", lambda d: (d / "imgs").mkdir(), ["data=folder", "data.path={d}/imgs"], "error"),
    ("data", "decompression-bomb PNG", _bomb, ["data=folder", "data.path={d}/bomb"], "error"),
    ("data", "data far wider than the VP prior", _npy("x.npy", np.random.default_rng(0).normal(size=(500, 2)) * 50),
     A, "warning"),
    ("config", "sample.num=0", None, ["sample.num=0"], "error"),
    ("config", "sample.num=-5", None, ["sample.num=-5"], "error"),
    ("config", "sample.batch=0", None, ["sample.batch=0"], "error"),
    ("config", "eval.num=0", None, ["likelihood=true", "eval.num=0"], "error"),
    ("config", "eval.batch=0", None, ["likelihood=true", "eval.batch=0"], "error"),
    ("config", "eval.num beyond the held-out split", None,
     ["data=digits", "model=unet", "likelihood=true", "eval.num=1000"], "error"),
    ("config", "eval.ode.method=foo", None, ["likelihood=true", "eval.ode.method=foo"], "error"),
    ("config", "device=mps without it", None, ["device=mps"], "error"),
    ("config", "device=tpu", None, ["device=tpu"], "error"),
    ("config", "typo in a key", None, ["train.step=10"], "error"),
    ("config", "+typo at the top", None, ["+likelihod=true"], "error"),
    ("config", "+typo in a part", None, ["+train.step=10"], "error"),
    ("config", "typo in a group", None, ["solver=rk45"], "error"),
    ("config", "unknown sde target", None, ["sde._target_=nowhere.Nothing"], "error"),
    ("config", "beta_max < beta_min", None, ["sde.beta_min=20", "sde.beta_max=0.1"], "warning"),
    ("config", "negative warmup", None, ["train.warmup=-1"], "error"),
    ("config", "negative grad_clip", None, ["train.grad_clip=-1"], "error"),
    ("config", "train.lr=0", None, ["train.lr=0"], "error"),
    ("config", "solver.steps=0", None, ["solver.steps=0"], "error"),
    ("config", "sde.sigma_max below sigma_min", None, ["sde=ve", "sde.sigma_max=0.001"], "error"),
    ("config", "mixture sizes disagree", None, ["model=oracle", "data=gmm", "data.weights=[1,2,3]"], "error"),
    ("checkpoint", "missing", None, ["ckpt={d}/none.pt", "train.steps=0"], "error"),
    ("checkpoint", "not a checkpoint", lambda d: (d / "junk.pt").write_bytes(b"junk"),
     ["ckpt={d}/junk.pt", "train.steps=0"], "error"),
    ("checkpoint", "without ema, sampled", _drop("ema"), ["ckpt={d}/edited.pt", "train.steps=0"], "error"),
    ("checkpoint", "without optimizer, resumed", _drop("optimizer"), ["ckpt={d}/edited.pt", "train.steps=6"],
     "error"),
    ("checkpoint", "without torch_rng, resumed", _drop("torch_rng"), ["ckpt={d}/edited.pt", "train.steps=6"],
     "error"),
    ("checkpoint", "NaN EMA weights, sampled", _nan_ema, ["ckpt={d}/edited.pt", "train.steps=0"], "error"),
    ("checkpoint", "another process", _checkpoint, ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "sde=ve"],
     "error"),
    ("checkpoint", "another parameterization", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "model.parameterization=v"], "error"),
    ("checkpoint", "another sigma_data", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "model.sigma_data=0.5"], "error"),
    ("checkpoint", "another network", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "model.net.hidden=64"], "error"),
    ("checkpoint", "data of another shape", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "data=gmm_hd", "data.dim=3"], "error"),
    ("training", "learning rate that blows up", None, ["train.steps=300", "train.lr=1e6", "train.warmup=1"], "error"),
]

# --- torchrun: 2 CPU processes (gloo); the error printed once, by one process, every process gone with it ---------

FAIL_ON_ONE_RANK = '''"""run.py, with an error that rank FAIL_RANK alone meets: at FAIL_AT (train: its second training
step, the other rank then waiting in DDP's all-reduce; sample: the sampling task, the other rank sampling its
share), a ConfigError (FAIL_KIND=config) or a RuntimeError (bug)."""
import os

from sde.errors import ConfigError
from scoresde.cli import main as cli
from scoresde.tasks.sample import Sample
from scoresde.training import trainer


def fail(*args, **kwargs):
    raise (ConfigError if os.environ["FAIL_KIND"] == "config" else RuntimeError)(
        f"rank {os.environ['RANK']} alone met this")


if os.environ["RANK"] == os.environ["FAIL_RANK"]:
    if os.environ["FAIL_AT"] == "train":
        step, calls = trainer.train_step, []

        def train_step(*args, **kwargs):
            calls.append(1)
            return fail() if len(calls) == 2 else step(*args, **kwargs)
        trainer.train_step = train_step
    else:
        Sample.__call__ = fail

cli.main()
'''


def _fail_on_rank_one(at):
    """The case's entry point instead of run.py: entry.py, a config error that rank 1 alone meets at ``at``."""
    return lambda d: (d / "entry.py").write_text(
        f'import os\nos.environ.update(FAIL_RANK="1", FAIL_AT="{at}", FAIL_KIND="config")\n' + FAIL_ON_ONE_RANK)


def torchrun_py(out, overrides, cwd=None):
    """run.py (or the case's entry.py in ``cwd``) under torchrun on 2 CPU processes, each process's output in a
    file of its own. The answer holds the processes' stdout and stderr; its exit status is torchrun's when 0,
    else the exit status of the process that failed first (torchrun's root cause); torchrun's own stderr is
    added where it holds more than its failure summary (a traceback other than its ChildFailedError, a broken
    connection)."""
    cwd = Path(cwd or ROOT)
    entry = cwd / "entry.py" if (cwd / "entry.py").exists() else ROOT / "run.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as logs:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                               str(port), "--redirects", "3", "--log-dir", logs, str(entry), f"hydra.run.dir={out}",
                               "device=cpu", "threads=1", *overrides], capture_output=True, text=True, cwd=cwd, env=env,
                              timeout=600)
        ranks = sorted(Path(logs).glob("*/attempt_0/*"), key=lambda f: int(f.name))
        stdout = "".join((f / "stdout.log").read_text() for f in ranks)
        stderr = "".join((f / "stderr.log").read_text() for f in ranks)
    status = proc.returncode
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", proc.stderr, re.S)
    if status and root:
        status = int(root.group(1))
    own = proc.stderr.replace("Traceback", "", 1) if "ChildFailedError" in proc.stderr else proc.stderr
    if "Traceback" in own or "Connection closed" in own:
        stderr += proc.stderr
    return subprocess.CompletedProcess(proc.args, status, stdout, stderr)


TORCHRUN_CASES = [
    ("torchrun", "torchrun: solver.steps=-1 on every rank", None, ["solver.steps=-1"], "error"),
    ("torchrun", "torchrun: a key that does not exist", None, ["train.stepz=3"], "error"),
    ("torchrun", "torchrun: missing data file", None, ["data=array", "data.path={d}/missing.npy"], "error"),
    ("torchrun", "torchrun: global batch that does not split", None, ["train.batch_size=7"], "error"),
    ("torchrun", "torchrun: a sweep", None, ["-m", "solver.steps=3,4"], "error"),
    ("torchrun", "torchrun: config error on rank 1 alone, training", _fail_on_rank_one("train"), [], "error"),
    ("torchrun", "torchrun: config error on rank 1 alone, sampling", _fail_on_rank_one("sample"), [], "error"),
]
CASES += TORCHRUN_CASES
RUNNERS = {"torchrun": torchrun_py}


def _edit(fn):
    """A setup: the 3-step checkpoint of _checkpoint, edited by ``fn(state)`` into edited.pt."""
    return lambda d, runner: _checkpoint(d, runner, fn)


def _ema(fn):
    return _edit(lambda s: fn(s["ema"]["shadow"]))


def _rename_all(weights):
    for k in list(weights):
        weights["renamed." + k] = weights.pop(k)


def _wrong_shape(weights):
    k = next(k for k, v in weights.items() if v.ndim == 2)
    weights[k] = torch.zeros(3, 3)


def _moments_of_another_size(state):
    for moments in state["optimizer"]["state"].values():
        for k, v in moments.items():
            if k != "step":
                moments[k] = torch.zeros(*(n + 1 for n in v.shape))


def _finished_run(d, runner):
    """A finished run in d/out, the directory the case runs into."""
    runner(d / "out", ["train.steps=3", *SMALL], cwd=d)


def _read_only(d):
    """d/ro, a folder this process cannot write into (for root, which writes through modes, a link to /sys)."""
    if os.geteuid() == 0:
        (d / "ro").symlink_to("/sys")
    else:
        (d / "ro").mkdir()
        (d / "ro").chmod(0o555)


def _log_torn_past_checkpoint(d, runner):
    """A copy of the 3-step run whose train_log.csv ends in a row torn mid-write past the checkpoint."""
    _checkpoint(d, runner)
    import shutil

    shutil.copytree(d / "trained", d / "torn")
    with open(d / "torn" / "train_log.csv", "a") as fh:
        fh.write("4")


def _stale_temporary(d, runner):
    """The 3-step run with the temporary a write killed by SIGKILL leaves (pid 2**22 + 1: no such process)."""
    _checkpoint(d, runner)
    (d / "trained" / f"checkpoint.pt.tmp.{2**22 + 1}").write_bytes(b"torn")


_MOUNTS = []


def _on_tmpfs(size):
    """A setup: d/full, a link to a fresh tmpfs of ``size`` bytes, a disk that fills up during the case (mounting
    needs root; without it d/full is an ordinary folder and the case cannot fill it). Unmounted at exit."""
    def setup(d):
        mount = Path(tempfile.mkdtemp(prefix="bad_inputs_tmpfs_"))
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True).returncode == 0:
            _MOUNTS.append(mount)
        (d / "full").symlink_to(mount)
    return setup


@atexit.register
def _unmount():
    for mount in _MOUNTS:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
        if not os.path.ismount(mount):
            mount.rmdir()


_HOLDERS = []


def _held_by_a_live_run(d):
    """d/out with its .hydra/ and its lock held by another process, as a live run holds it (for two minutes)."""
    (d / "out" / ".hydra").mkdir(parents=True)
    (d / "out" / ".hydra" / "overrides.yaml").write_text("- train.steps=4000\n")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fh = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(fh, fcntl.LOCK_EX); fh.write(str(os.getpid())); fh.flush(); "
                               "print(flush=True); time.sleep(120)", str(d / "out" / ".lock")],
                              stdout=subprocess.PIPE)
    holder.stdout.readline()
    _HOLDERS.append(holder)


@atexit.register
def _stop_holders():
    for holder in _HOLDERS:
        holder.kill()
        holder.wait()


def _full_from_the_start(d):
    """d/out whose first write fails for want of space: its lock file is /dev/full."""
    (d / "out").mkdir()
    (d / "out" / ".lock").symlink_to("/dev/full")


E = ["ckpt={d}/edited.pt", "train.steps=0"]
R = ["ckpt={d}/edited.pt", "train.steps=6"]
RUNDIR_CASES = [
    ("checkpoint", "k07 EMA key missing, sampled", _ema(lambda w: w.pop(next(iter(w)))), E, "error"),
    ("checkpoint", "k08 model key missing, resumed", _edit(lambda s: s["model"].pop(next(iter(s["model"])))), R,
     "error"),
    ("checkpoint", "k09 every EMA key renamed, sampled", _ema(_rename_all), E, "error"),
    ("checkpoint", "k41 EMA with an extra key, sampled", _ema(lambda w: w.update(extra=torch.zeros(2))), E, "error"),
    ("checkpoint", "k28 EMA tensor of the wrong shape, sampled", _ema(_wrong_shape), E, "error"),
    ("checkpoint", "k34 meta a string", _edit(lambda s: s.update(meta="abc")), E, "error"),
    ("checkpoint", "k35 model weights a list", _edit(lambda s: s.update(model=[1, 2])), R, "error"),
    ("checkpoint", "k21 step 'abc', resumed", _edit(lambda s: s.update(step="abc")), R, "error"),
    ("checkpoint", "k22b step -5, resumed", _edit(lambda s: s.update(step=-5)), R, "error"),
    ("checkpoint", "k23 step 10**12, resumed", _edit(lambda s: s.update(step=10**12)), R, "error"),
    ("checkpoint", "k33 train.steps below the checkpoint's step", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=2"], "error"),
    ("checkpoint", "k24 optimizer state garbage, resumed",
     _edit(lambda s: s.update(optimizer={"state": {}, "param_groups": []})), R, "error"),
    ("checkpoint", "k24b optimizer moments of another size, resumed", _edit(_moments_of_another_size), R, "error"),
    ("checkpoint", "k25 data_generator garbage, resumed",
     _edit(lambda s: s.update(data_generator=torch.zeros(3, dtype=torch.uint8))), R, "error"),
    ("checkpoint", "k26 torch_rng garbage, resumed",
     _edit(lambda s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8))), R, "error"),
    ("checkpoint", "k36 EMA num_updates 'x', resumed", _edit(lambda s: s["ema"].update(num_updates="x")), R,
     "error"),
    ("paths", "x09 a fresh run into a finished run's directory", _finished_run, ["train.steps=5"], "error"),
    ("paths", "x12 a torn last log row past the checkpoint, resumed in place", _log_torn_past_checkpoint,
     ["hydra.run.dir={d}/torn", "ckpt={d}/torn", "train.steps=6"], "silent"),
    ("paths", "a stale checkpoint temporary where the run resumes from", _stale_temporary,
     ["ckpt={d}/trained", "train.steps=6"], "silent"),
    ("paths", "x06 a disk that fills up during a checkpoint write", _on_tmpfs(112 * 1024),
     ["hydra.run.dir={d}/full/run", "train.steps=6", "train.ckpt_every=3"], "error"),
    ("paths", "x07 a disk that fills up while samples.npz is written", _on_tmpfs(64 * 1024),
     ["hydra.run.dir={d}/full/run", "model=oracle", "data=gmm", "sample.num=20000"], "error"),
    ("paths", "x08 a disk full at the start (the first write fails: the lock file is /dev/full)",
     _full_from_the_start, [], "error"),
    ("paths", "x10 a second run into the directory of a live run", _held_by_a_live_run, [], "error"),
    ("paths", "h01 hydra.run.dir in a read-only folder", _read_only, ["hydra.run.dir={d}/ro/run"], "error"),
    ("paths", "h02 hydra.run.dir an existing file", lambda d: (d / "file").write_text("x"),
     ["hydra.run.dir={d}/file"], "error"),
    ("paths", "h04 hydra.run.dir under a file", lambda d: (d / "file").write_text("x"),
     ["hydra.run.dir={d}/file/run"], "error"),
    ("paths", "h05 hydra.run.dir=/proc/probe_run", None, ["hydra.run.dir=/proc/probe_run"], "error"),
    ("paths", "h06 hydra.run.dir=/dev/null", None, ["hydra.run.dir=/dev/null"], "error"),
    ("training", "u01 an undertrained model's samples beyond the data's range", None,
     ["train.steps=3", "sample.max_range=1e-3"], "warning"),
]
CASES += RUNDIR_CASES

VICTIM, GOOD = "victim.pt", b"a good checkpoint"
"""Every case's directory may hold VICTIM (another run's checkpoint, GOOD bytes) and a ``marker`` that code run by
a crafted file would create: a case that changes the one or makes the other is 'lost' or 'code-exec'."""


def _crafted(**meta):
    """A setup: the 3-step checkpoint with ``meta`` keys replaced (a callable naming VICTIM, marker or payload.pkl
    under {d}), as edited.pt; VICTIM written beside it."""
    def setup(d, runner):
        (d / VICTIM).write_bytes(GOOD)
        _checkpoint(d, runner, lambda s: s["meta"].update(_in(d, meta)))
    return setup


def _in(d, value):
    """``value`` with "{d}" in its strings replaced by the folder d, through dicts and lists."""
    if isinstance(value, dict):
        return {k: _in(d, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_in(d, v) for v in value]
    return value.replace("{d}", str(d)) if isinstance(value, str) else value


def _solver_value(key, value):
    """A setup: the 3-step checkpoint whose recorded solver config holds ``key``: ``value``."""
    return _edit(lambda s: s["meta"]["solver"].update({key: value}))


def _finished_sweep(d, runner):
    runner(d / "out", ["-m", f"hydra.sweep.dir={d}/sweep", "seed=1,2", "train.steps=3", *SMALL], cwd=d)


OPEN = {"_target_": "builtins.open", "file": "{d}/victim.pt", "mode": "w"}
PRINTER = {"_target_": "builtins.print", "_args_": ["payload"],
           "file": {"_target_": "builtins.open", "file": "{d}/payload.pkl", "mode": "w"}}
LOADER = {"_target_": "torch.load", "f": "{d}/payload.pkl", "weights_only": False}

# --- the Python front door ------------------------------------------------------------------------------------------

FRONTDOOR = """
import sys
import numpy as np
import torch
import scoresde
from models import MLP, MixtureScore, ScoreModel
from scoresde import Pipeline
try:
    from scoresde.data import DataSpec, GaussianMixture
except ImportError:  # the layout before the package rebuild, for the table of the code before issue 25
    from scoredata import DataSpec, GaussianMixture
from sde import ConfigError, VPSDE
sde = VPSDE()
mix = GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], [0.4, 0.4, 0.4], classes=[0, 1, 1])
oracle = Pipeline(sde, MixtureScore(sde, mix), mix)
net = Pipeline(sde, ScoreModel(MLP(shape=(2,), hidden=8, depth=1, embed_dim=8), sde).eval(), DataSpec((2,)))
digits = Pipeline(sde, lambda x, t: -x, DataSpec((1, 8, 8), levels=256, value_range=(-1, 1)))
x = mix.sample(5, torch.Generator().manual_seed(0))
quick = dict(method="rk4", steps=4, max_error=0)
try:
    {statement}
except ConfigError as e:
    print(f"error: {{e}}", file=sys.stderr)
    sys.exit(2)
"""


def frontdoor_py(out, statements, cwd=None):
    """The case's Python statement run against small pipelines (the oracle, an untrained network, 8-bit digits'
    description) in a process of its own; a ConfigError is printed as the command line prints it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", FRONTDOOR.format(statement=statements[0])], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)


FRONTDOOR_CASES = [("frontdoor", name, None, [statement], "error") for name, statement in [
    ("o10 pipe.sample with an unknown solver option", "oracle.sample(10, solver='dpm', bogus=3)"),
    ("o11 pipe.nll on shape (5, 3) for a 2-D model", "net.nll(torch.zeros(5, 3), **quick)"),
    ("o12 pipe.nll with a NaN point", "oracle.nll(torch.tensor([[0.0, float('nan')]]), **quick)"),
    ("o13 pipe.nll of int64 points", "net.nll(torch.zeros(5, 2, dtype=torch.int64), **quick)"),
    ("o15 pipe.nll on the meta device", "net.nll(torch.zeros(5, 2, device='meta'), **quick)"),
    ("o16 pipe.nll of a 1-D tensor", "net.nll(torch.zeros(2), **quick)"),
    ("o22 load(device='meta')", "scoresde.load('nowhere', device='meta')"),
    ("o24 pipe.sample(seed=2**70)", "oracle.sample(10, solver='ddim', seed=2**70)"),
    ("o28 pipe.elbo on shape (5, 3)", "oracle.elbo(torch.zeros(5, 3), draws=4)"),
    ("o33 pipe.nll with the null class as a label", "oracle.nll(x, labels=[2] * 5, **quick)"),
    ("o35 pipe.nll of points at 1e30", "oracle.nll(torch.full((5, 2), 1e30), **quick)"),
    ("o36 load(ema='maybe')", "scoresde.load('nowhere', ema='maybe')"),
    ("o38 pipe.sample(solver=5)", "oracle.sample(10, solver=5)"),
    ("o40 pipe.nll(batch=0)", "oracle.nll(x, batch=0, **quick)"),
    ("o43 pipe.nll of images on a 2-D model", "net.nll(torch.zeros(5, 1, 8, 8), **quick)"),
    ("o44 pipe.nll with a wrong label count", "oracle.nll(x, labels=[0, 1], **quick)"),
    ("o45 pipe.sample(progress='maybe')", "oracle.sample(10, solver='ddim', progress='maybe')"),
    ("o46 pipe.sample(10**12)", "oracle.sample(10**12, solver='ddim')"),
    ("o47 pipe.nll of 8-bit pixels at 5.0", "digits.nll(torch.full((2, 1, 8, 8), 5.0), **quick)"),
    ("pipe.nll with float labels", "oracle.nll(x, labels=[0.0] * 5, **quick)"),
    ("pipe.nll with labels on an unconditional model", "net.nll(x, labels=[0] * 5, **quick)"),
    ("pipe.nll with an unknown likelihood option", "oracle.nll(x, bogus=1)"),
    ("pipe.sample(num=0)", "oracle.sample(0, solver='ddim')"),
]]
FRONTDOOR_CASES.append(("frontdoor", "x02 scoresde.load of a checkpoint whose meta writes and torch.loads a pickle",
                        lambda d: _crafted(sde=PRINTER, data=LOADER)(d, run_py), ["scoresde.load('edited.pt')"],
                        "error"))
CASES += FRONTDOOR_CASES
RUNNERS["frontdoor"] = frontdoor_py


# ---- command-line values (issue 25, item 2): probe ids of /work/shared/probes/bad-inputs-2026-12.md in brackets


def _pngs(mode, value):
    """A folder of 12 small images of one value named .png, in PIL ``mode`` (L, I;16 for 16-bit PNGs, F for
    float TIFFs)."""
    def setup(d):
        from PIL import Image

        (d / "imgs").mkdir()
        for i in range(12):
            dtype = {"I;16": np.uint16, "F": np.float32}.get(mode, np.uint8)
            image = Image.fromarray(np.full((8, 8), value, dtype))
            image.save(d / "imgs" / f"{i}.png", format="TIFF" if mode == "F" else "PNG")
    return setup


def _labelled(labels, n=None):
    return _npz("xy.npz", x=np.random.default_rng(0).normal(size=(len(labels) if n is None else n, 2)),
                y=np.asarray(labels))


def _mask_file(array):
    return lambda d: np.save(d / "mask.npy", array)


FOLDER = ["data=folder", "data.path={d}/imgs", "data.channels=1", "data.size=8", "model=unet",
          "model.net.channels=8", "model.net.multipliers=[1]", "model.net.attention_resolutions=[]",
          "model.net.num_res_blocks=1", "model.net.groups=4", "train.batch_size=4", "solver.steps=2", "sample.num=4"]
XY = ["data=array", "data.path={d}/xy.npz", "data.labels=y"]
DIGITS = ["data=digits", "model=unet", "model.net.channels=8", "model.net.multipliers=[1]",
          "model.net.attention_resolutions=[]", "model.net.num_res_blocks=1", "model.net.groups=4",
          "train.batch_size=4", "solver.steps=2", "sample.num=4"]
INPAINT = ["model=oracle", "data=gmm", "task=inpaint", "solver=em", "solver.steps=5"]
CLI_CASES = [
    ("config", "[a06] sample.plot=maybe", None, ["sample.plot=maybe"], "error"),
    ("config", "[h13] ~KEY of a key the config lacks", None, ["~sample.nonexistent"], "error"),
    ("config", "[s13] progress=maybe", None, ["progress=maybe"], "error"),
    ("config", "[s15] ckpt_override=maybe", None, ["ckpt_override=maybe"], "error"),
    ("checkpoint", "[k51] ckpt_override=maybe with another sde", _checkpoint,
     ["ckpt={d}/trained/checkpoint.pt", "train.steps=0", "sde=ve", "ckpt_override=maybe"], "error"),
    ("config", "[t25] train.amp=maybe", None, ["train.amp=maybe"], "error"),
    ("config", "[t31] train.progress=maybe", None, ["train.progress=maybe"], "error"),
    ("solver", "[v09] solver.denoise=maybe", None, ["solver=em", "solver.denoise=maybe"], "error"),
    ("solver", "[v23] solver.lower_order_final=maybe", None, ["solver=dpm", "solver.lower_order_final=maybe"],
     "error"),
    ("config", "[--] eval.classifier.required=maybe", None, ["eval.classifier.required=maybe"], "error"),
    ("config", "[--] train.channels_last=maybe", None, ["train.channels_last=maybe"], "error"),
    ("config", "[--] loss.stratified=1", None, ["loss.stratified=1"], "error"),
    ("config", "[s02] seed=2**70", None, [f"seed={2 ** 70}"], "error"),
    ("config", "[s03] seed=abc", None, ["seed=abc"], "error"),
    ("config", "[s04] seed=1.5", None, ["seed=1.5"], "error"),
    ("config", "[--] seed=-1", None, ["seed=-1"], "error"),
    ("config", "[t29] train.seed=abc", None, ["train.seed=abc"], "error"),
    ("data", "[d43] data.seed=abc", _npy("x.npy", np.zeros((10, 2))), A + ["data.seed=abc"], "error"),
    ("inpaint", "[i24] mask.seed=abc", None, [*INPAINT, "mask=random", "mask.seed=abc"], "error"),
    ("config", "[s11] device=meta", None, ["device=meta"], "error"),
    ("data", "[d35] uint64 labels beyond int64", _labelled(np.array([0, 1] * 4 + [1, 2 ** 63 + 5], np.uint64)), XY,
     "error"),
    ("data", "[d36] string labels", _labelled(np.array(["a", "b"] * 5)), XY, "error"),
    ("data", "[d37] label 10**9", _labelled(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10 ** 9])), XY, "error"),
    ("data", "[d40] test_fraction leaving no training rows", _npy("x.npy", np.zeros((10, 2))),
     A + ["data.test_fraction=0.99"], "error"),
    ("data", "[f10] data.size=0", _pngs("L", 100), FOLDER + ["data.size=0"], "error"),
    ("data", "[f11] data.size=-4", _pngs("L", 100), FOLDER + ["data.size=-4"], "error"),
    ("data", "[f12] data.size=abc", _pngs("L", 100), FOLDER + ["data.size=abc"], "error"),
    ("data", "[f13] data.size=7.5", _pngs("L", 100), FOLDER + ["data.size=7.5"], "error"),
    ("data", "[f08] 16-bit PNGs", _pngs("I;16", 40000), FOLDER, "warning"),
    ("data", "[f21] float images (mode F)", _pngs("F", 0.5), FOLDER, "warning"),
    ("data", "[d31] data.key for a .npy", _npy("x.npy", np.random.default_rng(0).normal(size=(50, 2))),
     A + ["data.key=x"], "error"),
    ("data", "[d08] values 1e300", _npy("x.npy", np.random.default_rng(0).normal(size=(50, 2)) * 1e300), A,
     "error"),
    ("model", "[m12] dropout=1.5", None, DIGITS + ["model.net.dropout=1.5"], "error"),
    ("model", "[m13] dropout=-1", None, DIGITS + ["model.net.dropout=-1"], "error"),
    ("model", "[m14] attention_resolutions=[abc]", None, DIGITS + ["model.net.attention_resolutions=[abc]"], "error"),
    ("inpaint", "[i13] mask.fraction=0", None, [*INPAINT, "mask=random", "mask.fraction=0"], "error"),
    ("inpaint", "[i15] mask.box of the wrong length", None, [*DIGITS, "task=inpaint", "mask.box=[1,2]"], "error"),
    ("inpaint", "[i18] mask file of strings", _mask_file(np.array(["a", "b"])),
     [*INPAINT, "mask=file", "mask.path={d}/mask.npy"], "error"),
    ("inpaint", "[i18] mask file with NaN", _mask_file(np.array([np.nan, 1.0])),
     [*INPAINT, "mask=file", "mask.path={d}/mask.npy"], "error"),
    ("inpaint", "[i21] nothing unknown", None, [*INPAINT, "mask=coordinates", "mask.coordinates=[0,1]"], "error"),
    ("inpaint", "[i26] mask.box for vectors", None, [*INPAINT, "mask.box=[0,0,1,1]"], "error"),
    ("inpaint", "[i27] mask.box of floats", None, [*DIGITS, "task=inpaint", "mask.box=[0,0,2.7,3.9]"], "error"),
    ("loss", "[l11] loss.t_min >= T", None, ["sde=rf", "loss.t_min=0.9995"], "error"),
    ("config", "[e12] eval.ode.exact_max_dim=-1", None, ["+eval=ode", "eval.num=20", "eval.ode.exact_max_dim=-1"],
     "error"),
    ("config", "[e23] eval.ode.rtol=1e6", None, ["+eval=ode", "eval.num=20", "eval.ode.rtol=1e6"], "error"),
    ("config", "[e23] eval.ode.atol=0", None, ["+eval=ode", "eval.num=20", "eval.ode.atol=0"], "error"),
    ("paths", "[h11] broken override syntax", None, ["model.net.hidden=[1,"], "error"),
    ("paths", "[h12] interpolation to a missing key", None, ["sample.num=${{nothing.here}}"], "error"),
    ("paths", "[k45] ckpt=~/nonexistent", None, ["ckpt=~/nonexistent-scoresde.pt", "train.steps=0"], "error"),
    ("paths", "[x05] data.path=~/...", None, ["data=array", "data.path=~/nonexistent-scoresde.npy"], "error"),
    ("paths", "[h07] sweep whose second run is bad", None, ["-m", "train.steps=3,-1"], "error"),
    ("solver", "[v02] solver.eps=-1", None, ["solver=em", "solver.eps=-1"], "error"),
    ("solver", "[v03] solver.eps=1", None, ["solver=em", "solver.eps=1"], "error"),
    ("solver", "[v29] adaptive safety=5", None, ["model=oracle", "data=gmm", "solver=adaptive", "solver.safety=5"],
     "error"),
    ("solver", "[v30] adaptive max_iters=1", None, ["model=oracle", "data=gmm", "solver=adaptive",
                                                   "solver.max_iters=1"], "error"),
    ("sde", "[p06] vp T=1e6", None, ["sde.T=1e6"], "error"),
    ("sde", "[p14] vp beta_max=1e6", None, ["sde.beta_max=1e6"], "error"),
    ("sde", "[p15] ve sigma_max=1e30", None, ["sde=ve", "sde.sigma_max=1e30"], "error"),
    ("config", "[a14] guidance.scale=1e30", None, [*DIGITS, "train.cond_drop=0.1", "sample.classes=1",
                                                   "guidance.scale=1e30"], "error"),
    ("solver", "[v40] solver._target_=os.getcwd", None, ["solver._target_=os.getcwd"], "error"),
]
CASES += CLI_CASES


# ---- crafted checkpoints and run directories from any source (issue 25, items 3 and 4) ------------------------------

CRAFTED_CASES = [
    ("checkpoint", "x03 meta.sde = builtins.open(another run's checkpoint, 'w')", _crafted(sde=OPEN), E, "error"),
    ("checkpoint", "x04 meta.sde = shutil.copyfile(/dev/null, another run's checkpoint)",
     _crafted(sde={"_target_": "shutil.copyfile", "src": "/dev/null", "dst": "{d}/victim.pt"}), E, "error"),
    ("checkpoint", "x01 meta.sde writes a pickle, meta.data torch.loads it", _crafted(sde=PRINTER, data=LOADER), E,
     "error"),
    ("checkpoint", "meta.sde = os.system('touch marker')",
     _crafted(sde={"_target_": "os.system", "command": "touch {d}/marker"}), E, "error"),
    ("checkpoint", "meta.model.net = builtins.open(...) (nested)",
     _crafted(model={"_target_": "models.ScoreModel", "parameterization": "x0", "net": OPEN}), E, "error"),
    ("checkpoint", "a recorded solver value that is not a boolean (solver.denoise='maybe')",
     _solver_value("denoise", "maybe"), E, "error"),
    ("checkpoint", "a recorded solver value out of range (solver.steps=-3)", _solver_value("steps", -3), E, "error"),
    ("checkpoint", "a recorded sample count of 0", _edit(lambda s: s["meta"]["sample"].update(num=0)), E, "error"),
    ("paths", "hydra.run.dir by an interpolation onto a finished run", _finished_run,
     ["hydra.run.dir=${{hydra:runtime.cwd}}/out", "train.steps=5"], "error"),
    ("paths", "a sweep into a directory that holds a finished sweep", _finished_sweep,
     ["-m", "hydra.sweep.dir={d}/sweep", "seed=3"], "error"),
]
CASES += CRAFTED_CASES


def run_py(out, overrides, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={out}", *overrides],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=600)


def outcome(proc):
    """error (exit 2, one line), warning (exit 0, a one-line warning), traceback, multi-line, or silent."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    warned = any(line.startswith("warning: ") for line in proc.stderr.splitlines())
    if "Traceback" in proc.stderr:
        return "traceback"
    if proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "error"
    if proc.returncode != 0:
        return "multi-line"
    return "warning" if warned else "silent"


def probe(case, workdir, runner=None):
    """How ``case`` ended: (outcome, its error or warning line, the finished run), through ``runner(out,
    overrides, cwd=...)`` (default: the one RUNNERS names for the case's category, else run_py, a process of its
    own) returning a subprocess.CompletedProcess; a setup taking two arguments (a checkpoint to make) gets the
    runner too. A case that is refused (expected 'error') must leave every file it found as it was, else it is
    'lost'; code that a crafted file ran (a marker or payload.pkl made, VICTIM changed) makes it 'code-exec' or
    'lost' whatever the process printed."""
    category, name, setup, overrides, expected = case
    d, runner = Path(workdir), runner or RUNNERS.get(category, run_py)
    if setup is not None:
        try:
            setup(*[d, runner][:len(inspect.signature(setup).parameters)])
        except KeyError as e:  # a checkpoint of older code lacks what the case edits
            return "n/a", f"the case cannot be staged on this code (KeyError: {e})", None
    before = files(d)
    got, message, proc = _run_case(category, overrides, d, runner)
    after = files(d)
    if (d / "marker").exists() or (d / "payload.pkl").exists():
        return "code-exec", message, proc
    if VICTIM in before and after.get(VICTIM) != before[VICTIM]:
        return "lost", message, proc
    if expected == "error" and any(after.get(k) != v for k, v in before.items()):
        return "lost", message, proc
    return got, message, proc


def files(d):
    """{path relative to d: bytes} of the regular files under d (links and run locks left out)."""
    found = {}
    for root, dirs, names in os.walk(d):
        dirs[:] = [n for n in dirs if not os.path.islink(os.path.join(root, n))]
        for n in names:
            path = Path(root) / n
            if n != ".lock" and path.is_file() and not path.is_symlink():
                found[str(path.relative_to(d))] = path.read_bytes()
    return found


def _run_case(category, overrides, d, runner):
    if category == "frontdoor":
        proc = runner(d / "out", overrides, cwd=d)
        message = next((line for line in proc.stderr.splitlines() if line.startswith(("error: ", "warning: "))), "")
        return outcome(proc), message, proc
    args = [o.format(d=d) for o in overrides]
    other = {part for part in ("model", "solver") if any(a.startswith(f"{part}=") for a in args)}
    if "train.steps=0" in args and any(a.startswith("ckpt=") for a in args):
        other |= {"solver", "sample"}  # sampled as its training run sampled (SMALL's settings, or the case's own)
    args += [a for a in SMALL if a.split("=")[0] not in {o.split("=")[0] for o in args}
             and a.split("=")[0].split(".")[0] not in other]
    if "train.steps" not in " ".join(args):
        args.append("train.steps=3")
    proc = runner(d / "out", args, cwd=d)
    got = outcome(proc)
    message = next((line for line in proc.stderr.splitlines() if line.startswith(("error: ", "warning: "))), "")
    return got, message, proc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--start", type=int, default=0, help="begin at this case (0-based), to finish a run")
    args = parser.parse_args()
    rows, counts = [], {}
    start = time.perf_counter()
    for case in CASES[args.start:]:
        if args.only and args.only not in case[1]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            got, message, _ = probe(case, tmp)
        counts[got] = counts.get(got, 0) + 1
        ok = "yes" if got == case[4] else "**no**"
        rows.append(f"| {case[0]} | {case[1]} | {case[4]} | {got} | {ok} | `{message[:150]}` |")
        print(rows[-1], flush=True)
    summary = (f"{len(rows)} bad inputs tried: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in
               ("error", "warning", "traceback", "multi-line", "silent", "lost", "code-exec", "n/a")) +
               f"; {sum(r.count('| yes |') for r in rows)} as expected ({time.perf_counter() - start:.0f} s)")
    print(summary)
    if args.out:
        text = [f"Command: `python -m benchmarks.bad_inputs --out {args.out}`", "", summary, "",
                "| kind | input | expected | got | as expected | what the user sees |", "|---|---|---|---|---|---|",
                *rows, ""]
        args.out.write_text("\n".join(text))


if __name__ == "__main__":
    main()
