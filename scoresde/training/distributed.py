"""Process groups for training and evaluation on several processes started by torchrun (one per GPU, or CPU
processes with gloo): who am I, my share of the work, and putting the shares back together.

Outside torchrun (no RANK/WORLD_SIZE in the environment) every helper answers as the only process does: rank 0 of
1, the whole range, the tensor itself.

Leaving together: a process that stops on an error announces it in the run's store (the rendezvous TCPStore every
process reaches) before it says anything; the first to announce prints its reason, any other leaves without a word
once that reason is printed, and a watchdog thread ends a process whose peer announced an error (its main thread
may be waiting in a collective for the peer that left), with the peer's exit status.

Losing a process without a word (a node whose torchrun agent was killed, or whose machine went down): a worker
whose agent is gone leaves at once and silently (its node is gone; lost_peer's line comes from the survivors); a
survivor meets the loss as a failed collective (a connection reset or closed by its peer, lost_peer) or, when the
agent that hosted the store is gone, as a store that no longer answers, and prints one line; with the store gone
there is no first process to agree on, and local rank 0 of each surviving node prints it.
"""
import contextlib
import datetime
import gc
import os
import re
import signal
import socket
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from scoresde.data.base import share

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


FAILED = "scoresde/failed"
REPORTED = "scoresde/reported"
_failure = {"store": None, "announced": False, "first": False, "stop": None, "lost": False}
PEER_GONE = re.compile(r"Connection (reset|closed) by peer|Connection was likely closed|Broken pipe|"
                       r"remote process exited|NCCL communicator was aborted")


def launched():
    """Whether torchrun started this process (its RANK, WORLD_SIZE and LOCAL_RANK are in the environment)."""
    return all(k in os.environ for k in ENV)


def initialized():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if initialized() else 0


def world_size():
    return dist.get_world_size() if initialized() else 1


def is_main_process():
    """Whether this process writes the run's files (log, checkpoints, pictures, metrics): the only process, or
    rank 0 of a distributed run."""
    return rank() == 0


def process_device(device):
    """This process's device: under torchrun a CUDA device is cuda:LOCAL_RANK (one GPU per process), whatever
    index it was given (LOCAL_RANK mod the GPUs it sees, where a launcher bound fewer to each process: SLURM's
    gpus_per_task=1 shows each task its own as cuda:0); anything else as it is."""
    device = torch.device(device)
    if device.type == "cuda" and launched():
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        return torch.device("cuda", local if local < count or count == 0 else local % count)
    return device


def init_from_env(device_type="cpu", timeout_minutes=30):
    """Joins the process group torchrun describes in the environment (NCCL for ``device_type`` 'cuda', with
    this process on cuda:LOCAL_RANK; gloo otherwise) and returns this process's device; outside torchrun, or
    when already joined, only the device."""
    device = process_device(device_type)
    if launched() and not initialized():
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": device} if cuda else {}))
        watch_peers()
    return device


_stderr_lock = threading.Lock()
C10D_NOTE = re.compile(r"^(\[rank\d+\]:)?\[W\d+ .*(TCPStore|Utils)\.(cpp|hpp)|^Exception raised from |^frame #\d+: |"
                       r"^<omitting python frames>$|^$")


