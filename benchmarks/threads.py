"""Training speed against torch's CPU thread count, on an idle machine and beside one competing job.

    python -m benchmarks.threads --out benchmarks/results/threads.md

For each thread count (1, and every core: torch's default) and each load (idle; one other process running
matrix products on torch's default threads), a fresh process times training steps of the default job (the MLP
on the checkerboard, batch 512) and of the U-Net on the 8 × 8 digits (batch 128), after warm-up steps.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from scoresde.data import Checkerboard, Digits
from models import MLP, UNet, ScoreModel
from sde import VPSDE
from scoresde.training import DSMLoss, TrainState, train_step
torch.set_num_threads(int(sys.argv[2]))
which, steps = sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
sde = VPSDE()
data, batch = (Checkerboard(), 512) if which == "mlp" else (Digits(), 128)
net = MLP(shape=data.shape) if which == "mlp" else UNet(shape=data.shape)
model = ScoreModel(net, sde, sigma_data=1.0 if which == "mlp" else 0.5)
state = TrainState(model, 2e-3, 0.0, 0.999, 0, torch.device("cpu"))
loss = DSMLoss()
for i in range(steps + 3):
    if i == 3:
        start = time.perf_counter()
    train_step(state, loss, sde, data.sample(batch, state.data_generator), 2e-3, 1.0)
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps}))
"""

LOAD = "import torch\na = torch.randn(1000, 1000)\nwhile True:\n    a = (a @ a).tanh()\n"


@contextlib.contextmanager
def competing_load(active, warmup):
    """With ``active``, one other process running LOAD on torch's default threads, started ``warmup`` seconds
    before the block and stopped after it; without, nothing."""
    if not active:
        yield
        return
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    competitor = subprocess.Popen([sys.executable, "-c", LOAD], env=env)
    try:
        time.sleep(warmup)
        yield
    finally:
        competitor.kill()
        competitor.wait()


def measure(threads, which, steps):
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", WORKER, str(ROOT), str(threads), which, str(steps)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-steps", type=int, default=100)
    parser.add_argument("--unet-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for load in ("idle", "loaded"):
        with competing_load(load == "loaded", 2.0):
            for which, steps in (("mlp", args.mlp_steps), ("unet", args.unet_steps)):
                times = {n: measure(n, which, steps) for n in sorted({1, cores})}
                for n, t in times.items():
                    rows.append((load, which, n, t, t / times[1]))
                    print(f"{load:7s} {which:5s} threads={n}: {t * 1000:.1f} ms/step ({t / times[1]:.2f}x 1 thread)",
                          flush=True)
    if args.out:
        import torch

        lines = [f"Command: `python -m benchmarks.threads --mlp-steps {args.mlp_steps} --unet-steps {args.unet_steps}"
                 f" --out {args.out}`", "",
                 f"Machine: {cores} cores, torch {torch.__version__}, CPU. 'loaded' = one other process running "
                 "1000 × 1000 matrix products on torch's default threads.", "",
                 "| load | model | threads | ms per training step | × the 1-thread time |", "|---|---|---:|---:|---:|"]
        lines += [f"| {load} | {'default MLP, batch 512' if w == 'mlp' else 'U-Net 64 ch, digits, batch 128'} | {n} "
                  f"| {t * 1000:.1f} | {r:.2f} |" for load, w, n, t, r in rows]
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
