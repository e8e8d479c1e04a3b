"""Training and sampling throughput of the U-Net on the device present, and score_sde_pytorch's DDPM++ beside it.

    python -m benchmarks.throughput --out benchmarks/results/throughput.md            # GPU: DDPM++-sized, 32 x 32
    python -m benchmarks.throughput --preset digits --out benchmarks/results/throughput_cpu.md    # CPU: digits U-Net
    SCORE_SDE_PATH=/path/to/score_sde_pytorch python -m benchmarks.throughput ...      # also the anchor, same run

Rows, each measured in this process after warm-up steps (compiled rows: after compilation), with the device
synchronised around the timed span:
- training steps/s of the real step (training.train_step: the DSM loss, backward, clipping, Adam, EMA) at the
  preset's batch, fp32 and bf16 autocast, eager and torch.compile, channels-last on CUDA; peak device memory;
- sampling images/s with DPM-Solver++(2M) at --nfe network evaluations (fp32 and bf16 autocast, eager);
- waiting for data: the same bf16 (CPU: fp32) step fed by the data pipeline (uint8 images through the DataLoader
  with --workers processes, pinned memory, flips) against the same step fed a batch already on the device, timed
  alternately --rounds times; the share of step time lost to data = 1 − (median steps/s with the pipeline) /
  (median steps/s with a resident batch).
With SCORE_SDE_PATH pointing at a checkout of score_sde_pytorch, benchmarks/peer_score_sde.py measures its DDPM++
(continuous VP, its own loss, optimizer step and EMA) in a child process on the same device, and the table gives the
ratio of ours to it.
"""
import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import ScoreModel, UNet  # noqa: E402
from scoresde.data import ArrayFile, DataSpec, Digits  # noqa: E402
from scoresde.pipeline import Pipeline  # noqa: E402
from sde import VPSDE  # noqa: E402
from solvers.deterministic import DPMSolver  # noqa: E402
from scoresde.training import DSMLoss, TrainState, train_step  # noqa: E402
from scoresde.training.trainer import prepare_batch  # noqa: E402

PRESETS = {
    "ddpmpp": dict(shape=(3, 32, 32), batch=128, net=dict(channels=128, multipliers=(1, 2, 2, 2), num_res_blocks=4,
                                                          attention_resolutions=(16,), dropout=0.1, groups=32)),
    "digits": dict(shape=(1, 8, 8), batch=128, net=dict(channels=32, multipliers=(1, 2), num_res_blocks=2,
                                                        attention_resolutions=(4,), dropout=0.1, groups=8)),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset, device):
    torch.manual_seed(0)
    spec = PRESETS[preset]
    sde = VPSDE()
    model = ScoreModel(UNet(spec["shape"], **spec["net"]), sde, sigma_data=0.5).to(device)
    return sde, model


def image_data(preset, workers, folder):
    """The preset's images as 8-bit data through the real pipeline: the digits, or (32 x 32) 50,000 random uint8
    images in a memory-mapped .npy (the reading cost of CIFAR-10; no download)."""
    if preset == "digits":
        return Digits(flip=True, workers=workers)
    path = Path(folder) / "images.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, size=(50000, *PRESETS[preset]["shape"]), dtype=np.uint8))
    return ArrayFile(str(path), flip=True, workers=workers)


def time_training(preset, device, dtype, compiled, steps, warmup, data=None):
    """Steps/s and peak memory of train_step; batches from ``data.batches`` (None: one batch on the device)."""
    sde, model = build(preset, device)
    batch = PRESETS[preset]["batch"]
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    state = TrainState(model, 2e-4, 0.0, 0.9999, 0, device)
    if compiled:
        state.train_model = torch.compile(model)
    loss = DSMLoss()
    gen = torch.Generator(device).manual_seed(1)
    if data is None:
        fixed = torch.randn(batch, *PRESETS[preset]["shape"], generator=gen, device=device)
        batches = iter(lambda: (fixed, None), None)
    else:
        batches = data.batches(batch, state.data_generator, device=device, seed=0)

    def step():
        x0, _ = next(batches)
        if data is not None:
            x0, _ = prepare_batch(data, x0, None, state.generator_on(x0.device))
        x0 = x0.to(device, non_blocking=True)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        return train_step(state, loss, sde, x0, 2e-4, 1.0, autocast=dtype == "bf16")

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    setup = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    sync(device)
    seconds = time.perf_counter() - t0
    assert torch.isfinite(torch.stack(losses)).all()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if hasattr(batches, "close"):
        batches.close()
    return {"steps_per_s": steps / seconds, "peak_gib": peak, "warmup_s": setup}


def time_sampling(preset, device, dtype, nfe, num):
    sde, model = build(preset, device)
    model.eval()
    pipe = Pipeline(sde, model, DataSpec(PRESETS[preset]["shape"]), device)
    solver = DPMSolver(steps=nfe, order=2)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        pipe.sample(num, solver, batch=num)
        sync(device)
        t0 = time.perf_counter()
        pipe.sample(num, solver, batch=num)
        sync(device)
    return {"images_per_s": num / (time.perf_counter() - t0)}