def quietly(fn, *args):
    """fn(*args) with what C++ writes on file descriptor 2 meanwhile kept back and written after it, less
    TCPStore's multi-line note on a failed request (a store whose host is gone: the caller says what that means
    in one line)."""
    with _stderr_lock:
        sys.stderr.flush()
        saved, (read, write) = os.dup(2), os.pipe()
        os.dup2(write, 2)
        os.close(write)
        try:
            return fn(*args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            with os.fdopen(read, "r", errors="replace") as pipe:
                kept = [line for line in pipe.read().splitlines(True) if not C10D_NOTE.match(line.rstrip("\n"))]
            if kept:
                os.write(2, "".join(kept).encode())


class QuietStore:
    """A store whose requests go through ``quietly``."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        method = getattr(self.store, name)
        return lambda *args: quietly(method, *args)


def _own_rank():
    return int(os.environ.get("RANK", rank()))


def _store():
    """A client of the store every process of this torchrun reaches (the agent's, which outlives any worker; or
    the group's, once it is joined), or None: outside torchrun, or before the group is joined where the agent
    keeps no store; or one that no longer answers: store_alive)."""
    if _failure.get("lost"):
        return None
    if _failure["store"] is not None and not store_alive():
        return None
    if _failure["store"] is None and launched() and "MASTER_ADDR" in os.environ and (
            initialized() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"):
        try:
            store = quietly(lambda: dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                  is_master=False, timeout=datetime.timedelta(seconds=10),
                                                  wait_for_workers=False))
        except (RuntimeError, ValueError, OSError):
            return None
        prefix = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}"
        _failure["store"] = QuietStore(dist.PrefixStore(prefix, store))
    return _failure["store"]


def store_alive(timeout=2.0):
    """Whether the run's store (MASTER_ADDR:MASTER_PORT) still accepts a connection, asked with a plain socket (a
    request to a store that is gone fails only after TCPStore's own multi-line warning); once it does not, the
    store counts as gone for good (its host left: the run cannot go on)."""
    if _failure.get("lost"):
        return False
    try:
        socket.create_connection((os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])), timeout).close()
        return True
    except (KeyError, ValueError, OSError):
        _failure["lost"] = True
        return False


def orphaned():
    """Whether the torchrun agent that started this process is gone (its parent changed since watch_peers began):
    its node counts as dead."""
    parent = _failure.get("parent")
    return parent is not None and os.getppid() != parent


def leave_if_orphaned():
    """Ends this process at once and without a word (exit status 1) when its torchrun agent is gone: the survivors
    report the loss of its node (lost_peer)."""
    if orphaned():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def announce_failure(status):
    """Announces that this process leaves on an error with exit status ``status``; True when it is to print
    the reason: the first process of the run to announce one (outside torchrun, the only process), False when
    another process was first (this one leaves without a word, see leave_after_report). Without a store to
    announce in (a command-line error before the group is joined, where the agent keeps none) every process met
    the same command line: rank 0 prints."""
    leave_if_orphaned()
    if _failure["announced"] and _failure.get("lost"):
        return False
    _failure["announced"] = True
    if not launched():
        _failure["first"] = True
        return True
    store = _store()
    if store is None:
        _failure["first"] = int(os.environ.get("LOCAL_RANK", 0)) == 0 if _failure.get("lost") else _own_rank() == 0
        return _failure["first"]
    mine = f"{_own_rank()}:{int(status)}"
    try:
        now = store.compare_set(FAILED, "", mine)
    except (RuntimeError, ValueError, OSError):
        now = mine
    _failure["first"] = (now.decode() if isinstance(now, bytes) else now) == mine
    return _failure["first"]


def peer_failure():
    """The exit status another process announced it leaves with (announce_failure), or None: no other process
    announced one, or this is the only process."""
    store = _store() if launched() else None
    if store is None:
        return None
    try:
        if not store.check([FAILED]):
            return None
        who, status = store.get(FAILED).decode().split(":")
    except (RuntimeError, ValueError, OSError):
        return None
    return None if int(who) == _own_rank() else int(status)


def leave_after_report(status, seconds=10.0):
    """Ends this process with exit status ``status``: the first process to announce an error marks its reason
    printed; any other waits (at most ``seconds``) until the first has printed its reason, so that the launcher,
    which stops every process once one has left, does not stop the one that is printing."""
    sys.stdout.flush()
    sys.stderr.flush()
    store = _store() if launched() else None
    if store is not None:
        try:
            if _failure["first"]:
                store.set(REPORTED, "1")
            else:
                _wait_for_report(store, seconds)
        except (RuntimeError, ValueError, OSError):
            pass
    sys.exit(status)


def _wait_for_report(store, seconds, poll=0.05):
    """Returns once the first process to announce an error marked its reason printed, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not store.check([REPORTED]) and time.monotonic() < deadline:
        time.sleep(poll)


def watch_peers(interval=0.2, grace=3.0):
    """Starts the watchdog of this process: a daemon thread that, every ``interval`` seconds, looks for
    - an error announced by another process: it ends this one with that process's exit status, without a word,
      once its reason is printed (this process's main thread may be blocked in a collective waiting for the peer
      that left);
    - the torchrun agent that started this process gone (killed; this process's parent changed): it ends this
      one at once and without a word, as the node's death would have (its peers then meet lost_peer);
    - the run's store gone (the node whose agent hosted it left): unless the main thread reports an error of its
      own within ``grace`` seconds (a failed collective, with what it knows of the checkpoint), it prints
      lost_peer's line and ends this one with exit status 2.
    A process that announced an error itself is not stopped by it."""
    if _failure["stop"] is not None or _store() is None:
        return
    stop = _failure["stop"] = threading.Event()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _failure["parent"] = os.getppid()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_terminate)

    def leave(status):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    def watch():
        lost_at = None
        while not stop.wait(interval):
            if _failure["announced"]:
                return
            leave_if_orphaned()
            if _store() is None:
                lost_at = time.monotonic() if lost_at is None else lost_at
                if time.monotonic() - lost_at >= grace and not _failure["announced"]:
                    if announce_failure(2):
                        print(f"error: {lost_peer_reason()}", file=sys.stderr)
                    leave(2)
                continue
            status = peer_failure()
            if status is not None and not _failure["announced"]:
                try:
                    _wait_for_report(_store(), 10.0)
                except (AttributeError, RuntimeError, ValueError, OSError):
                    pass
                leave(status)

    _failure["watcher"] = threading.Thread(target=watch, name="scoresde-peer-watchdog", daemon=True)
    _failure["watcher"].start()


