"""Whole jobs as a newcomer runs them, timed from the command line: the default job and the digits preset, with
the chosen thread count (threads=auto) and with torch's old default (every core), on an idle machine and beside
one competing job.

    python -m benchmarks.first_hour --out benchmarks/results/first_hour.md

Each job is a fresh ``python run.py ...`` process; its wall time includes start-up, training, sampling and
evaluation. 'loaded' = one other process running 1000 × 1000 matrix products on torch's default threads, started
``--warmup`` seconds before the jobs. Before each job the busy cores are measured as threads=auto measures them
(and idle jobs wait until fewer than 0.2 cores are busy). A job that does not end within ``--timeout`` seconds is
stopped and reported as such.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.threads import competing_load
from scoresde.cli import busy_cores

ROOT = Path(__file__).resolve().parents[1]

JOBS = {"default": [], "digits": ["experiment=digits"]}
SHOWN = {"default": ("swd", "swd_floor", "support"),
         "digits": ("bpd", "class_score", "class_score_real", "class_score_noise", "class_recognised",
                    "class_recognised_noise", "classifier_accuracy")}


def run_job(args, threads, timeout):
    """Wall seconds and metrics.json of ``python run.py ARGS threads=THREADS`` (None when it timed out)."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "run.py", *args, f"threads={threads}", "progress=false", f"hydra.run.dir={tmp}/run"]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, {}
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return seconds, json.loads((Path(tmp) / "run" / "metrics.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for load in ("idle", "loaded"):
        with competing_load(load == "loaded", args.warmup):
            for job in args.jobs:
                for threads in ("auto", cores):
                    if load == "idle":
                        wait_until_idle()
                    load_avg = busy_cores(1.0)
                    seconds, metrics = run_job(JOBS[job], threads, args.timeout)
                    rows.append((load, job, threads, load_avg, seconds, metrics))
                    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN[job] if k in metrics)
                    print(f"{load:7s} {job:8s} threads={threads}: "
                          f"{'timed out' if seconds is None else f'{seconds:.0f} s'} "
                          f"(train {metrics.get('train_seconds', float('nan')):.0f} s) {shown}", flush=True)
    if args.out:
        write_table(args, rows, cores)


def wait_until_idle(limit=120.0):
    start = time.perf_counter()
    while busy_cores(1.0) > 0.2 and time.perf_counter() - start < limit:
        pass


def write_table(args, rows, cores):
    import torch

    lines = [f"Command: `python -m benchmarks.first_hour --jobs {' '.join(args.jobs)} --warmup {args.warmup:g} "
             f"--timeout {args.timeout:g} --out {args.out}`", "",
             f"Machine: {cores} cores, no GPU, torch {torch.__version__}. Jobs: `default` = `python run.py`, "
             "`digits` = `python run.py experiment=digits`. 'loaded' = one other process running 1000 × 1000 "
             f"matrix products on torch's default threads, started {args.warmup:g} s before. 'busy' = the cores other "
             f"work kept busy just before the job, as threads=auto measures them; threads={cores} is torch's old "
             "default.",
             "", "| load | job | threads | busy | wall s | train s | sample s | likelihood s | metrics |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for load, job, threads, load_avg, seconds, m in rows:
        wall = f"> {args.timeout:g} (stopped)" if seconds is None else f"{seconds:.0f}"
        shown = ", ".join(f"{k} {m[k]:.3g}" for k in SHOWN[job] if k in m)
        lines.append(f"| {load} | {job} | {threads} | {load_avg:.2f} | {wall} | {_f(m, 'train_seconds')} | "
                     f"{_f(m, 'sample_seconds')} | {_f(m, 'likelihood_seconds')} | {shown} |")
    args.out.write_text("\n".join(lines) + "\n")


def _f(metrics, key):
    return f"{metrics[key]:.0f}" if key in metrics else "–"


if __name__ == "__main__":
    main()
