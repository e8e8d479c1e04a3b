"""Whole jobs as a newcomer runs them, timed from the command line: the default job and the digits preset, with
the chosen thread count (threads=auto) and with torch's old default (every core), on an idle machine and beside
one competing job.

    python -m benchmarks.first_hour --out benchmarks/results/first_hour.md

Each job is a fresh ``python run.py ...`` process; its wall time includes start-up, training, sampling and
evaluation; 'first picture' is when its first training picture (samples_step{N}.png) appeared, from the start.
Rows are kept in <out>.json: a run of some ``--jobs`` replaces their rows and keeps the others', each row with
the command that measured it. 'loaded' = one other process running 1000 × 1000 matrix products on torch's default threads, started
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
    """Wall seconds, metrics.json and the seconds to the first training picture of ``python run.py ARGS
    threads=THREADS`` (None for what did not happen within ``timeout``)."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "run.py", *args, f"threads={threads}", "progress=false", f"hydra.run.dir={out}"]
        start, picture = time.perf_counter(), None
        with open(Path(tmp) / "stderr", "w+") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None and time.perf_counter() - start < timeout:
                if picture is None and any(out.glob("samples_step*.png")):
                    picture = time.perf_counter() - start
                time.sleep(0.2)
            seconds = time.perf_counter() - start
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                return None, {}, picture
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
        return seconds, json.loads((out / "metrics.json").read_text()), picture


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    command = (f"python -m benchmarks.first_hour --jobs {' '.join(args.jobs)} --warmup {args.warmup:g} "
               f"--timeout {args.timeout:g}" + (f" --out {args.out}" if args.out else ""))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    measured = f"{head.stdout.strip() or '?'}, {time.strftime('%Y-%m-%d')}"
    rows = []
    for load in ("idle", "loaded"):
        with competing_load(load == "loaded", args.warmup):
            for job in args.jobs:
                for threads in ("auto", cores):
                    if load == "idle":
                        wait_until_idle()
                    load_avg = busy_cores(1.0)
                    seconds, metrics, picture = run_job(JOBS[job], threads, args.timeout)
                    rows.append(dict(load=load, job=job, threads=threads, busy=load_avg, seconds=seconds,
                                     picture=picture, metrics=metrics, command=command, timeout=args.timeout,
                                     measured=measured))
                    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN[job] if k in metrics)
                    print(f"{load:7s} {job:8s} threads={threads}: "
                          f"{'timed out' if seconds is None else f'{seconds:.0f} s'} "
                          f"(train {metrics.get('train_seconds', float('nan')):.0f} s) {shown}", flush=True)
    if args.out:
        kept = args.out.with_suffix(".json")
        old = json.loads(kept.read_text()) if kept.exists() else []
        rows = [r for r in old if r["job"] not in args.jobs] + rows
        kept.write_text(json.dumps(rows, indent=1) + "\n")
        write_table(args, sorted(rows, key=lambda r: (r["load"] != "idle", list(JOBS).index(r["job"]))), cores)


def wait_until_idle(limit=120.0):
    start = time.perf_counter()
    while busy_cores(1.0) > 0.2 and time.perf_counter() - start < limit:
        pass


def write_table(args, rows, cores):
    import torch

    commands = list(dict.fromkeys((r["command"], r.get("measured", "?")) for r in rows))
    lines = ["Commands (each row names its own; rows of jobs a later command did not run are kept): " +
             ", ".join(f"({i + 1}) `{c}` (commit {at})" for i, (c, at) in enumerate(commands)), "",
             f"Machine: {cores} cores, no GPU, torch {torch.__version__}. Jobs: `default` = `python run.py`, "
             "`digits` = `python run.py experiment=digits`. 'loaded' = one other process running 1000 × 1000 "
             f"matrix products on torch's default threads, started {args.warmup:g} s before. 'busy' = the cores other "
             f"work kept busy just before the job, as threads=auto measures them; threads={cores} is torch's old "
             "default.",
             "", "| load | job | threads | busy | wall s | first picture s | train s | sample s | likelihood s | "
             "metrics | command |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        m = r["metrics"]
        wall = f"> {r.get('timeout', args.timeout):g} (stopped)" if r["seconds"] is None else f"{r['seconds']:.0f}"
        picture = "–" if r.get("picture") is None else f"{r['picture']:.0f}"
        shown = ", ".join(f"{k} {m[k]:.3g}" for k in SHOWN[r["job"]] if k in m)
        lines.append(f"| {r['load']} | {r['job']} | {r['threads']} | {r['busy']:.2f} | {wall} | {picture} | "
                     f"{_f(m, 'train_seconds')} | {_f(m, 'sample_seconds')} | {_f(m, 'likelihood_seconds')} | "
                     f"{shown} | ({commands.index((r['command'], r.get('measured', '?'))) + 1}) |")
    args.out.write_text("\n".join(lines) + "\n")


def _f(metrics, key):
    return f"{metrics[key]:.0f}" if key in metrics else "–"


if __name__ == "__main__":
    main()
