"""Kills run.py with SIGKILL at random moments of a training run (some aimed at a checkpoint write), resumes it
from the checkpoint it left, and checks that the finished run is bit-identical to one that was never killed.

    python -m benchmarks.kill_survival --trials 20 --out benchmarks/results/kill_survival.md

Each trial trains in its own folder, is killed up to --kills times at moments drawn uniformly between 0.3 s
after start and the reference's wall time (every third trial instead waits a moment drawn up to the
reference's last checkpoint write, then polls for a ``checkpoint.pt.tmp.*`` file and kills the moment one
appears), resumed with ``ckpt=<dir>/checkpoint.pt`` (or started over when no checkpoint was written yet) and
then let finish. It survives when the final checkpoint has step N, model and EMA tensors torch.equal to the
reference's, train_log.csv holds steps 1..N once each (with the reference's losses), no temporary file is left,
every checkpoint a kill left could be read, and every run that was not killed exited 0.
"""
import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.net.hidden=64", "model.net.depth=2", "model.net.embed_dim=32", "train.progress=false",
         "train.log_every=1", "solver=ddim", "solver.steps=5", "sample.num=20"]  # a log row per step


def overrides(out, steps, every, ckpt=None):
    args = [f"hydra.run.dir={out}", f"train.steps={steps}", f"train.ckpt_every={every}", *SMALL]
    return args + ([f"ckpt={ckpt}"] if ckpt else [])


def environment():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def start(args, log):
    """run.py with these overrides, its stdout and stderr going to the file log."""
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=environment())


def temporaries(out):
    try:
        return [name for name in os.listdir(out) if name.startswith("checkpoint.pt.tmp")]
    except FileNotFoundError:
        return []


def kill_at(proc, out, delay, hunt):
    """SIGKILLs proc ``delay`` seconds after it started (with ``hunt``, at the first checkpoint.pt.tmp.* seen
    after that); returns True when it was killed, False when it ended on its own first."""
    started = time.perf_counter()
    while time.perf_counter() - started < delay:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    while hunt and not temporaries(out):
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def checkpoint_step(path):
    """The step of the checkpoint at path, or raises when it cannot be read."""
    return int(torch.load(path, weights_only=True)["step"])


def where_killed(out, steps):
    """Where the kill landed, from what it left in the run folder, and a problem ('' if none)."""
    ckpt, tmp = out / "checkpoint.pt", temporaries(out)
    if not ckpt.exists():
        return ("during first write" if tmp else "before first checkpoint"), ""
    try:
        step = checkpoint_step(ckpt)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint is what this benchmark looks for
        return "mid-run", f"checkpoint.pt left by the kill cannot be read ({type(e).__name__}: {e})"
    if tmp:
        return f"during write (ckpt {step})", ""
    return ("after training" if step == steps else f"mid-run (ckpt {step})"), ""


def tensors_equal(a, b):
    """True when two nested dicts / lists of tensors and numbers are identical (tensors by torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def read_log(path):
    """(steps, losses) of a train_log.csv."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh) if row][1:]
    return [row[0] for row in rows], [row[1] if len(row) > 1 else "" for row in rows]


def check(out, ref, steps):
    """'' when the finished run in out matches the reference, else what differs."""
    problems = []
    ckpt = out / "checkpoint.pt"
    if not ckpt.exists():
        return "no checkpoint.pt at the end"
    state = torch.load(ckpt, weights_only=True)
    if int(state["step"]) != steps:
        problems.append(f"final step {state['step']} != {steps}")
    for key in ("model", "ema"):
        if not tensors_equal(state[key], ref["state"][key]):
            differ = [k for k, v in state[key].get("shadow", state[key]).items()
                      if not tensors_equal(v, ref["state"][key].get("shadow", ref["state"][key]).get(k))]
            problems.append(f"{key} differs from the reference ({len(differ)} entries, first {differ[:1]})")
    logged, losses = read_log(out / "train_log.csv")
    if logged != [str(s) for s in range(1, steps + 1)]:
        dups = sorted({s for s in logged if logged.count(s) > 1})
        missing = sorted(set(map(str, range(1, steps + 1))) - set(logged), key=lambda s: int(s) if s.isdigit() else 0)
        problems.append(f"train_log.csv has {len(logged)} rows (duplicated {dups[:5]}, missing {missing[:5]})")
    elif losses != ref["losses"]:
        first = next(i for i, (a, b) in enumerate(zip(losses, ref["losses"])) if a != b)
        problems.append(f"logged loss at step {first + 1} is {losses[first]}, reference {ref['losses'][first]}")
    if temporaries(out):
        problems.append(f"left {temporaries(out)}")
    return "; ".join(problems)


