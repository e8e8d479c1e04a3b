"""The default job's samplers side by side on its own trained model: the table behind the README's choice of
default sampler.

    python -m benchmarks.samplers --out benchmarks/results/samplers.md
    python -m benchmarks.samplers --run outputs/DATE/TIME      # a model the default job already trained

Without ``--run`` the default job (``python run.py``) trains the model first. Each sampler then draws
``--num`` samples with each of two seeds on one thread. On the checkerboard: ``support`` = the fraction of
samples on the dark squares; ``swd`` = sliced Wasserstein distance to as many fresh data points; ``square_tv`` =
total variation between the occupancy of the 8 dark squares and uniform. The floors are the same numbers for
exact data samples.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SAMPLERS = [
    ("em, 200 steps (default)", "em", {}),
    ("pc, 1000 steps (the former default)", "pc", {"steps": 1000}),
    ("dpm, order 3, 20 steps", "dpm", {"order": 3, "steps": 20}),
    ("dpm, order 3, 40 steps", "dpm", {"order": 3, "steps": 40}),
    ("ode (dopri5, tolerance 1e-5)", "ode", {}),
]


def square_tv(x):
    """TV between the occupancy of the checkerboard's 8 dark squares (among samples on them) and uniform."""
    x = x.double().reshape(len(x), 2)
    cells = torch.floor(x.clamp(-2, 2 - 1e-9) + 2).long()
    inside = (x.abs() <= 2).all(1) & ((cells[:, 0] + cells[:, 1]) % 2 == 0)
    counts = torch.bincount((cells[inside, 0] * 4 + cells[inside, 1]), minlength=16).double()
    dark = torch.tensor([(i // 4 + i % 4) % 2 == 0 for i in range(16)])
    share = counts[dark] / counts[dark].sum().clamp_min(1)
    return 0.5 * (share - 1 / 8).abs().sum().item()


def scores(x, data, seed):
    from scoresde.evaluation import sample_quality

    quality = sample_quality(x, data, torch.Generator().manual_seed(seed + 100))
    return {"support": quality["support"], "swd": quality["swd"], "square_tv": square_tv(x)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a run directory of the default job")
    parser.add_argument("--num", type=int, default=20000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import scoresde
    from scoresde.data import Checkerboard

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, train_seconds = args.run, None
        if run_dir is None:
            run_dir = Path(tmp) / "run"
            start = time.perf_counter()
            subprocess.run([sys.executable, "run.py", "progress=false", "sample.num=10", f"hydra.run.dir={run_dir}"],
                           cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
            train_seconds = time.perf_counter() - start
        pipe = scoresde.load(run_dir, device="cpu")
        data = Checkerboard()
        rows = []
        floor = [scores(data.sample(args.num, torch.Generator().manual_seed(1000 + s)), data, s) for s in args.seeds]
        rows.append(("exact data samples (floor)", 0, floor, None))
        for label, name, options in SAMPLERS:
            results, seconds = [], []
            for seed in args.seeds:
                x, info = pipe.sample(args.num, solver=name, seed=seed, info=True, **options)
                results.append(scores(x, data, seed))
                seconds.append(info["seconds"] * 2000 / args.num)
            rows.append((label, info["nfe"], results, min(seconds)))
            print(label, info["nfe"], results, f"{min(seconds):.2f} s per 2000", flush=True)
    if args.out:
        write_table(args, rows, train_seconds)


def _span(results, key, digits=3):
    values = [r[key] for r in results]
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


def write_table(args, rows, train_seconds):
    command = "python -m benchmarks.samplers" + (f" --run {args.run}" if args.run else "") + \
        f" --num {args.num} --seeds {' '.join(map(str, args.seeds))} --out {args.out}"
    lines = [f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} cores, no GPU, torch {torch.__version__}, sampling on 1 thread. The model: "
             "the default job's (`python run.py`, MLP on the checkerboard, VP SDE" +
             (f", trained with `OMP_NUM_THREADS=1` in a {train_seconds:.0f}-s job" if train_seconds else "") +
             f"). {args.num} samples per seed, seeds {', '.join(map(str, args.seeds))} (ranges over seeds).", "",
             "| sampler | NFE | support | SWD | square TV | seconds per 2000 samples |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, nfe, results, seconds in rows:
        lines.append(f"| {label} | {nfe} | {_span(results, 'support')} | {_span(results, 'swd')} | "
                     f"{_span(results, 'square_tv')} | {'–' if seconds is None else f'{seconds:.2f}'} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
