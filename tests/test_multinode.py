"""Two torchrun "nodes" on the loopback address (``--nnodes 2 --nproc-per-node 1``, the c10d rendezvous on
127.0.0.1 at a free port, gloo on the CPU, each node a torchrun process of its own in a folder of its own): they
take the steps one process takes at the same global batch, rank 0 alone writes, and a node whose torchrun is
killed (SIGKILL) ends the run on every process with one line on the survivor's stderr, the last good checkpoint
kept, from which the same command with ckpt= continues. Slow (one start of two torchruns)."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]

MATCH_LOSS = '''"""A loss without random draws (DSM draws its noise per rank), so that two nodes and one process take
comparable steps: mean |model(x0, 1/2) + x0 / 2|^2."""
import torch


class MatchLoss:
    def __init__(self, **options):
        pass

    def __call__(self, model, sde, x0, generator=None):
        return (model(x0, torch.full((len(x0),), 0.5)) + 0.5 * x0).pow(2).mean()
'''

SMALL = ["device=cpu", "threads=1", "model.net.hidden=16", "model.net.depth=1", "train.batch_size=32",
         "train.warmup=1", "train.sample_every=0", "sample.num=40", "solver.steps=5", "progress=false",
         "sample.max_range=0", "eval=[quality]", "loss._target_=matchloss.MatchLoss"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machines(tmp_path):
    """Two folders standing for two machines' working directories, each holding the loss module."""
    folders = [tmp_path / f"node{n}" for n in range(2)]
    for folder in folders:
        folder.mkdir()
        (folder / "matchloss.py").write_text(MATCH_LOSS)
    return folders


