"""DistributedDataParallel on the CPU with gloo and two processes (torch.multiprocessing, a free port): the same
steps as one process at the same global batch, checkpoints that move between one process and two, files from
rank 0 alone, and sampling and likelihoods split across the ranks and gathered in order. The tests on two
processes share one start of them (the fixture ``two``, forked from this process so that neither imports torch
again: about 7 s of CPU) and are slow.
Under torchrun an error is printed once and every process leaves with it; DDP's gradients arrive in their
buckets' layout."""
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from benchmarks.bad_inputs import FAIL_ON_ONE_RANK
from models import MixtureScore, ScoreModel, UNet
from scoresde.data import ArrayFile, GaussianMixture
from scoresde.data.loader import EpochOrder
from scoresde import Pipeline
from sde import VPSDE
from sde.errors import ConfigError
from scoresde.training import DSMLoss, Trainer, distributed
from scoresde.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


class TinyNet(nn.Module):
    """(x, t[, labels]) → tanh(W [x, t] + b) (+ a class embedding), the shape of x."""

    def __init__(self, shape, num_classes=None):
        super().__init__()
        dim = int(np.prod(shape))
        self.lin = nn.Linear(dim + 1, dim)
        self.num_classes = num_classes
        if num_classes is not None:
            self.embed = nn.Embedding(num_classes + 1, dim)

    def forward(self, x, t, labels=None):
        out = torch.tanh(self.lin(torch.cat([x.flatten(1), t.reshape(-1, 1)], 1)))
        if labels is not None:
            out = out + self.embed(labels)
        return out.reshape(x.shape)


class MatchLoss:
    """A loss without random draws, so that one process and several take bit-comparable steps:
    mean ‖model(x0, ½) + x0 / 2‖²."""

    def __call__(self, model, sde, x0, generator=None):
        return (model(x0, torch.full((len(x0),), 0.5)) + 0.5 * x0).pow(2).mean()


class RecordingDSM(DSMLoss):
    """DSMLoss that keeps the state of the noise generator it is handed at each call."""

    def __init__(self):
        super().__init__()
        self.states = []

    def __call__(self, model, sde, x0, generator=None):
        self.states.append(generator.get_state().clone())
        return super().__call__(model, sde, x0, generator)


def conditional_mixture():
    return GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], [0.3, 0.4, 0.5], classes=[0, 1, 1])


def pixels_file(folder):
    """A small uint8 image array (40, 1, 4, 4) in a .npy file: the 8-bit reader (memory-mapped, DataLoader)."""
    path = Path(folder) / "pixels.npy"
    if not path.exists():
        np.save(path, np.random.default_rng(0).integers(0, 256, (40, 1, 4, 4), dtype=np.uint8))
    return path


def trainer(steps, **kw):
    options = dict(steps=steps, batch_size=8, lr=1e-2, warmup=1, grad_clip=1.0, ema_decay=0.9, ckpt_every=100,
                   amp=False, progress=False, seed=3, log_every=2)
    return Trainer(**{**options, **kw})


def fit(kind, steps, out, loss=None, resume=None, **kw):
    """One of the test's training runs; returns the trained and EMA weights."""
    torch.manual_seed(0)
    if kind == "generated":
        data = conditional_mixture()
        model, kw = TinyNet(data.shape, data.num_classes), {"accumulate": 2, "cond_drop": 0.5, **kw}
    else:
        data = ArrayFile(pixels_file(Path(out).parents[1]), flip=True)
        model = TinyNet(data.shape)
    ema, step = trainer(steps, **kw).fit(model, loss or MatchLoss(), VPSDE(), data, out, "cpu", resume=resume)
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "ema": {k: v.clone() for k, v in ema.state_dict().items()}, "step": step}


# --- what the two processes run --------------------------------------------------------------------------------

