"""Stochastic samplers on the exact oracle: SDE-DPM-Solver++ against Euler–Maruyama, and pc's Langevin step rules.

    nice -n 19 env OMP_NUM_THREADS=1 python -m benchmarks.stochastic --out benchmarks/results/stochastic

Part 1: the benchmark's 8-mode 2-D and 64-D mixtures (benchmarks/oracle.py) under VP, VE, cosine and rectified
flow (conf/sde/*.yaml), 20,000 samples: weights TV and the log-density gap per dimension at the solver's end time
(evaluation.mixture_report), beside the same two numbers for as many exact samples (the floor).
Part 2: pc at 1000 steps (2000 NFE) with the Langevin step rules of solvers.stochastic.langevin_step_size, on a
12-D mixture with narrow components under sub-VP and on the 2-D mixture under VE; sliced Wasserstein distance to
one exact sample beside the mean (and range) of that of 4 other exact samples to the same one (the floor). Writes
<out>.md and <out>.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmarks.oracle import MIXTURES
from scoresde.evaluation import mixture_report, sliced_wasserstein
from models import MixtureScore
from scoresde.data import RandomMixture
from solvers import EulerMaruyama, PredictorCorrector
from solvers.base import check_eps
from solvers.stochastic import SDEDPMSolver

CONF = Path(__file__).resolve().parents[1] / "conf"
SDES = ("vp", "ve", "cosine", "rf")
FLOOR_PAIRS = 4

SAMPLERS = {  # name: make(nfe)
    "sde_dpm 3M": lambda n: SDEDPMSolver(steps=n, multistep=3),
    "sde_dpm 2M": lambda n: SDEDPMSolver(steps=n, multistep=2),
    "sde_dpm 1 (ancestral)": lambda n: SDEDPMSolver(steps=n, multistep=1),
    "em": lambda n: EulerMaruyama(steps=n),
}
PC_RULES = {  # name: (step_rule, snr)
    "batch, snr 0.16 (before)": ("batch", 0.16),
    "sample, snr 0.16": ("sample", 0.16),
    "kernel, snr 0.16": ("kernel", 0.16),
    "kernel, snr 0.1 (after: the default)": ("kernel", 0.1),
}


def narrow_12d():
    """6 components in 12-D, stds 0.31–1.0, weights ∝ 1..6."""
    return RandomMixture(components=6, dim=12, spread=2.0, std_min=0.1, std_max=1.0, seed=1)


def load_sde(name):
    return instantiate(OmegaConf.load(CONF / "sde" / f"{name}.yaml"))


def at_eps(sde, mixture, solver):
    eps = torch.tensor(check_eps(sde, solver.eps), dtype=torch.float64)
    return mixture.perturbed(sde.a(eps).item(), sde.s(eps).item())


def measure(sde, mixture, solver, num, seed, swd=False):
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((num, *mixture.shape), gen)
    start = time.perf_counter()
    x, nfe = solver(sde, MixtureScore(sde, mixture), x_T, gen)
    seconds = time.perf_counter() - start
    truth = at_eps(sde, mixture, solver)
    report = mixture_report(truth, x)
    row = {"nfe": nfe, "seconds": seconds, "weights_tv": report["weights_tv"],
           "logp_gap_per_dim": report["logp_gap_per_dim"], "std_ratio_error": report["std_ratio_error"]}
    if swd:
        exact = truth.sample(num, torch.Generator().manual_seed(seed + 1))
        row["swd"] = sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(0))
    return row


def floor(mixture, num, seed, swd=False):
    a = mixture.sample(num, torch.Generator().manual_seed(seed + 2))
    report = mixture_report(mixture, a)
    row = {"weights_tv": report["weights_tv"], "logp_gap_per_dim": report["logp_gap_per_dim"]}
    if swd:
        exact = mixture.sample(num, torch.Generator().manual_seed(seed + 1))
        others = [a] + [mixture.sample(num, torch.Generator().manual_seed(seed + k))
                         for k in range(3, 3 + FLOOR_PAIRS - 1)]
        values = [sliced_wasserstein(b, exact, generator=torch.Generator().manual_seed(0)) for b in others]
        row["swd"], row["swd_range"] = sum(values) / len(values), (min(values), max(values))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", nargs="+", type=int, default=[50, 100])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-pc", action="store_true")
    p.add_argument("--out", default="benchmarks/results/stochastic")
    args = p.parse_args(argv)

    rows, pc_rows = [], []
    for mix_name, make_mixture in MIXTURES.items():
        mixture = make_mixture()
        for sde_name in SDES:
            sde = load_sde(sde_name)
            base = floor(at_eps(sde, mixture, SDEDPMSolver()), args.num, args.seed)
            rows.append({"mixture": mix_name, "sde": sde_name, "sampler": "exact samples (floor)", "nfe": 0, **base})
            for name in args.samplers:
                for n in args.nfe:
                    r = measure(sde, mixture, SAMPLERS[name](n), args.num, args.seed)
                    rows.append({"mixture": mix_name, "sde": sde_name, "sampler": name, **r})
                    print(f"{mix_name:4s} {sde_name:6s} {name:22s} nfe {r['nfe']:4d} tv {r['weights_tv']:.4f} "
                          f"gap {r['logp_gap_per_dim']:+.4f} ({r['seconds']:.1f} s)", flush=True)
    if not args.skip_pc:
        for mix_name, mixture, sde_name in [("12d narrow", narrow_12d(), "subvp"), ("2d", MIXTURES["2d"](), "ve")]:
            sde = load_sde(sde_name)
            base = floor(at_eps(sde, mixture, PredictorCorrector()), args.num, args.seed, swd=True)
            pc_rows.append({"mixture": mix_name, "sde": sde_name, "rule": "exact samples (floor)", "nfe": 0, **base})
            runs = [(name, PredictorCorrector(step_rule=rule, snr=snr)) for name, (rule, snr) in PC_RULES.items()]
            for name, solver in runs + [("em, no corrector", EulerMaruyama(steps=1000))]:
                r = measure(sde, mixture, solver, args.num, args.seed, swd=True)
                r["swd_ratio"] = r["swd"] / base["swd"]
                pc_rows.append({"mixture": mix_name, "sde": sde_name, "rule": name, **r})
                print(f"{mix_name:10s} {sde_name:6s} {name:36s} tv {r['weights_tv']:.4f} "
                      f"gap {r['logp_gap_per_dim']:+.4f} swd {r['swd_ratio']:.2f}x floor", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"samplers": rows, "pc": pc_rows}, indent=1))
    out.with_suffix(".md").write_text(report(rows, pc_rows, args, argv))
    print(f"wrote {out.with_suffix('.md')}")


def report(rows, pc_rows, args, argv):
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.stochastic", *argv])
    lines = [f"Command: `nice -n 19 env OMP_NUM_THREADS=1 {command}`", "",
             f"{args.num} samples per run, seed {args.seed}, CPU (1 thread), torch {torch.__version__}. Gap: mean "
             "exact log-density of the samples minus that of exact samples, nats per dimension (negative: too wide); "
             "TV: total variation of the component weights. The floor row is the same two numbers for "
             f"{args.num} exact samples.", ""]
    for mix_name in MIXTURES:
        lines += [f"### {mix_name} mixture: weights TV / log-density gap per dim", "",
                  "| sampler | NFE | " + " | ".join(s.upper() for s in SDES) + " |",
                  "|---|---:|" + "---:|" * len(SDES)]
        keys = list(dict.fromkeys((r["sampler"], r["nfe"]) for r in rows if r["mixture"] == mix_name))
        for sampler, nfe in keys:
            cells = []
            for sde_name in SDES:
                r = [r for r in rows if (r["mixture"], r["sde"], r["sampler"], r["nfe"]) ==
                     (mix_name, sde_name, sampler, nfe)]
                cells.append(f"{r[0]['weights_tv']:.4f} / {r[0]['logp_gap_per_dim']:+.4f}" if r else "–")
            lines.append(f"| {sampler} | {nfe or '–'} | " + " | ".join(cells) + " |")
        lines.append("")
    if pc_rows:
        lines += ["### pc (1000 steps, 2000 NFE): Langevin step rules", "",
                  "| mixture | SDE | step rule | weights TV | gap / dim | largest std error | SWD (× floor) |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in pc_rows:
            std = f"{r['std_ratio_error']:.3f}" if "std_ratio_error" in r else "–"
            ratio = (f" ({r['swd_ratio']:.2f}×)" if "swd_ratio" in r
                     else " (range {:.4f}–{:.4f})".format(*r["swd_range"]))
            lines.append(f"| {r['mixture']} | {r['sde']} | {r['rule']} | {r['weights_tv']:.4f} | "
                         f"{r['logp_gap_per_dim']:+.4f} | {std} | {r['swd']:.4f}{ratio} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
