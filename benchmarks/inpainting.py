"""Inpainting against the exact answer: the conditional of a Gaussian mixture's unknown coordinates given the
known ones is again a Gaussian mixture, point by point (GaussianMixture.missing_given_observed).

    python -m benchmarks.inpainting --out benchmarks/results/inpainting.md

For each mixture (the 8-mode 2-D mixture of benchmarks.oracle with its first coordinate known; a 16-D mixture
with its first 8 known), each process (VP, VE) and each method: ``--points`` test points drawn from the
mixture, ``--completions`` completions of each by the exact oracle score, and the log-density gap per unknown
coordinate and the component-weights TV of the completions against as many exact conditional draws (whose own
two-sample noise is the floor), with the NFE and seconds.
"""
import argparse
import time
from pathlib import Path

import torch

from benchmarks.oracle import eight_modes
from scoresde.evaluation import inpainting_report
from models import MixtureScore
from scoresde.data import RandomMixture
from sde import VESDE, VPSDE
from solvers import EulerMaruyama, PredictorCorrector
from solvers.inpaint import Inpainter
from solvers.observe import Observation

SDES = {"vp": VPSDE, "ve": VESDE}
MIXTURES = {"2d": (eight_modes, 1), "16d": (lambda: RandomMixture(components=6, dim=16, spread=1.5, std_min=0.3,
                                                                   std_max=0.8, seed=3), 8)}
METHODS = [
    ("replace, em 1000", lambda: Inpainter(EulerMaruyama(steps=1000))),
    ("replace, pc 1000 (predictor–corrector)", lambda: Inpainter(PredictorCorrector(steps=1000))),
] + [(f"resample, em 250, jumps {j}", (lambda j=j: Inpainter(EulerMaruyama(steps=250), "resample", j)))
     for j in (1, 2, 5, 10)]


def known_mask(mixture, n_known):
    mask = torch.zeros(mixture.shape, dtype=torch.bool)
    mask.view(-1)[:n_known] = True
    return mask


def evaluate(sde_name, mixture_name, make, points, completions, seed=0):
    """Completions by one method and their report against the exact conditional."""
    sde = SDES[sde_name]()
    build, n_known = MIXTURES[mixture_name]
    mixture = build()
    gen = torch.Generator().manual_seed(seed)
    x = mixture.sample(points, gen, dtype=torch.float64)
    mask = known_mask(mixture, n_known)
    rep = x.repeat_interleave(completions, 0)
    x_T = sde.prior_sample(rep.shape, gen, dtype=torch.float64)
    start = time.perf_counter()
    out, nfe = make()(sde, MixtureScore(sde, mixture), x_T, Observation(rep, mask), gen)
    seconds = time.perf_counter() - start
    report = inpainting_report(mixture, x, mask, out, torch.Generator().manual_seed(seed + 1))
    floor = inpainting_report(mixture, x, mask, mixture.missing_given_observed(rep, mask.expand(rep.shape))[2](
        torch.Generator().manual_seed(seed + 2)), torch.Generator().manual_seed(seed + 1))
    return {**report, "nfe": nfe, "seconds": seconds, "floor_gap": floor["inpaint_logp_gap_per_dim"],
            "floor_tv": floor["inpaint_weights_tv"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--completions", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"Command: `python -m benchmarks.inpainting --points {args.points} --completions {args.completions}"
             f"{f' --out {args.out}' if args.out else ''}`", "",
             f"Machine: CPU, 1 thread, torch {torch.__version__}. {args.points} points × {args.completions} completions "
             "= the number of samples per row; exact oracle score; gap = mean log p(x_u | x_o) of the completions "
             "minus that of exact conditional draws, per unknown coordinate; floor = the same for a second set of "
             "exact draws.", ""]
    for mixture_name in MIXTURES:
        for sde_name in SDES:
            lines += [f"### {mixture_name}, {sde_name}", "",
                      "| method | NFE | gap (nats/dim) | weights TV | seconds |", "|---|---:|---:|---:|---:|"]
            floor = None
            for label, make in METHODS:
                r = evaluate(sde_name, mixture_name, make, args.points, args.completions)
                floor = (r["floor_gap"], r["floor_tv"])
                print(mixture_name, sde_name, label, {k: round(v, 4) for k, v in r.items()}, flush=True)
                lines.append(f"| {label} | {r['nfe']} | {r['inpaint_logp_gap_per_dim']:+.4f} | "
                             f"{r['inpaint_weights_tv']:.4f} | {r['seconds']:.1f} |")
            lines += [f"| exact draws (floor) | – | {floor[0]:+.4f} | {floor[1]:.4f} | – |", ""]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
