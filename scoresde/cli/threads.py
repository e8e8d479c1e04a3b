"""CPU threads for torch: the cores not busy at the start of a run, and again as other work comes and goes."""
import os
import time

import torch

from sde.errors import check_int
from scoresde.training.distributed import launched


def choose_threads(setting):
    """torch's CPU threads: an int, or 'auto' = the cores not busy now (cores − busy_cores(), at least 1; under
    torchrun the cores shared equally by the processes on this machine). PyTorch's own default, every core,
    is what benchmarks/results/threads.md measures against this beside other work."""
    cores = os.cpu_count() or 1
    if setting == "auto" and launched():
        n = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    elif setting == "auto":
        n = max(1, min(cores, int(cores - busy_cores() + 0.5)))
    else:
        n = check_int("threads", setting)
    torch.set_num_threads(n)
    return n


def busy_cores(interval=0.25):
    """How many cores other work keeps busy: from /proc/stat, the share of CPU time not idle (user, nice,
    system, interrupt and steal time) over ``interval`` seconds, times the core count. Work at a lower priority
    counts too: torch's threads wait for each other at every operation, so one of them preempted even briefly
    stalls them all (benchmarks/results/threads.md). The
    1-minute load average, which still counts work that has ended, is the fallback where /proc/stat is missing."""
    first = cpu_times()
    if first is not None:
        time.sleep(interval)
        second = cpu_times()
        return (os.cpu_count() or 1) * (second[0] - first[0]) / max(second[1] - first[1], 1 / os.sysconf("SC_CLK_TCK"))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def cpu_times():
    """(busy, total) CPU time of the whole machine and this process's own CPU time (every thread), in seconds:
    /proc/stat's first line (jiffies) and os.times(); None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / tick, sum(fields[:8]) / tick, own.user + own.system


class AutoThreads:
    """threads=auto for the length of a run: called often (a step of training), it looks every ``interval``
    seconds at the cores that other work kept busy since its last look,

        others = cores · (Δbusy − Δown) / Δtotal,

    the machine's busy CPU time less this process's own, and sets torch's threads to cores − others (rounded,
    at least 1), as choose_threads does at the start. ``read`` gives (busy, total, own) seconds (cpu_times)."""

    needs_model = False

    def __init__(self, interval=10.0, read=cpu_times, clock=time.monotonic):
        self.interval, self.read, self.clock = interval, read, clock
        self.cores = os.cpu_count() or 1
        self.last, self.due = read(), clock() + interval

    def __call__(self, *_):
        if self.clock() < self.due:
            return torch.get_num_threads()
        self.due = self.clock() + self.interval
        now, last = self.read(), self.last
        self.last = now
        if now is None or last is None or now[1] <= last[1]:
            return torch.get_num_threads()
        share = ((now[0] - last[0]) - (now[2] - last[2])) / (now[1] - last[1])
        n = max(1, min(self.cores, int(self.cores * (1 - max(share, 0.0)) + 0.5)))
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        return n
