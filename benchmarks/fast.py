"""solver=fast against the exact oracle: DPM-Solver++(3M) on a grid fitted to the model, at 5, 6 and 10 NFE, on
the benchmark's 8-mode 2-D and 64-D mixtures (benchmarks/oracle.py) for VP, VE, cosine and rectified flow.

    python -m benchmarks.fast --out benchmarks/results/fast

For each (mixture, process, budget): the fitted grid (conf/solver/fast.yaml's settings) beside DPM-Solver++(3M)
on the uniform-λ and uniform-t grids and, at 10 NFE, on TuneGrid (the former MSE fit): weights TV, the gap of
the mean exact log-density per dimension against exact samples, and SWD beside its two-sample floor, on
``--num`` samples; and what each fit cost (model evaluations on its batch of pilots, seconds on this CPU, the
objective before and after), and each grid's TV and gap on the prior draws of further seeds. Targets at 10 NFE:
|gap| <= 0.01 and TV <= 0.015. Writes <out>.md and <out>.json.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from benchmarks.oracle import MIXTURES, noise_floor
from scoresde.evaluation import mixture_report, sliced_wasserstein
from models import MixtureScore
from sde import VESDE, VPSDE
from sde.processes import CosineVPSDE, RectifiedFlow
from solvers import DPMSolver, FitGrid, TuneGrid, fit_solver
from solvers.base import check_eps

ROOT = Path(__file__).resolve().parents[1]
SDES = {"vp": VPSDE, "ve": VESDE, "cosine": CosineVPSDE, "rf": RectifiedFlow}
TARGET_GAP, TARGET_TV = 0.01, 0.015
TEACHER = 200


def fast_grid(**changes):
    """The grid recipe of conf/solver/fast.yaml, with ``changes``."""
    conf = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/solver/fast.yaml").grid)
    conf.pop("_target_")
    return FitGrid(**{**conf, **changes})


def settings(budget):
    yield "fit (solver=fast)", DPMSolver(budget, order=3, grid=fast_grid())
    yield "logsnr", DPMSolver(budget, order=3, grid="logsnr")
    yield "time", DPMSolver(budget, order=3, grid="time")
    if budget == 10:
        yield "tuned (MSE)", DPMSolver(budget, order=3, grid=TuneGrid())
        yield f"teacher ({TEACHER} NFE)", DPMSolver(TEACHER, order=3, grid="logsnr")


def run_one(sde, mixture, solver, num, seeds):
    """The grid fitted once (on pilots of its own seed), then ``num`` samples from the prior draws of each seed
    in ``seeds``; the first seed's metrics, and each seed's TV and gap in ``seeds``."""
    oracle = MixtureScore(sde, mixture)
    eps = check_eps(sde, solver.eps)
    solver, fit = fit_solver(solver, sde, oracle, mixture.shape)
    times = solver.times(sde, eps)
    if fit is not None:
        fit = {k: v for k, v in fit.items() if k not in ("times", "process", "solver", "reused")}
    e = torch.tensor(eps, dtype=torch.float64)
    truth = mixture.perturbed(sde.a(e).item(), sde.s(e).item())
    result = {"fit": fit, "times": times.tolist(), "seeds": []}
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        x_T = sde.prior_sample((num, *mixture.shape), gen)
        start = time.perf_counter()
        x, nfe = solver(sde, oracle, x_T, gen)
        seconds = time.perf_counter() - start
        report = mixture_report(truth, x)
        result["seeds"].append({"seed": seed, "weights_tv": report["weights_tv"],
                                "logp_gap_per_dim": report["logp_gap_per_dim"]})
        if seed == seeds[0]:
            exact = truth.sample(num, torch.Generator().manual_seed(seed + 1))
            result.update(nfe=nfe, seconds=seconds, weights_tv=report["weights_tv"],
                          logp_gap_per_dim=report["logp_gap_per_dim"],
                          swd=sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(0)))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES))
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 6, 10])
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the prior draws sampled (the first gives the main columns; the fit's pilots have "
                        "their own seed, conf/solver/fast.yaml)")
    p.add_argument("--out", default="benchmarks/results/fast")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, floors = [], {}
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        floors[mix_name] = noise_floor(mixture, args.num, args.seeds[0])
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            for budget in args.budgets:
                for name, solver in settings(budget):
                    r = run_one(sde, mixture, solver, args.num, args.seeds)
                    r.update(mixture=mix_name, sde=sde_name, grid=name, budget=budget)
                    rows.append(r)
                    fit = r["fit"]
                    print(f"{mix_name:4s} {sde_name:6s} {budget:3d} {name:18s} nfe {r['nfe']:3d}  tv "
                          f"{r['weights_tv']:.4f}  gap {r['logp_gap_per_dim']:+.4f}  swd {r['swd']:.4f}  over seeds: "
                          f"max tv {_worst(r, 'weights_tv'):.4f}, max |gap| {_worst(r, 'logp_gap_per_dim'):.4f}"
                          + (f"  fit {fit['seconds']:.1f}s" if fit else ""), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "floors": floors}, indent=1))
    out.with_suffix(".md").write_text(table(rows, floors, args))
    print(f"wrote {out.with_suffix('.md')}")


def _worst(r, key):
    return max(abs(s[key]) for s in r["seeds"])


def _meets(r):
    return _worst(r, "logp_gap_per_dim") <= TARGET_GAP and _worst(r, "weights_tv") <= TARGET_TV


def table(rows, floors, args):
    seeds = " ".join(map(str, args.seeds))
    lines = [f"Command: `python -m benchmarks.fast --mixtures {' '.join(args.mixtures)} --sdes {' '.join(args.sdes)} "
             f"--budgets {' '.join(map(str, args.budgets))} --num {args.num} --seeds {seeds} --out {args.out}`", "",
             f"{args.num} samples per row and seed, DPM-Solver++(3M), CPU (1 thread, a 2-core machine shared with "
             f"other jobs: the seconds are loaded ones), torch {torch.__version__}. TV and gap are for the prior "
             f"draws of seed {args.seeds[0]}; 'worst' is the largest over seeds {seeds} (the grid is fitted once, on "
             f"its own 1000 pilots). Targets at 10 NFE: |gap| <= {TARGET_GAP} nats/dim and weights TV <= "
             f"{TARGET_TV}, on every seed. Exact samples (seed {args.seeds[0]}): "
             + "; ".join(f"{m} TV {f['weights_tv']:.4f}, gap {f['logp_gap_per_dim']:+.4f}, SWD floor {f['swd']:.4f}"
                         for m, f in floors.items()) + ".", "",
             "## solver=fast (grid fitted to the model) at 5, 6 and 10 NFE", "",
             "| mixture | process | NFE | weights TV | gap / dim | worst TV | worst abs gap | SWD | target met | fit: "
             "evaluations (of 1000 pilots) | fit seconds | objective start → fitted | start grid |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        if r["grid"].startswith("fit"):
            f = r["fit"]
            lines.append(f"| {r['mixture']} | {r['sde']} | {r['nfe']} | {r['weights_tv']:.4f} | "
                         f"{r['logp_gap_per_dim']:+.4f} | {_worst(r, 'weights_tv'):.4f} | "
                         f"{_worst(r, 'logp_gap_per_dim'):.4f} | {r['swd']:.4f} | "
                         f"{('yes' if _meets(r) else 'no') if r['budget'] == 10 else '–'} | {f['nfe']} | "
                         f"{f['seconds']:.1f} | {f['objective_start']:.2e} → {f['objective']:.2e} | {f['start']} |")
    lines += ["", "## Every grid", "",
              f"The teacher is the {TEACHER}-step DPM-Solver++(3M) solve the fit imitates: its spread over seeds is "
              "the metrics' own noise.", "",
              "| mixture | process | NFE | grid | weights TV | gap / dim | worst TV | worst abs gap | SWD |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['mixture']} | {r['sde']} | {r['nfe']} | {r['grid']} | {r['weights_tv']:.4f} | "
              f"{r['logp_gap_per_dim']:+.4f} | {_worst(r, 'weights_tv'):.4f} | {_worst(r, 'logp_gap_per_dim'):.4f} | "
              f"{r['swd']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
