"""Every shipped solver at its defaults against the exact-sample floor on every process.

    python -m benchmarks.defaults                          # 9 solvers x 5 processes x 2 mixtures, 20,000 samples
    python -m benchmarks.defaults --solvers em --sdes ve --mixtures 12d --num 5000

Each solver is built as ``python run.py solver=NAME sde=PROCESS`` builds it: the config composed by
scoresde.cli.main.compose and the solver and process made by scoresde.cli.build.build, so the table measures the
shipped defaults of conf/solver/*.yaml and of the solver classes. The score is exact (models.MixtureScore) on two
mixtures the defaults were not tuned on: a 12-D mixture of 6 components with means, widths and weights drawn from
the benchmark's seed (twelve_d), and the 2-D eight modes of benchmarks.oracle.

Columns: NFE; SWD to exact samples of p_eps beside the floor, the SWD between two exact sample sets of the same
size; their ratio; weights TV; the gap of the mean exact log-density of the samples to that of exact samples, per
dimension (negative: too wide). A deterministic solver's samples are a function of its prior draw, so one draw's
SWD is as noisy as the floor's: every number is a mean over the prior draws ``--seeds`` (the floor over as many
pairs of exact sets). The SWD bound is 1.4 x: the exact probability-flow ODE (dopri5 at 1e-5) is at 1.13-1.26 x
the floor over three draws, so 1.25 would call exact samples a miss.

A solver is **at floor** when  SWD <= 1.4 x floor  and  |gap| <= 0.01 nats/dim  and  TV <= 0.02  (AT_FLOOR).
"""
import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.oracle import eight_modes
from benchmarks.report import sections
from scoresde.cli.build import build
from scoresde.cli.main import compose
from scoresde.data import GaussianMixture
from models import MixtureScore
from scoresde.evaluation import mixture_report, sliced_wasserstein
from scoresde.paths import config_dir
from solvers import fit_solver
from solvers.base import check_eps

SOLVERS = sorted(p.stem for p in (config_dir() / "solver").glob("*.yaml"))
PROCESSES = ["vp", "subvp", "ve", "cosine", "rf"]
MIXTURE_SEED = 2512
SWD_RATIO, GAP, TV = 1.4, 0.01, 0.02


def twelve_d(seed=MIXTURE_SEED):
    """6 components in 12-D: means ~ N(0, 2² I), then shifted so that the mixture's mean is 0 (as a run's
    standardised data is), stds ~ U(0.2, 1.0), weights ~ U(0.5, 3) (normalised).

    Uncentred (its mean 2.7 from 0), the VE prior N(0, 50² I) is not p_T, and a deterministic map of it is off
    the floor whatever the solver: the exact probability-flow ODE (dopri5 at 1e-5) reaches 1.79 x the floor there,
    1.13 x centred."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(6, 12, generator=g, dtype=torch.float64)
    stds = 0.2 + 0.8 * torch.rand(6, generator=g, dtype=torch.float64)
    weights = 0.5 + 2.5 * torch.rand(6, generator=g, dtype=torch.float64)
    means = means - (weights[:, None] * means).sum(0) / weights.sum()
    return GaussianMixture(means, stds, weights)


MIXTURES = {"12d": twelve_d, "2d": eight_modes}


def shipped(solver, process, overrides=()):
    """(sde, solver) as ``python run.py solver=SOLVER sde=PROCESS OVERRIDES`` builds them."""
    cfg, _ = compose([f"solver={solver}", f"sde={process}", *overrides])
    return build("sde", cfg.sde), build("solver", cfg.solver)


_FLOORS = {}


def floor(truth, num, seeds):
    """The mean SWD between two independent exact sample sets of size num, over one pair per seed."""
    key = (repr(truth.means.tolist()), repr(truth.stds.tolist()), repr(truth.weights.tolist()), num, tuple(seeds))
    if key in _FLOORS:
        return _FLOORS[key]
    swds = []
    for s in seeds:
        a = truth.sample(num, torch.Generator().manual_seed(10 * s + 5))
        b = truth.sample(num, torch.Generator().manual_seed(10 * s + 6))
        swds.append(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0)))
    _FLOORS[key] = sum(swds) / len(swds)
    return _FLOORS[key]


def at_floor(row):
    """The rule: SWD <= SWD_RATIO x floor, |log-density gap| <= GAP nats/dim, weights TV <= TV."""
    return row["swd"] <= SWD_RATIO * row["swd_floor"] and abs(row["logp_gap_per_dim"]) <= GAP and \
        row["weights_tv"] <= TV


def sample_once(sde, solver, oracle, mixture, truth, num, seed):
    """NFE, seconds, SWD to exact samples, weights TV and log-density gap of one solve from the prior draw ``seed``."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((num, *mixture.shape), gen)
    solver, _ = fit_solver(solver, sde, oracle, mixture.shape, dtype=x_T.dtype)
    x, nfe = solver(sde, oracle, x_T, gen)
    seconds = time.perf_counter() - start
    report = mixture_report(truth, x)
    exact = truth.sample(num, torch.Generator().manual_seed(seed + 1))
    swd = sliced_wasserstein(x, exact, generator=torch.Generator().manual_seed(0))
    return dict(nfe=nfe, seconds=seconds, swd=swd, weights_tv=report["weights_tv"],
                logp_gap_per_dim=report["logp_gap_per_dim"])