def tail(log, n=2):
    lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(lines[-n:])


def trial(index, rng, work, ref, args):
    """Runs one trial; returns (kills, where, reason) with reason '' when it survived."""
    out, kills, where, problems = work / f"trial{index}", 0, [], []
    out.mkdir()
    hunt_writes = index % 3 == 2
    resume = None
    for attempt in range(args.kills + 1):
        log = work / f"trial{index}.attempt{attempt}.log"
        proc = start(overrides(out, args.steps, args.ckpt_every, resume), log)
        if attempt < args.kills:
            delay = rng.uniform(0.3, ref["last_write"] if hunt_writes else ref["seconds"])
            killed = kill_at(proc, out, delay, hunt_writes)
        else:
            killed = False
            proc.wait(timeout=900)
        if not killed:
            if proc.returncode != 0:
                problems.append(f"run {attempt} exited {proc.returncode}: {tail(log)}")
            break
        kills += 1
        landed, problem = where_killed(out, args.steps)
        where.append(landed)
        if problem:
            problems.append(problem)
            break
        resume = out / "checkpoint.pt" if (out / "checkpoint.pt").exists() else None
    if not problems:
        problem = check(out, ref, args.steps)
        if problem:
            problems.append(problem)
    return kills, where, "; ".join(problems)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="how many trials")
    parser.add_argument("--steps", type=int, default=600, help="train.steps of every run (N)")
    parser.add_argument("--ckpt-every", type=int, default=20, help="train.ckpt_every of every run")
    parser.add_argument("--kills", type=int, default=3, help="at most this many kills per trial")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary "
                        "folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as Markdown here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0, t0_clock = time.perf_counter(), time.time()
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides(work / "reference", args.steps,
                                                                                 args.ckpt_every)],
                              capture_output=True, text=True, cwd=ROOT, env=environment(), timeout=900)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the reference run failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        ref = {"state": torch.load(work / "reference" / "checkpoint.pt", weights_only=True), "seconds": seconds,
               "last_write": max(0.31, (work / "reference" / "checkpoint.pt").stat().st_mtime - t0_clock),
               "losses": read_log(work / "reference" / "train_log.csv")[1]}
        print(f"reference: {args.steps} steps in {seconds:.1f} s, last checkpoint written at {ref['last_write']:.1f} s "
              f"(kills drawn from U(0.3 s, {seconds:.1f} s); write hunts start at U(0.3 s, {ref['last_write']:.1f} s))",
              flush=True)
        rows, total_kills, survived = [], 0, 0
        for index in range(args.trials):
            kills, where, reason = trial(index, rng, work, ref, args)
            total_kills += kills
            survived += not reason
            aim = "checkpoint write" if index % 3 == 2 else "random moment"
            rows.append(f"| {index + 1} | {aim} | {kills} | {', '.join(where) or '-'} | "
                        f"{'yes' if not reason else '**no**'} | {reason.replace('|', '/')} |")
            print(rows[-1], flush=True)
    wall = time.perf_counter() - begin
    summary = (f"{args.trials} trials, {total_kills} kills: {survived} survived "
               f"({100 * survived / max(args.trials, 1):.0f} %)")
    print(summary)
    print(f"wall time {wall:.0f} s")
    if args.out:
        command = " ".join(["python -m benchmarks.kill_survival", *sys.argv[1:]])
        text = [f"Command: `{command}`", "", summary, "",
                f"Each trial: train.steps={args.steps} train.ckpt_every={args.ckpt_every} {' '.join(SMALL)}; "
                f"killed (SIGKILL) up to {args.kills} times at U(0.3 s, {ref['seconds']:.1f} s) after start (every "
                f"third trial: polls for checkpoint.pt.tmp.* from U(0.3 s, {ref['last_write']:.1f} s) on and kills "
                f"when one appears), resumed with ckpt=<dir>/checkpoint.pt (started over when none was written yet), "
                f"then let finish. Reference (never killed): {ref['seconds']:.1f} s. Total wall time {wall:.0f} s.",
                "",
                "| trial | aimed at | kills | where killed | survived | reason |", "|---|---|---|---|---|---|",
                *rows, "",
                f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}, Python {sys.version.split()[0]}, "
                f"OMP_NUM_THREADS=1 (shared with other runs: wall times vary).", ""]
        args.out.write_text("\n".join(text))


if __name__ == "__main__":
    main()