def start_nodes(tmp_path, folders, args, attempt):
    """Both nodes' torchrun, the first (which hosts the rendezvous store) started first; each process's output in
    logs/ATTEMPT/nodeN."""
    port, nodes = free_port(), []
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    for n, folder in enumerate(folders):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", attempt,
                   "--redirects", "3", "--log-dir", str(tmp_path / "logs" / attempt / f"node{n}"),
                   str(ROOT / "run.py"), *args]
        nodes.append(subprocess.Popen(command, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        if n == 0:
            time.sleep(0.3)
    return nodes


def finish(nodes, timeout):
    """Each node's (exit status, its torchrun's stderr); a node still running after ``timeout`` seconds fails the
    test (a hang): its workers are sent SIGABRT first (faulthandler writes their stacks into their logs)."""
    deadline, done = time.monotonic() + timeout, []
    for node in nodes:
        try:
            _, err = node.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for other in nodes:
                for w in (children(other.pid) if alive(other.pid) else []):
                    os.kill(w, signal.SIGABRT)
            time.sleep(1)
            for other in nodes:
                other.kill()
            pytest.fail(f"a node was still running {timeout} s on")
        done.append((node.returncode, err))
    return done


def worker_output(tmp_path, attempt, n):
    """Node n's worker: (its stdout, its stderr)."""
    folders = list((tmp_path / "logs" / attempt / f"node{n}").glob("*/attempt_0/0"))
    assert len(folders) == 1, folders
    return (folders[0] / "stdout.log").read_text(), (folders[0] / "stderr.log").read_text()


def children(pid):
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid):
    """Whether process ``pid`` runs (a zombie that nobody reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def in_one_process(args, out):
    """``python run.py ARGS`` into ``out`` in this process (its thread count restored after); the metrics."""
    from scoresde.cli.main import run

    threads = torch.get_num_threads()
    try:
        return run(args, out)
    finally:
        torch.set_num_threads(threads)


def weights(path):
    state = read_checkpoint(path)
    return state["step"], state["model"], state["ema"]["shadow"]


@pytest.mark.slow
def test_two_nodes_take_the_steps_of_one_process_and_a_killed_node_ends_every_process(tmp_path, monkeypatch):
    """One start of two nodes (global batch 32, 16 rows on each, a constant learning rate after one warm-up step, a
    checkpoint every 8 steps), of which exactly one machine's folder (rank 0's) receives the run directory and the
    other nothing. The torchrun of the first node (it hosts the rendezvous store) is then killed with SIGKILL: its
    worker, orphaned, leaves at once and silently; the other node's worker meets the lost peer and prints one line,
    nothing else, naming the checkpoint; every process is gone within seconds. The checkpoint reads whole, at a step
    S that is a multiple of 8, and its weights and EMA equal those of one process trained for S steps to float
    tolerance (its log's losses too); ``python run.py ckpt=... train.steps=S+8`` trains on from it (here in one
    process, which a checkpoint of two resumes as they would)."""
    folders = machines(tmp_path)
    args = [*SMALL, "train.steps=100000", "train.log_every=4", "train.ckpt_every=8", "train.schedule=constant"]
    nodes = start_nodes(tmp_path, folders, args, "kill")
    deadline = time.monotonic() + 60
    while not any(any(folder.glob("outputs/*/*/checkpoint.pt")) for folder in folders):
        assert time.monotonic() < deadline and all(node.poll() is None for node in nodes), "no checkpoint"
        time.sleep(0.1)
    time.sleep(0.5)
    workers = children(nodes[0].pid)
    assert len(workers) == 1
    start = time.perf_counter()
    nodes[0].send_signal(signal.SIGKILL)
    (killed, _), (survivor, launcher) = finish(nodes, 30)
    while alive(workers[0]) and time.perf_counter() - start < 10:
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    assert killed == -signal.SIGKILL and survivor != 0
    assert not alive(workers[0]), "the killed node's worker went on"

    written = [sorted(p.name for p in folder.iterdir() if p.name != "matchloss.py") for folder in folders]
    assert sorted(written) == [[], ["outputs"]], written
    main = folders[written.index(["outputs"])]
    runs = list(main.glob("outputs/*/*"))
    assert len(runs) == 1
    out = runs[0]
    orphan, other = worker_output(tmp_path, "kill", 0), worker_output(tmp_path, "kill", 1)
    assert orphan[1] == "" and "Traceback" not in orphan[0]
    line = other[1].splitlines()
    assert len(line) == 1 and line[0].startswith("error: rank ") and "left without a word" in line[0], other[1]
    assert str(out / "checkpoint.pt") in line[0] and "Traceback" not in other[0]
    assert seconds < 10

    step, model, ema = weights(out / "checkpoint.pt")
    assert step >= 8 and step % 8 == 0
    monkeypatch.syspath_prepend(str(folders[0]))
    again = [a for a in args if not a.startswith("train.steps=")]
    metrics = in_one_process([*again, f"train.steps={step}"], tmp_path / "one")
    assert metrics["train_steps"] == step and "processes" not in metrics
    one_step, one_model, one_ema = weights(tmp_path / "one" / "checkpoint.pt")
    assert one_step == step
    for mine, theirs in ((model, one_model), (ema, one_ema)):
        assert mine.keys() == theirs.keys()
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], rtol=1e-5, atol=1e-6, msg=k)
    rows = [[r.split(",")[:2] for r in (folder / "train_log.csv").read_text().splitlines()[1:]]
            for folder in (out, tmp_path / "one")]
    logged = [r for r in rows[0] if int(r[0]) <= step]
    assert [r[0] for r in logged] == [r[0] for r in rows[1]] == [str(s) for s in range(4, step + 1, 4)]
    torch.testing.assert_close(torch.tensor([float(r[1]) for r in logged]),
                               torch.tensor([float(r[1]) for r in rows[1]]), rtol=1e-4, atol=0)

    resumed = tmp_path / "resumed"
    metrics = in_one_process([*again, f"ckpt={out / 'checkpoint.pt'}", f"train.steps={step + 8}"], resumed)
    assert metrics["train_steps"] == step + 8
    assert read_checkpoint(resumed / "checkpoint.pt")["step"] == step + 8
    rows = (resumed / "train_log.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == str(step + 8)
    print(f"a killed node: every process gone in {seconds:.1f} s; {step} steps equal one process's")


# --- the parts, in this process ------------------------------------------------------------------------------------

@pytest.fixture
def worker_env(monkeypatch):
    """This process seen as a torchrun worker (rank 1 of 2, local rank 1) whose store is at a port nobody
    listens on, its failure state fresh."""
    from scoresde.training import distributed

    for key, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(free_port()), TORCHELASTIC_USE_AGENT_STORE="True").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed, "_failure", {"store": None, "announced": False, "first": False, "stop": None,
                                                  "lost": False})
    return distributed


def test_a_store_that_is_gone_counts_as_lost_and_local_rank_zero_prints(worker_env, monkeypatch):
    """No store at MASTER_ADDR:MASTER_PORT: it is lost for good; with no first process to agree on, local rank
    0 of each node is to print (rank 1 here is not, until it is local rank 0), and only once."""
    distributed = worker_env
    assert not distributed.store_alive() and distributed._failure["lost"] and distributed._store() is None
    assert distributed.peer_failure() is None
    assert distributed.announce_failure(2) is False
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setitem(distributed._failure, "announced", False)
    assert distributed.announce_failure(2) is True
    assert distributed.announce_failure(2) is False


def test_the_lost_peer_line_names_the_checkpoint(worker_env, tmp_path):
    distributed = worker_env
    distributed.keep_checkpoint_in(tmp_path / "checkpoint.pt")
    line = distributed.lost_peer_reason(RuntimeError("[pair.cc:537] Read error [127.0.0.1]:1: Connection reset by "
                                                     "peer. This is typically caused by a remote worker hanging"))
    assert line == (f"rank 1 of 2: a collective failed (Connection reset by peer): a process of this run left "
                    f"without a word (killed, or its node went down), so every process stops; rank 0 keeps the "
                    f"last good checkpoint in {tmp_path / 'checkpoint.pt'} (the run resumes from it)")
    distributed.keep_checkpoint_in(None)
    assert distributed.lost_peer_reason().endswith("the run's store stopped answering: a process of this run left "
                                                   "without a word (killed, or its node went down), so every "
                                                   "process stops")
    assert not distributed.lost_peer(RuntimeError("Connection reset by peer"))  # no process group: not a peer's


def test_tcpstores_note_on_a_dead_store_is_kept_off_stderr(capfd):
    """What C++ writes on descriptor 2 during a store request reaches stderr after it, less TCPStore's
    multi-line note on a failed request; the request's result or exception passes through."""
    from scoresde.training.distributed import quietly

    note = ("[rank1]:[W1207 17:46:35.472360233 TCPStore.cpp:125] [c10d] recvValue failed on SocketImpl(fd=9): "
            "Connection reset by peer\nException raised from recvBytes at /pytorch/c10d/Utils.hpp:784 (most recent "
            "call first):\nframe #0: c10::Error::Error(c10::SourceLocation) + 0x9d\n<omitting python frames>\n\n")

    def request():
        os.write(2, (note + "something else\n").encode())
        return 7

    assert quietly(request) == 7
    assert capfd.readouterr().err == "something else\n"
    with pytest.raises(ZeroDivisionError):
        quietly(lambda: os.write(2, note.encode()) / 0)
    assert capfd.readouterr().err == ""


def test_a_task_that_sees_fewer_gpus_takes_its_local_rank_among_them(monkeypatch):
    """cuda:LOCAL_RANK where the process sees that many GPUs; LOCAL_RANK mod their number where it sees fewer
    (SLURM's gpus_per_task=1 shows each task its own as cuda:0)."""
    from scoresde.training import distributed

    for key, value in dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="3").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.process_device("cuda") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.process_device("cuda:2") == torch.device("cuda", 0)
    assert distributed.process_device("cpu") == torch.device("cpu")