def measure(solver_name, process, mixture, num, seeds=(0, 1, 2), overrides=()):
    """One row: the shipped solver on the process, sampling ``num`` points of ``mixture`` with the exact score from
    each prior draw in ``seeds``; SWD, TV and gap are means over the seeds, ``swd_floor`` the mean SWD between two
    exact sample sets over as many pairs, ``seconds`` the mean per solve (a fitted grid's fit included, once)."""
    sde, solver = shipped(solver_name, process, overrides)
    oracle = MixtureScore(sde, mixture)
    eps = torch.tensor(check_eps(sde, solver.eps), dtype=torch.float64)
    truth = mixture.perturbed(sde.a(eps).item(), sde.s(eps).item())
    runs = [sample_once(sde, solver, oracle, mixture, truth, num, 10 * s) for s in seeds]
    r = {k: sum(run[k] for run in runs) / len(runs) for k in ("seconds", "swd", "weights_tv", "logp_gap_per_dim")}
    r.update(solver=solver_name, sde=process, nfe=runs[0]["nfe"], runs=runs)
    r["swd_floor"] = floor(truth, num, seeds)
    r["ratio"] = r["swd"] / r["swd_floor"]
    r["at_floor"] = at_floor(r)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=PROCESSES, choices=PROCESSES)
    p.add_argument("--solvers", nargs="+", default=SOLVERS, choices=SOLVERS)
    p.add_argument("--num", type=int, default=20000, help="samples per run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="prior draws per solver (and floor pairs)")
    p.add_argument("--out", default="benchmarks/results/defaults")
    p.add_argument("--rows", nargs="+", default=[], metavar="JSON",
                   help="write the table of rows measured before (<out>.json files of runs split by mixture or "
                        "process) instead of measuring")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.rows:
        rows = [r for path in args.rows for r in json.loads(Path(path).read_text())]
        rows = [r for r in rows if r["mixture"] in args.mixtures and r["sde"] in args.sdes
                and r["solver"] in args.solvers]
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        out.with_suffix(".md").write_text(table(rows, args))
        print(f"wrote {out.with_suffix('.md')} ({len(rows)} rows)")
        return
    rows = []
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        for process in args.sdes:
            for name in args.solvers:
                r = measure(name, process, mixture, args.num, args.seeds)
                r["mixture"] = mix_name
                rows.append(r)
                print(f"{mix_name:4s} {process:6s} {name:9s} nfe {r['nfe']:5d} {r['seconds']:7.1f}s  "
                      f"swd {r['swd']:.4f} / floor {r['swd_floor']:.4f} = {r['ratio']:.2f}  "
                      f"tv {r['weights_tv']:.4f}  gap {r['logp_gap_per_dim']:+.4f}  "
                      f"{'at floor' if r['at_floor'] else 'MISS'}", flush=True)
                out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(table(rows, args))
    print(f"wrote {out.with_suffix('.md')}")


def table(rows, args):
    misses = [r for r in rows if not r["at_floor"]]
    lines = [f"Command: `python -m benchmarks.defaults {' '.join(_argv(args))}`", "",
             f"{args.num} samples per run, means over prior draws {args.seeds}, CPU ({torch.get_num_threads()} "
             f"threads, shared with other jobs: the seconds are of a loaded machine), torch {torch.__version__}. "
             "Each solver as `python run.py solver=NAME sde=PROCESS` builds it, exact mixture score (seconds include "
             f"the fit of a fitted grid). Floor: the mean SWD between two exact sample sets of {args.num}, one pair "
             f"per draw. At floor: SWD <= "
             f"{SWD_RATIO} x floor and |log-density gap| <= {GAP} nats/dim and weights TV <= {TV}.", "",
             f"**{len(rows) - len(misses)} of {len(rows)} at floor.**", ""]
    wanted = len(args.mixtures) * len(args.sdes) * len(args.solvers)
    if len(rows) < wanted:
        done = {(r["mixture"], r["sde"], r["solver"]) for r in rows}
        absent = [f"{m} {p} {s}" for m in args.mixtures for p in args.sdes for s in args.solvers
                  if (m, p, s) not in done]
        lines += [f"Not measured ({len(absent)} of {wanted}): " + ", ".join(absent) + ".", ""]
    lines += sections(rows, args.mixtures, args.sdes, lambda sel: f" (SWD floor {sel[0]['swd_floor']:.4f})",
                      [("solver", False), ("NFE", True), ("seconds / draw", True), ("SWD", True), ("SWD / floor", True),
                       ("weights TV", True), ("log-density gap / dim", True), ("verdict", False)],
                      lambda r: [r["solver"], str(r["nfe"]), f"{r['seconds']:.1f}", f"{r['swd']:.4f}",
                                 f"{r['ratio']:.2f}", f"{r['weights_tv']:.4f}", f"{r['logp_gap_per_dim']:+.4f}",
                                 "at floor" if r["at_floor"] else "**miss**"])
    return "\n".join(lines)


def _argv(args):
    return [f"--mixtures {' '.join(args.mixtures)}", f"--sdes {' '.join(args.sdes)}",
            f"--solvers {' '.join(args.solvers)}", f"--num {args.num}", f"--seeds {' '.join(map(str, args.seeds))}",
            f"--out {args.out}"]


if __name__ == "__main__":
    main()