def job_same_steps(tmp):
    """Both data paths under DDP, each rank writing into its own folder; the samples drawn by on_sample."""
    rank = distributed.rank()
    out = {kind: fit(kind, 4, tmp / kind / f"rank{rank}") for kind in ("generated", "pixels")}
    calls = []
    torch.manual_seed(0)
    data = conditional_mixture()
    Trainer(steps=2, batch_size=4, sample_every=1, progress=False, amp=False, warmup=1).fit(
        TinyNet(data.shape), MatchLoss(), VPSDE(), data, tmp / "sampled" / f"rank{rank}", "cpu",
        on_sample=lambda step, model: calls.append((step, Pipeline(VPSDE(), model, data).sample(
            3, "em", steps=4, generator=torch.Generator().manual_seed(1)))))
    out["calls"] = calls
    return out


def job_dsm(tmp):
    """DSM under DDP (its noise drawn per rank), straight through and resumed from a checkpoint of step 2."""
    rank = distributed.rank()
    loss = RecordingDSM()
    straight = fit("generated", 4, tmp / "straight" / f"rank{rank}", loss=loss)
    fit("generated", 2, tmp / "half" / f"rank{rank}", loss=DSMLoss())
    resumed = fit("generated", 4, tmp / "resumed" / f"rank{rank}", loss=DSMLoss(),
                  resume=tmp / "half" / "rank0" / "checkpoint.pt")
    return {"straight": straight, "resumed": resumed, "noise": loss.states}


def job_checkpoints(tmp):
    """A checkpoint written by two processes (step 2), and one process's checkpoint continued by two."""
    rank = distributed.rank()
    fit("generated", 2, tmp / "ddp_half" / f"rank{rank}")
    return fit("generated", 4, tmp / "from_one" / f"rank{rank}", resume=tmp / "one_half" / "checkpoint.pt")


def job_evaluation(tmp):
    """Sampling, inpainting, NLL and ELBO of the exact mixture score, split across the ranks and gathered."""
    return evaluate(torch.Generator().manual_seed(5))


def evaluate(base, rank=None):
    """The collective calls of job_evaluation (7 points; inpainting 2 points × 4 completions). With ``rank``,
    in one process: the same calls on that rank's share of the points, each with the generator the rank draws
    from ``base`` for that call."""
    data = conditional_mixture()
    pipe = Pipeline(VPSDE(), MixtureScore(VPSDE(), data), data)
    x_test = data.test(7, torch.Generator().manual_seed(2))
    share = slice(None) if rank is None else slice(*distributed.shard_range(7, rank, WORLD))
    gen = (lambda: base) if rank is None else (lambda: distributed.rank_generator(base, rank, WORLD))
    samples = pipe.sample(len(x_test[share]), "em", steps=6, generator=gen())
    nll = pipe.nll(x_test[share], method="rk4", steps=4, generator=gen(), max_error=1e9)
    bound, stderr = pipe.elbo(x_test[share], draws=8, generator=gen())
    known = slice(0, 2) if rank is None else slice(rank, rank + 1)
    completions = pipe.inpaint(x_test[known], torch.tensor([True, False]), "em", completions=4, steps=5,
                               generator=gen(), batch=3)
    out = {"samples": samples, "nll": nll, "elbo": bound, "stderr": stderr, "inpaint": completions}
    if rank is None:
        out["rows"] = distributed.split_rows(
            lambda x: torch.stack([x.sum(1), torch.full((len(x),), float(distributed.rank()))], 1))(x_test)
    return out


def join(rank, port):
    """This process as rank ``rank`` of WORLD gloo processes on one thread, as torchrun would start it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu")


def worker(rank, port, tmp):
    """Every job, one after the other, in one pair of processes (starting them is most of the cost)."""
    join(rank, port)
    try:
        for job in JOBS:
            torch.save(job(Path(tmp)), Path(tmp) / f"{job.__name__}.{rank}.pt")
    finally:
        distributed.shutdown()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The folder the jobs ran in, on two gloo processes forked from this one (which has joined no process group),
    after what they need was made in this one."""
    tmp = tmp_path_factory.mktemp("ddp")
    pixels_file(tmp)
    np.save(tmp / "digits.npy", np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8))
    fit("generated", 2, tmp / "one_half")
    mp.start_processes(worker, args=(free_port(), str(tmp)), nprocs=WORLD, join=True, start_method="fork")
    return tmp