def _on_terminate(signum, frame):
    """SIGTERM from this node's torchrun agent: it stops its workers when one of them failed (that one says why),
    and when it lost the run's store with the node that hosted it: then this process prints lost_peer's line
    (unless it printed one already). Either way it ends at once, with exit status 2 for a lost store, else
    128 + the signal's number."""
    leave_if_orphaned()
    status = 128 + signum
    if not _failure["announced"] and _store() is None and _failure.get("lost"):
        status = 2
        if announce_failure(2):
            print(f"error: {lost_peer_reason()}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def lost_peer(error):
    """Whether ``error`` is a collective's failure because a peer process is gone without a word (its connection
    reset or closed: it was killed, or its node went down) in a distributed run, no process having announced an
    error of its own (announce_failure). A process whose own agent is gone leaves here, without a word."""
    leave_if_orphaned()
    return (initialized() and world_size() > 1 and isinstance(error, RuntimeError)
            and bool(PEER_GONE.search(str(error))) and peer_failure() is None)


def keep_checkpoint_in(path):
    """Names the file where rank 0 keeps the run's last good checkpoint, for lost_peer_reason (None: none)."""
    _failure["checkpoint"] = None if path is None else str(path)


def lost_peer_reason(error=None):
    """The line a survivor prints when a peer is gone without a word (``error``: the failed collective's), with
    where the last good checkpoint is (keep_checkpoint_in)."""
    seen = PEER_GONE.search(str(error)) if error is not None else None
    how = f"a collective failed ({seen.group(0)})" if seen else "the run's store stopped answering"
    path = _failure.get("checkpoint")
    kept = ""
    if path is not None and _own_rank() == 0:
        kept = f"; the last good checkpoint is {path} (the run resumes from it)" if os.path.exists(path) else (
            "; no checkpoint was written yet")
    elif path is not None:
        kept = f"; rank 0 keeps the last good checkpoint in {path} (the run resumes from it)"
    return (f"rank {_own_rank()} of {os.environ.get('WORLD_SIZE', world_size())}: {how}: a process of this run "
            f"left without a word (killed, or its node went down), so every process stops{kept}")


def split_rows(fn):
    """x ↦ fn(x) with the rows of x split across the processes (shard_range) and the results gathered in rank
    order: what fn(x) gives in one process, each process computing its share (every process must call it)."""
    def sharded(x):
        if not initialized() or world_size() == 1:
            return fn(x)
        start, stop = shard_range(len(x))
        part = torch.as_tensor(fn(x[start:stop])) if stop > start else torch.as_tensor(fn(x[:1]))[:0]
        return gather_cat(part)
    return sharded


@contextlib.contextmanager
def main_first():
    """The block runs on the main process first and on the others once it is done (the main process fills a cache
    that the others then read)."""
    if initialized() and not is_main_process():
        dist.barrier()
    yield
    if initialized() and is_main_process():
        dist.barrier()


def shutdown(wait=True):
    """Leaves the process group, if this process joined one, once every process has reached this point (a process
    that tears its connections down while another still uses them can abort at exit). Unreachable objects that
    hold the group's work (a DDP wrapper kept alive by a reference cycle) are freed first: freed only while the
    interpreter shuts down, gloo's threads abort the process (SIGABRT); so does a watchdog left inside a request to
    the store, so it is stopped and waited for. ``wait=False`` (a process that stopped
    on an error) leaves without waiting for the others, and without complaint if the group is already broken by
    a process that left."""
    if initialized():
        gc.collect()
        if wait:
            dist.barrier()
            if _failure["stop"] is not None:
                _failure["stop"].set()
                _failure["stop"] = None
                _failure.pop("watcher").join(5.0)
            dist.destroy_process_group()
            _failure["store"] = None
            return
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()


def shard_range(n, index=None, count=None):
    """This rank's contiguous share [lo, hi) of n items (``index`` of ``count`` shares; default this rank of the
    world): lo = ⌊index · n / count⌋, so the shares differ in size by at most one and tile 0..n in rank order."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    part = share(n, (index, count))
    return part.start, part.stop


def _collective_device(tensor):
    """Where a tensor must be for the group's backend: the process's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_cat(tensor):
    """The tensors of every rank (of any lengths along the first axis, the rest of their shapes equal)
    concatenated in rank order, on every rank, on the device and dtype this rank's tensor has."""
    if not initialized() or world_size() == 1:
        return tensor
    home = _collective_device(tensor)
    local = tensor.detach().to(home).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=home) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=home))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=home)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(tensor.device)