def peer(device, steps, warmup, nfe, num):
    """score_sde_pytorch's DDPM++ measured by benchmarks/peer_score_sde.py in a child process, or None."""
    path = os.environ.get("SCORE_SDE_PATH")
    if not path:
        return None
    cmd = [sys.executable, str(ROOT / "benchmarks" / "peer_score_sde.py"), path, str(device), str(steps),
           str(warmup), str(nfe), str(num)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def device_name(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: ddpmpp on CUDA, else digits")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--num", type=int, default=None, help="images sampled (default: the batch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pipeline/resident timings (medians)")
    parser.add_argument("--modes", default=None, help="comma list of fp32-eager, bf16-eager, fp32-compiled, bf16-compiled")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("ddpmpp" if cuda else "digits")
    num = args.num or PRESETS[preset]["batch"]
    if cuda:
        torch.backends.cudnn.benchmark = True
    modes = args.modes.split(",") if args.modes else (
        ["fp32-eager", "bf16-eager"] + ([] if args.no_compile else ["bf16-compiled"]) if cuda else ["fp32-eager"])
    params = sum(p.numel() for p in build(preset, torch.device("cpu"))[1].parameters())
    results = {"device": device_name(device), "preset": preset, "parameters": params, "rows": {}}

    def report(name, value):
        results["rows"][name] = value
        print(name, json.dumps(value), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))

    for mode in modes:
        dtype, how = mode.split("-")
        report(f"train {mode}", time_training(preset, device, dtype, how == "compiled", args.steps, args.warmup))
    for dtype in (["fp32", "bf16"] if cuda else ["fp32"]):
        report(f"sample {dtype}", time_sampling(preset, device, dtype, args.nfe, num))
    wait_dtype = "bf16" if cuda else "fp32"
    with tempfile.TemporaryDirectory() as folder:
        data = image_data(preset, args.workers, folder)
        fed, resident = [], []
        for _ in range(args.rounds):
            fed.append(time_training(preset, device, wait_dtype, False, args.steps, args.warmup, data)["steps_per_s"])
            resident.append(time_training(preset, device, wait_dtype, False, args.steps, args.warmup)["steps_per_s"])
        fed, resident = float(np.median(fed)), float(np.median(resident))
        report("data wait", {"mode": f"{wait_dtype}-eager", "workers": args.workers, "rounds": args.rounds,
                             "pipeline_steps_per_s": fed, "resident_steps_per_s": resident,
                             "share": 1 - fed / resident})
    other = peer(device, args.steps, args.warmup, args.nfe, num) if preset == "ddpmpp" else None
    if other is not None:
        report("score_sde_pytorch DDPM++", other)
    table = render(results, args, other)
    print(table)
    if args.out:
        Path(args.out).write_text(table)


def render(results, args, other):
    rows = results["rows"]
    lines = [f"# Throughput: {results['preset']} U-Net ({results['parameters']:,} parameters)", "",
             f"Device: {results['device']}. Command: `python -m benchmarks.throughput "
             f"{' '.join(sys.argv[1:])}`" + (" with SCORE_SDE_PATH set" if other is not None else "") + ".", "",
             f"Batch {PRESETS[results['preset']]['batch']}; {args.steps} timed steps after {args.warmup} warm-up "
             f"steps; sampling: DPM-Solver++(2M), {args.nfe} NFE.", "",
             "| what | steps/s | images/s | peak memory (GiB) | vs score_sde_pytorch |", "|---|---:|---:|---:|---:|"]
    base = other if other and "error" not in other else None
    for name, value in rows.items():
        if name.startswith("train"):
            ratio = f"{value['steps_per_s'] / base['steps_per_s']:.2f}x" if base else ""
            lines.append(f"| {name} | {value['steps_per_s']:.2f} | | {value['peak_gib']:.2f} | {ratio} |")
        elif name.startswith("sample"):
            ratio = f"{value['images_per_s'] / base['images_per_s']:.2f}x" if base else ""
            lines.append(f"| {name} ({args.nfe} NFE) | | {value['images_per_s']:.1f} | | {ratio} |")
    if base:
        lines.append(f"| score_sde_pytorch DDPM++ train fp32 ({base['parameters']:,} parameters) | "
                     f"{base['steps_per_s']:.2f} | | {base['peak_gib']:.2f} | 1 |")
        lines.append(f"| score_sde_pytorch sample fp32 (Euler–Maruyama, {args.nfe} NFE) | | "
                     f"{base['images_per_s']:.1f} | | 1 |")
    elif other:
        lines.append(f"| score_sde_pytorch | {other['error']} | | | |")
    wait = rows.get("data wait")
    if wait:
        lines += ["", f"Waiting for data ({wait['mode']}, {wait['workers']} workers, uint8 images with flips through "
                  f"the DataLoader; medians of {wait.get('rounds', 1)} alternating timings): "
                  f"{wait['pipeline_steps_per_s']:.2f} steps/s against "
                  f"{wait['resident_steps_per_s']:.2f} with a batch already on the device: **{100 * wait['share']:.1f} %** "
                  "of step time."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
