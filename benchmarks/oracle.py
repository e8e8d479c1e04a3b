"""Solver accuracy and cost against the exact Gaussian-mixture oracle.

    python -m benchmarks.oracle                       # every solver, budgets 5..1000, VP and VE, 2-D and 64-D
    python -m benchmarks.oracle --solvers em pc ode --budgets 1000 --out benchmarks/results/issue2

For each (mixture, SDE, solver, budget): NFE, wall time, total-variation error of the component weights,
sliced Wasserstein distance to exact samples next to the same statistic between two exact samples (the noise
floor), and the gap between the mean exact log-density of the samples and that of exact samples, per
dimension. Writes <out>.md (a table per mixture and SDE) and <out>.png (error against NFE).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.report import sections
from scoresde.evaluation import mixture_report, sliced_wasserstein
from models import MixtureScore
from sde import VESDE, VPSDE
from solvers import DDIM, AdaptiveSDE, DPMSolver, EulerMaruyama, Heun, PredictorCorrector, ProbabilityFlowODE
from solvers import TuneGrid, fit_solver
from solvers.base import check_eps
from scoresde.data import GaussianMixture, RandomMixture

SDES = {"vp": VPSDE, "ve": VESDE}


def eight_modes():
    """8 modes on a circle of radius 4, unequal weights 1..8 and widths (conf/data/gmm.yaml)."""
    angles = torch.arange(8, dtype=torch.float64) * (torch.pi / 4)
    means = 4 * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, [0.3, 0.4, 0.5, 0.3, 0.4, 0.5, 0.3, 0.4], list(range(1, 9)))


MIXTURES = {"2d": eight_modes, "64d": lambda: RandomMixture(components=8, dim=64, spread=1.0, seed=0)}

# solver name -> (budget -> solver or None when the budget does not fit); budgets are NFE.
SOLVERS = {
    "em": lambda n: EulerMaruyama(steps=n),
    "pc": lambda n: PredictorCorrector(steps=n // 2) if n >= 2 else None,
    "ancestral": lambda n: PredictorCorrector(steps=n, predictor="ancestral", corrector="none"),
    "ode_euler": lambda n: ProbabilityFlowODE(method="euler", steps=n),
    "ode_rk4": lambda n: ProbabilityFlowODE(method="rk4", steps=n // 4) if n >= 4 else None,
    "ddim": lambda n: DDIM(steps=n),
    "heun": lambda n: Heun(steps=n // 2) if n >= 2 else None,
    "dpm2": lambda n: DPMSolver(steps=n, order=2),
    "dpm3": lambda n: DPMSolver(steps=n, order=3),
    "dpm3_tuned": lambda n: DPMSolver(steps=n, order=3, grid=TuneGrid()) if n <= 50 else None,
}
# adaptive solvers: their own NFE, one run per tolerance
ADAPTIVE = {
    "ode_dopri5": (lambda tol: ProbabilityFlowODE(method="dopri5", rtol=tol, atol=tol), [1e-2, 1e-3, 1e-4, 1e-5]),
    "adaptive_sde": (lambda tol: AdaptiveSDE(rtol=tol, atol=tol / 5), [0.2, 0.1, 0.05, 0.02]),
}


def run_one(sde, mixture, solver, num, seed):
    gen = torch.Generator().manual_seed(seed)
    oracle = MixtureScore(sde, mixture)
    x_T = sde.prior_sample((num, *mixture.shape), gen)
    eps = check_eps(sde, solver.eps)
    solver, fit = fit_solver(solver, sde, oracle, mixture.shape, dtype=x_T.dtype)
    tune = None if fit is None else {k: fit.get(k) for k in ("solves", "nfe", "pilots", "start", "loss_start", "loss",
                                                         "seconds")}
    start = time.perf_counter()
    x, nfe = solver(sde, oracle, x_T, gen)
    seconds = time.perf_counter() - start
    eps = torch.tensor(eps, dtype=torch.float64)
    truth = mixture.perturbed(sde.a(eps).item(), sde.s(eps).item())
    report = mixture_report(truth, x)
    exact = truth.sample(num, torch.Generator().manual_seed(seed + 1))
    swd = sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(0))
    return {"nfe": nfe, "seconds": seconds, "weights_tv": report["weights_tv"], "swd": swd,
            "logp_gap_per_dim": report["logp_gap_per_dim"], "tune": tune}


def noise_floor(mixture, num, seed):
    a = mixture.sample(num, torch.Generator().manual_seed(seed + 2))
    b = mixture.sample(num, torch.Generator().manual_seed(seed + 3))
    tv = mixture_report(mixture, a)
    return {"swd": sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0)),
            "weights_tv": tv["weights_tv"], "logp_gap_per_dim": tv["logp_gap_per_dim"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=list(SDES), choices=list(SDES))
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS) + list(ADAPTIVE),
                   choices=list(SOLVERS) + list(ADAPTIVE))
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 20, 50, 100, 200, 1000])
    p.add_argument("--num", type=int, default=10000, help="samples per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/solvers")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())

    rows = []
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        floor = noise_floor(mixture, args.num, args.seed)
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            runs = [(name, b, SOLVERS[name](b)) for name in args.solvers if name in SOLVERS for b in args.budgets]
            runs += [(name, tol, ADAPTIVE[name][0](tol)) for name in args.solvers if name in ADAPTIVE
                     for tol in ADAPTIVE[name][1]]
            for name, setting, solver in runs:
                if solver is None:
                    continue
                r = run_one(sde, mixture, solver, args.num, args.seed)
                r.update(mixture=mix_name, sde=sde_name, solver=name, setting=setting, swd_floor=floor["swd"])
                rows.append(r)
                print(f"{mix_name:4s} {sde_name:3s} {name:12s} {setting!s:>7s}  nfe {r['nfe']:5d}  "
                      f"{r['seconds']:7.2f}s  tv {r['weights_tv']:.4f}  swd {r['swd']:.4f} (floor {floor['swd']:.4f})"
                      f"  gap {r['logp_gap_per_dim']:+.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table(rows, args))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def table(rows, args):
    lines = [f"Command: `python -m benchmarks.oracle {' '.join(_argv(args))}`", "",
             f"{args.num} samples per run, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}.", ""]
    lines += sections(rows, args.mixtures, args.sdes, lambda sel: f" (SWD noise floor {sel[0]['swd_floor']:.4f})",
                      [("solver", False), ("setting", False), ("NFE", True), ("seconds", True), ("weights TV", True),
                       ("SWD", True), ("log-density gap / dim", True)],
                      lambda r: [r["solver"], str(r["setting"]), str(r["nfe"]), f"{r['seconds']:.2f}",
                                 f"{r['weights_tv']:.4f}", f"{r['swd']:.4f}", f"{r['logp_gap_per_dim']:+.4f}"])
    tuned = [r for r in rows if r.get("tune")]
    if tuned:
        lines += ["### Grid tuning", "",
                  "`TuneGrid` fits the grid once per model, SDE and budget (solvers/fitting.py); its cost is not in "
                  "the NFE and seconds above. Pilot loss: mean squared distance per dimension to the fine solve, on "
                  "the start grid and after tuning.", "",
                  "| mixture | SDE | solver | NFE | start grid | pilot loss start → tuned | solves | evaluations "
                  "(batch of pilots) | seconds |", "|---|---|---|---:|---|---|---:|---:|---:|"]
        lines += [f"| {r['mixture']} | {r['sde'].upper()} | {r['solver']} | {r['nfe']} | {r['tune']['start']} | "
                  f"{r['tune']['loss_start']:.2e} → {r['tune']['loss']:.2e} | {r['tune']['solves']} | "
                  f"{r['tune']['nfe']} ({r['tune']['pilots']}) | {r['tune']['seconds']:.1f} |" for r in tuned]
        lines.append("")
    return "\n".join(lines)


def _argv(args):
    return [f"--mixtures {' '.join(args.mixtures)}", f"--sdes {' '.join(args.sdes)}",
            f"--solvers {' '.join(args.solvers)}", f"--budgets {' '.join(map(str, args.budgets))}",
            f"--num {args.num}", f"--seed {args.seed}", f"--out {args.out}"]


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["mixture"], r["sde"]) for r in rows})
    names = sorted({r["solver"] for r in rows})
    style = {name: dict(color=plt.get_cmap("tab20")(i % 20), marker="os^Dv"[i % 5], ms=3, label=name)
             for i, name in enumerate(names)}
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 7), squeeze=False)
    for col, (mix_name, sde_name) in enumerate(panels):
        sel = [r for r in rows if (r["mixture"], r["sde"]) == (mix_name, sde_name)]
        for name in sorted({r["solver"] for r in sel}):
            pts = sorted((r["nfe"], r["weights_tv"], abs(r["logp_gap_per_dim"])) for r in sel if r["solver"] == name)
            axes[0][col].plot([p[0] for p in pts], [p[1] for p in pts], "-", **style[name])
            axes[1][col].plot([p[0] for p in pts], [p[2] for p in pts], "-", **style[name])
        for row, what in enumerate(["weights TV", "|log-density gap| / dim"]):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel(what)
            ax.set_title(f"{mix_name}, {sde_name.upper()}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