def all_mean(tensor):
    """The mean over ranks of a tensor of the same shape on every rank (itself in one process)."""
    if not initialized() or world_size() == 1:
        return tensor
    home = _collective_device(tensor)
    total = tensor.detach().to(home, dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world_size()).to(tensor.device, tensor.dtype)


def gather_objects(obj):
    """[the object of rank 0, rank 1, ...] on every rank (picklable Python objects); [obj] in one process."""
    if not initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Rank ``src``'s object (for example the run directory) on every rank; obj itself in one process."""
    if not initialized() or world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_seed(seed, index):
    """A seed for process ``index`` from (seed, index): seed itself for rank 0, so one process and rank 0 draw
    the same stream; for other ranks a 63-bit number from numpy's SeedSequence((seed, index)), independent of
    every other rank's."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed) % 2**63, int(index))).generate_state(1, np.uint64)[0] >> 1)


def rank_generator(generator, index=None, count=None):
    """A generator of this rank's own for sampling and evaluation, on ``generator``'s device: ``count`` seeds are
    drawn from ``generator`` (advancing it the same way on every rank) and rank ``index`` takes its own. In one
    process, ``generator`` itself."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    if count == 1:
        return generator
    seeds = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device)
    return torch.Generator(generator.device).manual_seed(int(seeds[index]))


def _with_strides(strides):
    """A gradient hook: the gradient seen with the parameter's ``strides`` where the two differ only in
    dimensions of size 1 (which a stride does not address: the same elements at the same places, a free view),
    any other gradient as it is."""
    strides = tuple(strides)

    def hook(grad):
        if grad.stride() == strides or any(n != 1 and a != b for n, a, b in zip(grad.shape, grad.stride(), strides)):
            return grad
        return grad.as_strided(grad.shape, strides)
    return hook


def match_gradient_strides(model):
    """Makes every gradient of ``model`` arrive with its parameter's strides (returns the hooks' handles).

    A gradient may differ from its parameter in the strides of dimensions of size 1 alone: the CPU convolution
    hands a 1×1 kernel's (C_out, C_in, 1, 1) gradient over in channels-last strides (C_in, 1, C_in, C_in) where the
    parameter has (C_in, 1, 1, 1). Autograd keeps such a gradient (the layout contract ignores those dimensions);
    DistributedDataParallel's buckets take the parameter's strides and compare all of them, warning (`Grad
    strides do not match bucket view strides`) and copying through the mismatched view. The hook (on parameters
    with a dimension of size 1 only) re-views the gradient with the parameter's strides: no copy, no change in a
    value."""
    return [p.register_hook(_with_strides(p.stride())) for p in model.parameters()
            if p.requires_grad and p.dim() > 1 and 1 in p.shape]


def wrap(model, device):
    """``model`` in DistributedDataParallel in a distributed run (its gradients averaged over the ranks in
    backward, each arriving in its bucket's layout: match_gradient_strides; its weights broadcast from rank 0
    now), ``model`` itself in one process."""
    if not initialized() or world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    match_gradient_strides(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
