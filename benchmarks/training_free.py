"""The best training-free sampler at one to five evaluations, on the exact oracle: what a distilled student is
measured against.

    python -m benchmarks.training_free --mixtures 2d 64d --sdes vp rf --nfe 1 2 4 5

Every deterministic setting that benchmarks.peers runs (ours: DPM-Solver++(3M) on the uniform-λ grid, tuned and
fitted grids; diffusers' DPM-Solver++, UniPC, DEIS and DDIM schedulers through benchmarks.peers' exact mapping),
each on the same prior draws of each seed with the exact score, scored as benchmarks.oracle scores it (weights TV
and the log-density gap per dimension against p_eps). A setting that cannot run at that NFE (an order above it, a
fit that needs more steps) is named and skipped. For each (mixture, process, NFE) the best by benchmarks.peers'
error (max(|gap|/0.01, TV/0.015)) is the row's "best". Writes <out>.md and <out>.json; best(...) reads the JSON.
"""
import argparse
import json
import os
import platform
from pathlib import Path

import torch

from benchmarks.oracle import MIXTURES, run_one
from benchmarks.peers import OURS, SDES, error, peers
from sde.errors import ConfigError

DEFAULT_OUT = "benchmarks/results/training_free"


def measure(sde, mixture, nfe, num, seeds, settings):
    """{name: [per-seed results]} of each setting that runs at ``nfe``, and {name: why} of those that cannot."""
    found, skipped = {}, {}
    for name, make in settings.items():
        try:
            solver = make(nfe)
            if solver is None:
                raise ConfigError(f"order above {nfe}")
            runs = [run_one(sde, mixture, solver, num, seed) for seed in seeds]
        except (ConfigError, ValueError, RuntimeError, IndexError) as e:
            skipped[name] = str(e).splitlines()[0][:120]
            continue
        if any(r["nfe"] != nfe for r in runs):
            skipped[name] = f"made {runs[0]['nfe']} evaluations"
            continue
        found[name] = runs
    return found, skipped


def summary(name, runs):
    worst = max(runs, key=error)
    return {"solver": name, "weights_tv": runs[0]["weights_tv"], "logp_gap_per_dim": runs[0]["logp_gap_per_dim"],
            "worst_tv": max(r["weights_tv"] for r in runs), "worst_gap": worst["logp_gap_per_dim"],
            "error": max(error(r) for r in runs)}


def best(mixture, sde, nfe, path=DEFAULT_OUT):
    """The best training-free setting's summary at ``nfe`` from the committed table (None where not measured)."""
    path = Path(path).with_suffix(".json")
    if not path.exists():
        return None
    for row in json.loads(path.read_text())["rows"]:
        if (row["mixture"], row["sde"], row["nfe"]) == (mixture, sde, nfe):
            return row["best"]
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=["2d"], choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=["vp", "rf"], choices=list(SDES))
    p.add_argument("--nfe", nargs="+", type=int, default=[1, 2, 4, 5])
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dpm-solver", default=os.environ.get("DPM_SOLVER_PYTORCH"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    theirs, missing = peers(args.dpm_solver)
    settings = {**OURS, **theirs}
    out = Path(args.out)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows = previous.get("rows", [])
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            for nfe in args.nfe:
                found, skipped = measure(sde, mixture, nfe, args.num, args.seeds, settings)
                results = sorted((summary(name, runs) for name, runs in found.items()), key=lambda r: r["error"])
                row = {"mixture": mix_name, "sde": sde_name, "nfe": nfe, "best": results[0] if results else None,
                       "all": results, "skipped": skipped}
                rows = [r for r in rows if (r["mixture"], r["sde"], r["nfe"]) != (mix_name, sde_name, nfe)] + [row]
                b = row["best"]
                print(f"{mix_name} {sde_name} {nfe} NFE: best {b['solver']} gap {b['logp_gap_per_dim']:+.4f} "
                      f"TV {b['weights_tv']:.4f} (worst {b['worst_gap']:+.4f}, {b['worst_tv']:.4f}); "
                      f"{len(skipped)} skipped", flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=1))
                out.with_suffix(".md").write_text(table(rows, args, missing))


def table(rows, args, missing):
    lines = [f"Command: `python -m benchmarks.training_free --mixtures {' '.join(args.mixtures)} --sdes "
             f"{' '.join(args.sdes)} --nfe {' '.join(map(str, args.nfe))} --num {args.num} --seeds "
             f"{' '.join(map(str, args.seeds))}` (rows of earlier commands kept)", "",
             f"The exact score; {args.num} samples per seed; gap and TV for seed 0, 'worst' over the seeds. Machine: "
             f"{platform.machine()}, {args.threads} torch thread(s){'; ' + args.note if args.note else ''}; torch "
             f"{torch.__version__}." + (" Missing: " + "; ".join(missing) if missing else ""), "",
             "| mixture | process | NFE | best training-free | gap/dim | TV | worst gap | worst TV | runner-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["mixture"], r["sde"], r["nfe"])):
        b = r["best"]
        if b is None:
            lines.append(f"| {r['mixture']} | {r['sde']} | {r['nfe']} | none runs | | | | | |")
            continue
        second = r["all"][1] if len(r["all"]) > 1 else None
        runner = f"{second['solver']} ({second['logp_gap_per_dim']:+.3f}, {second['weights_tv']:.3f})" if second else "–"
        lines.append(f"| {r['mixture']} | {r['sde']} | {r['nfe']} | {b['solver']} | {b['logp_gap_per_dim']:+.4f} | "
                     f"{b['weights_tv']:.4f} | {b['worst_gap']:+.4f} | {b['worst_tv']:.4f} | {runner} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
