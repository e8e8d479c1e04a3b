"""Cost and accuracy of the probability-flow likelihood against the exact mixture log-density.

    python -m benchmarks.likelihood --out benchmarks/results/likelihood

For each (mixture, SDE, ODE setting, divergence): NFE, wall time, the mean error of the NLL per dimension
(the estimate averaged over points, minus the exact value), the largest per-point error per dimension, and,
for Hutchinson, the per-point standard deviation per dimension. Writes <out>.md and <out>.json.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.oracle import MIXTURES, SDES
from benchmarks.report import sections
from models import MixtureScore
from solvers import ODELikelihood

SETTINGS = [
    ("dopri5", dict(method="dopri5", rtol=1e-6, atol=1e-6)),
    ("dopri5", dict(method="dopri5", rtol=1e-5, atol=1e-5)),
    ("dopri5", dict(method="dopri5", rtol=1e-4, atol=1e-4)),
    ("dopri5", dict(method="dopri5", rtol=1e-3, atol=1e-3)),
    ("dopri5", dict(method="dopri5", rtol=1e-2, atol=1e-2)),
    ("bosh3", dict(method="bosh3", rtol=1e-3, atol=1e-3)),
    ("bosh3", dict(method="bosh3", rtol=1e-2, atol=1e-2)),
    ("rk4", dict(method="rk4", steps=10)),
    ("rk4", dict(method="rk4", steps=12)),
    ("rk4", dict(method="rk4", steps=25)),
    ("rk4", dict(method="rk4", steps=12, grid="logsnr")),
    ("rk4", dict(method="rk4", steps=12, grid="karras")),
    ("midpoint", dict(method="midpoint", steps=25)),
    ("euler", dict(method="euler", steps=50)),
]


def describe(opts):
    return ", ".join(f"{k}={v}" for k, v in opts.items() if k != "method")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES))
    p.add_argument("--divergences", nargs="+", default=["exact", "rademacher"])
    p.add_argument("--num", type=int, default=500, help="test points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/likelihood")
    args = p.parse_args(argv)

    rows = []
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        x = mixture.sample(args.num, torch.Generator().manual_seed(args.seed + 1))
        exact = -mixture.log_prob(x.double())
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            oracle = MixtureScore(sde, mixture)
            for divergence in args.divergences:
                for name, opts in SETTINGS:
                    lik = ODELikelihood(divergence=divergence, max_error=0, **opts)
                    start = time.perf_counter()
                    nll, nfe = lik(sde, oracle, x, torch.Generator().manual_seed(args.seed))
                    seconds = time.perf_counter() - start
                    err = (nll.double() - exact) / mixture.dim
                    row = dict(mixture=mix_name, sde=sde_name, divergence=divergence, method=name,
                               setting=describe(opts), nfe=nfe, seconds=seconds, mean_error=err.mean().item(),
                               max_error=err.abs().max().item(), std=err.std().item())
                    rows.append(row)
                    print(f"{mix_name:4s} {sde_name:3s} {divergence:10s} {name:8s} {row['setting']:22s} nfe {nfe:4d} "
                          f"{seconds:6.2f}s  mean {row['mean_error']:+.5f}  max {row['max_error']:.5f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table(rows, args))
    print(f"wrote {out.with_suffix('.md')}")


def table(rows, args):
    lines = [f"Command: `python -m benchmarks.likelihood --mixtures {' '.join(args.mixtures)} --sdes "
             f"{' '.join(args.sdes)} --divergences {' '.join(args.divergences)} --num {args.num} --seed {args.seed} "
             f"--out {args.out}`", "",
             f"{args.num} test points; errors are NLL minus the exact −log p, per dimension; CPU "
             f"({torch.get_num_threads()} threads), torch {torch.__version__}.", ""]
    lines += sections(rows, args.mixtures, args.sdes, lambda sel: "",
                      [("divergence", False), ("method", False), ("setting", False), ("NFE", True), ("seconds", True),
                       ("mean error / dim", True), ("max per-point error / dim", True), ("per-point std / dim", True)],
                      lambda r: [r["divergence"], r["method"], r["setting"], str(r["nfe"]), f"{r['seconds']:.2f}",
                                 f"{r['mean_error']:+.5f}", f"{r['max_error']:.5f}", f"{r['std']:.5f}"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
