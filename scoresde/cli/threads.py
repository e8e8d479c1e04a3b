"""CPU threads for torch: the cores not busy at the start of a run."""
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
    def sample():
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq + steal, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
        return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)
    except (OSError, ValueError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