def results(tmp, job):
    """A job's result on each rank."""
    return [torch.load(Path(tmp) / f"{job}.{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_same_weights(a, b, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")) if Path(folder).exists() else []


# --- tests -------------------------------------------------------------------------------------------------------

def test_shares_tile_the_range_in_order():
    for n in (1, 7, 8, 128):
        for world in (1, 2, 3, 8):
            ranges = [distributed.shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(hi - lo for lo, hi in ranges) - min(hi - lo for lo, hi in ranges) <= 1


def test_one_process_is_rank_zero_of_one():
    gen = torch.Generator().manual_seed(4)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.rank_generator(gen) is gen and distributed.rank_seed(7, 0) == 7
    x = torch.arange(5.0)
    assert distributed.gather_cat(x) is x and distributed.broadcast_object("d") == "d"
    assert len({distributed.rank_seed(7, r) for r in range(4)}) == 4


def test_the_parts_of_a_batch_are_the_batch():
    """EpochOrder's parts of each batch, concatenated in rank order, are the whole batch (rows and flips)."""
    whole = EpochOrder(np.arange(11), 6, seed=2, start=1, flip=True)
    parts = [EpochOrder(np.arange(11), 6, seed=2, start=1, flip=True, part=(r, 3)) for r in range(3)]
    for batch, *shares in zip(whole, *parts):
        assert [len(s[0]) for s in shares] == [2, 2, 2]
        assert np.array_equal(batch[0], np.concatenate([s[0] for s in shares]))
        assert np.array_equal(batch[1], np.concatenate([s[1] for s in shares]))
        break


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(ConfigError, match=r"batch_size=6 \(the global batch\) does not split into 4 processes"):
        Trainer(batch_size=6).local_batch(4)
    with pytest.raises(ConfigError, match="use a multiple of 8"):
        Trainer(batch_size=12, accumulate=2).local_batch(4)
    assert Trainer(batch_size=12, accumulate=2).local_batch(3) == 4


def test_other_ranks_leave_the_run_folder_to_rank_zero(monkeypatch):
    """Under torchrun a rank other than 0 gets Hydra overrides that write nothing; a sweep is refused."""
    monkeypatch.syspath_prepend(str(ROOT))
    import run

    assert run.quiet_other_ranks(["train.steps=5"]) == ["train.steps=5"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert run.quiet_other_ranks(["train.steps=5"]) == ["train.steps=5"]
    with pytest.raises(ConfigError, match="sweeps"):
        run.quiet_other_ranks(["-m", "solver=em,pc"])
    monkeypatch.setenv("RANK", "1")
    extra = run.quiet_other_ranks(["train.steps=5"])[1:]
    assert {"hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra.run.dir=."} <= set(extra)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_at_the_same_global_batch(two):
    """A generated set (global batch drawn from the shared stream, each rank keeping its half; labels dropped
    and gradients accumulated) and an 8-bit .npy read through the DataLoader (each rank reading its rows,
    flipped and dequantized as the whole batch is): after 4 steps the weights and the EMA of both ranks equal
    those of one process. Only rank 0 writes; the sample callback runs on both ranks, which gather the same
    samples."""
    tmp_path, ranks = two, results(two, "job_same_steps")
    for kind in ("generated", "pixels"):
        one = fit(kind, 4, tmp_path / "one" / kind)
        for r in ranks:
            assert r[kind]["step"] == 4
            assert_same_weights(r[kind]["model"], one["model"])
            assert_same_weights(r[kind]["ema"], one["ema"])
        assert files_under(tmp_path / kind / "rank0") == ["checkpoint.pt", "train_log.csv"]
        assert files_under(tmp_path / kind / "rank1") == []
        log = (tmp_path / kind / "rank0" / "train_log.csv").read_text().splitlines()
        mine = (tmp_path / "one" / kind / "train_log.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in log] == [row.split(",")[0] for row in mine]
        np.testing.assert_allclose([float(row.split(",")[1]) for row in log[1:]],
                                   [float(row.split(",")[1]) for row in mine[1:]], rtol=1e-4)
    calls = [r["calls"] for r in ranks]
    assert [c[0] for c in calls[0]] == [c[0] for c in calls[1]] == [1, 2]
    for (_, a), (_, b) in zip(*calls):
        assert a.shape == (3, 2) and torch.equal(a, b)


@pytest.mark.slow
def test_dsm_under_ddp_keeps_the_ranks_equal_with_their_own_noise(two):
    """DSM draws its noise per rank: the ranks' noise streams differ (rank 0's is one process's), their weights
    stay identical, and a run resumed on two processes from a checkpoint of step 2 continues exactly."""
    tmp_path, ranks = two, results(two, "job_dsm")
    assert_same_weights(ranks[0]["straight"]["model"], ranks[1]["straight"]["model"], exact=True)
    assert_same_weights(ranks[0]["straight"]["ema"], ranks[1]["straight"]["ema"], exact=True)
    noise = [r["noise"][:8] for r in ranks]  # 4 steps of 2 micro-batches (then the final check's batch)
    for a, b in zip(*noise):
        draws = [torch.randn(4, generator=torch.Generator().set_state(s)) for s in (a, b)]
        assert not torch.equal(*draws)
    assert torch.equal(noise[0][0], torch.Generator().manual_seed(3 + 1).get_state())
    for r in ranks:
        assert_same_weights(r["resumed"]["model"], ranks[0]["straight"]["model"], exact=True)
    saved = read_checkpoint(tmp_path / "half" / "rank0" / "checkpoint.pt")
    assert len(saved["ranks"]) == 2 and not torch.equal(saved["ranks"][0]["noise_generator"],
                                                        saved["ranks"][1]["noise_generator"])


@pytest.mark.slow
def test_checkpoints_move_between_one_process_and_two(two, tmp_path):
    """A checkpoint of two processes continued by one, and one process's continued by two, both end where one
    process going straight through ends."""
    ranks = results(two, "job_checkpoints")
    straight = fit("generated", 4, tmp_path / "straight")
    from_two = fit("generated", 4, tmp_path / "from_two", resume=two / "ddp_half" / "rank0" / "checkpoint.pt")
    for got in (ranks[0], ranks[1], from_two):
        assert got["step"] == 4
        assert_same_weights(got["model"], straight["model"])
        assert_same_weights(got["ema"], straight["ema"])


@pytest.mark.slow
def test_sharded_sampling_and_likelihoods_gather_the_shares_in_order(two):
    """7 points over 2 ranks (3 and 4): what every rank gets back is rank 0's share followed by rank 1's, each
    computed with the rank's own generator (the same calls made in one process on that share)."""
    ranks = results(two, "job_evaluation")
    shares = [evaluate(torch.Generator().manual_seed(5), r) for r in range(WORLD)]
    for key, n in (("samples", 7), ("nll", 7), ("elbo", 7), ("stderr", 7), ("inpaint", 8)):
        expected = torch.cat([s[key] for s in shares])
        assert len(expected) == n and len(shares[0][key]) == n // 2
        for got in ranks:
            torch.testing.assert_close(got[key], expected, rtol=1e-6, atol=1e-7, msg=key)
    assert not torch.allclose(shares[0]["samples"][:3], ranks[0]["samples"][3:6])


@pytest.mark.slow
def test_split_rows_computes_each_share_on_its_rank_and_gathers_in_order(two):
    """A per-row function (as FID's feature network) split across 2 ranks: rows 0-2 computed by rank 0, 3-6 by
    rank 1, every rank getting back all 7 rows in order."""
    x = conditional_mixture().test(7, torch.Generator().manual_seed(2))
    for got in results(two, "job_evaluation"):
        torch.testing.assert_close(got["rows"][:, 0], x.sum(1))
        assert got["rows"][:, 1].tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.slow
def test_torchrun_trains_and_only_rank_zero_writes(tmp_path):
    """python -m torch.distributed.run --nproc_per_node=2 run.py: one run folder (rank 0's timestamped one), its
    files complete, nothing else written by rank 1 (a checkpoint moving between one process and two:
    test_checkpoints_move_between_one_process_and_two; a given folder under torchrun:
    test_other_ranks_leave_the_run_folder_to_rank_zero)."""
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
            str(ROOT / "run.py"), "device=cpu", "threads=1", "train.batch_size=64", "train.log_every=5",
            "train.ckpt_every=10", "model.net.hidden=32", "model.net.depth=1", "sample.num=200", "sample.max_range=0",
            "solver.steps=20", "progress=false", "train.sample_every=10"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    done = subprocess.run(base + ["train.steps=10"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.glob("outputs/*/*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"] and len(runs) == 1
    out = runs[0]
    names = set(files_under(out))
    assert {"checkpoint.pt", "train_log.csv", "metrics.json", "samples.npz", "samples.png", "samples_step10.png",
            ".hydra", "run.log"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["train_steps"] == 10
    assert np.load(out / "samples.npz")["x"].shape == (200, 2)
    assert done.stdout.count("train_steps") == 1
    print(f"torchrun, 2 processes, 10 steps + sampling: {seconds:.1f} s")


# --- leaving together under torchrun ------------------------------------------------------------------------------

@pytest.fixture
def agent_store(monkeypatch):
    """A store as torchrun's agent keeps one, with the environment a worker of rank 0 of 2 sees."""
    port = free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=5))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(key, "0")
    monkeypatch.setattr(distributed, "_failure", {"store": None, "announced": False, "first": False, "stop": None})
    yield store


def as_rank(monkeypatch, index):
    """This process seen as the worker of rank ``index``, its announcements forgotten."""
    monkeypatch.setenv("RANK", str(index))
    monkeypatch.setenv("LOCAL_RANK", str(index))
    monkeypatch.setattr(distributed, "_failure", {"store": None, "announced": False, "first": False, "stop": None})


def test_the_first_process_to_announce_an_error_prints_it(agent_store, monkeypatch):
    """Rank 1 announces first and is to print; rank 0, announcing after it, is not, and sees rank 1's exit
    status; rank 0 leaves only after rank 1 marked its reason printed (at most its waiting time), both with the
    status 2."""
    as_rank(monkeypatch, 1)
    assert distributed.peer_failure() is None
    assert distributed.announce_failure(2) is True
    assert distributed.peer_failure() is None
    first = distributed._failure
    as_rank(monkeypatch, 0)
    assert distributed.peer_failure() == 2
    assert distributed.announce_failure(2) is False
    start = time.perf_counter()
    with pytest.raises(SystemExit) as left:
        distributed.leave_after_report(2, seconds=0.5)
    assert left.value.code == 2 and time.perf_counter() - start >= 0.4
    monkeypatch.setattr(distributed, "_failure", first)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as left:
        distributed.leave_after_report(2)
    assert left.value.code == 2
    assert torch.distributed.PrefixStore("none/0", agent_store).get(distributed.REPORTED) == b"1"
    as_rank(monkeypatch, 0)
    start = time.perf_counter()
    with pytest.raises(SystemExit):
        distributed.leave_after_report(2, seconds=5)
    assert time.perf_counter() - start < 1


def test_one_line_errors_prints_once_across_processes(agent_store, monkeypatch, capsys):
    """The same config error met by both ranks: one line from the first; a later rank's config error, or the
    broken collective that the first one's leaving causes, ends it with the first's status without a word."""
    from scoresde.cli.errors import one_line_errors

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    as_rank(monkeypatch, 1)
    with pytest.raises(SystemExit) as left, one_line_errors():
        raise ConfigError("solver.steps=-1 is invalid: expected an integer >= 1")
    assert left.value.code == 2
    assert capsys.readouterr().err == "error: solver.steps=-1 is invalid: expected an integer >= 1\n"
    for raised in (ConfigError("solver.steps=-1 is invalid"), RuntimeError("Connection closed by peer")):
        as_rank(monkeypatch, 0)
        with pytest.raises(SystemExit) as left, one_line_errors():
            raise raised
        assert left.value.code == 2 and capsys.readouterr().err == ""


def test_outside_torchrun_every_error_is_printed(monkeypatch, capsys):
    from scoresde.cli.errors import one_line_errors

    for key in distributed.ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for _ in range(2):
        with pytest.raises(SystemExit) as left, one_line_errors():
            raise ConfigError("seed='abc' is invalid")
        assert left.value.code == 2 and capsys.readouterr().err == "error: seed='abc' is invalid\n"
    with pytest.raises(SystemExit) as left, one_line_errors():
        raise RuntimeError("a bug")
    assert left.value.code == 1 and "Traceback" in capsys.readouterr().err


TORCHRUN_SMALL = ["device=cpu", "threads=1", "train.steps=4", "train.batch_size=32", "model.net.hidden=32",
                  "model.net.depth=1", "sample.num=40", "solver.steps=5", "progress=false"]


def torchrun(tmp_path, script, args, **env):
    """``script`` ARGS under torchrun on 2 CPU processes in ``tmp_path`` (``env`` added to the environment), each
    process's output in a file of its own: (torchrun's exit status, its own stderr, [each process's stdout and
    stderr], seconds)."""
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
               str(free_port()), "--redirects", "3", "--log-dir", str(logs), str(script), *args]
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    outputs = [(folder / "stdout.log").read_text() + (folder / "stderr.log").read_text()
               for folder in sorted(logs.glob("*/attempt_0/*"), key=lambda f: int(f.name))]
    assert len(outputs) == WORLD, done.stderr[-3000:]
    return done.returncode, done.stderr, outputs, seconds


def assert_left_together(status, launcher, outputs, seconds, line):
    """torchrun failed; of both processes exactly one printed an ``error:`` line, one that starts with ``line``;
    no process printed a
    traceback (the launcher's own summary, ChildFailedError's, is torchrun's); a broken connection was not
    reported; every process was gone within seconds."""
    assert status != 0
    said = [row for out in outputs for row in out.splitlines() if row.startswith("error:")]
    assert len(said) == 1 and said[0].startswith(line), outputs
    assert not any("Traceback" in out for out in outputs), outputs
    assert "Connection closed" not in launcher and launcher.count("Traceback") <= 1
    assert "Traceback" not in launcher or "ChildFailedError" in launcher
    assert seconds < 30


@pytest.mark.slow
@pytest.mark.parametrize("bad, line", [
    ("solver.steps=-1", "error: solver.steps=-1 is invalid: expected an integer >= 1")])
def test_under_torchrun_a_config_error_is_printed_once(tmp_path, bad, line):
    """A config error that every process meets after the group is joined, before training: one line, from one
    process, nothing written, torchrun exits non-zero (an error before the group is joined:
    benchmarks/bad_inputs.py TORCHRUN_CASES)."""
    status, launcher, outputs, seconds = torchrun(tmp_path, ROOT / "run.py",
                                                  [*TORCHRUN_SMALL, bad, f"hydra.run.dir={tmp_path / 'out'}"])
    assert_left_together(status, launcher, outputs, seconds, line)
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["train"])
def test_under_torchrun_an_error_on_one_rank_alone_is_printed_once(tmp_path, where):
    """Rank 1 alone meets a config error during training (rank 0 waiting in DDP's all-reduce): its line is
    printed once, rank 0 leaves with it quietly and at once (its watchdog, or the broken collective), torchrun
    exits non-zero (while sampling: benchmarks/bad_inputs.py TORCHRUN_CASES)."""
    (tmp_path / "fail_on_rank.py").write_text(FAIL_ON_ONE_RANK)
    status, launcher, outputs, seconds = torchrun(
        tmp_path, tmp_path / "fail_on_rank.py", [*TORCHRUN_SMALL, f"hydra.run.dir={tmp_path / 'out'}"],
        FAIL_RANK="1", FAIL_AT=where, FAIL_KIND="config")
    assert_left_together(status, launcher, outputs, seconds, "error: rank 1 alone met this")
    assert "error:" in outputs[1]


@pytest.mark.slow
def test_under_torchrun_a_bug_on_one_rank_keeps_one_traceback(tmp_path):
    """A bug (RuntimeError) on rank 1 while training: its traceback, once; rank 0 leaves without one."""
    (tmp_path / "fail_on_rank.py").write_text(FAIL_ON_ONE_RANK)
    status, launcher, outputs, seconds = torchrun(
        tmp_path, tmp_path / "fail_on_rank.py", [*TORCHRUN_SMALL, f"hydra.run.dir={tmp_path / 'out'}"],
        FAIL_RANK="1", FAIL_AT="train", FAIL_KIND="bug")
    assert status != 0 and seconds < 30
    assert outputs[1].count("Traceback") == 1 and "RuntimeError: rank 1 alone met this" in outputs[1]
    assert "Traceback" not in outputs[0] and "Connection closed" not in outputs[0] + launcher


# --- DDP's gradient layout -----------------------------------------------------------------------------------------

def test_gradients_of_a_one_by_one_kernel_take_the_parameters_strides():
    """A 1×1 convolution fed a channels-last view (as the U-Net's attention output) gets a gradient in
    channels-last strides; with match_gradient_strides the same values arrive in the parameter's strides, and a
    gradient whose layout differs in a dimension of size > 1 is left as it is."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, 16).transpose(1, 2).reshape(16, 16, 2, 2)
    grads = []
    for hooked in (False, True):
        torch.manual_seed(1)
        conv = nn.Conv2d(16, 16, 1)
        if hooked:
            assert len(distributed.match_gradient_strides(conv)) == 1
        conv(x).square().sum().backward()
        grads.append(conv.weight.grad)
    assert grads[0].stride() != conv.weight.stride() and grads[1].stride() == conv.weight.stride()
    assert torch.equal(grads[0], grads[1])
    other = torch.randn(16, 16, 1, 1).transpose(0, 1)
    assert distributed._with_strides((16, 1, 1, 1))(other) is other


def job_strides(tmp):
    """Two steps of a small U-Net through Trainer (distributed.wrap), then one backward of the same network in a
    plain DistributedDataParallel: the warnings each raised."""
    from torch.nn.parallel import DistributedDataParallel

    data = ArrayFile(Path(tmp) / "digits.npy")
    net = lambda: ScoreModel(UNet(data.shape, channels=8, multipliers=(1, 2), num_res_blocks=1,  # noqa: E731
                                  attention_resolutions=(4,), groups=4), VPSDE())
    caught = {}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        Trainer(steps=2, batch_size=32, progress=False, amp=False, warmup=1, log_every=1).fit(
            net(), DSMLoss(), VPSDE(), data, Path(tmp) / f"rank{distributed.rank()}", "cpu")
        caught["wrap"] = [str(w.message) for w in seen]
        seen.clear()
        plain = DistributedDataParallel(net())
        x = torch.as_tensor(np.load(Path(tmp) / "digits.npy")[:16], dtype=torch.float32) / 127.5 - 1
        plain(x, torch.full((16,), 0.5)).square().mean().backward()
        caught["plain"] = [str(w.message) for w in seen]
    return caught


JOBS = (job_same_steps, job_dsm, job_checkpoints, job_evaluation, job_strides)


@pytest.mark.slow
def test_ddp_of_the_unet_takes_gradients_in_its_buckets_layout(two):
    """Two gloo processes train a small U-Net (8 × 8 images, attention at 4 × 4) for two steps without DDP's
    `Grad strides do not match bucket view strides` warning; the same network in a plain DDP warns (so the check
    sees the warning where there is one)."""
    for caught in results(two, "job_strides"):
        assert not [w for w in caught["wrap"] if "Grad strides" in w], caught["wrap"]
        assert any("Grad strides do not match bucket view strides" in w for w in caught["plain"])
