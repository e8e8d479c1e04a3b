"""Training to a wall-clock budget on 2-D data of known density: how close each objective and each choice gets.

    nice -n 19 python -m benchmarks.training --out benchmarks/results/training_budget
    python -m benchmarks.training --part objectives --budget 240 --out /tmp/objectives

A row composes conf/ as run.py does (the row's overrides on the command line's defaults), learns its steps per
second in a short calibration run, sets train.steps so that training takes ``budget`` seconds (the cosine
schedule then ends at the budget), trains from scratch and measures:

- KL(p ‖ p_θ) per dimension = mean over test points x ~ p of (−log p_θ(x) − (−log p(x))) / d, paired on the same
  points: the model's NLL by the probability-flow ODE (eval.ode: dopri5, rtol = atol = 1e-5) and the data set's
  exact log-density, so the entropy's sampling noise cancels; with the standard error of that mean;
- weights TV: total variation between the mixture's weights and those of ``samples`` points drawn by the
  configured solver (each matched to a component by maximum posterior, evaluation.mixture_report), beside
  the TV of as many exact samples (the floor);
- steps and seconds of training.

Parts: 'default' (the default job itself, `python run.py data=<set> likelihood=true` with 10,000 test points and
20,000 samples, for its own train.steps: the seconds are measured; ``--fresh K`` adds K mixtures drawn from
FRESH_SEED, which no recipe was chosen on), 'objectives' (each loss.weighting with the
default job's other settings, for ``budget`` seconds), 'preset' (experiment=flow_matching and experiment=precise as 'default'), 'choices' (one change at a time to the default job, for
``choice_budget`` seconds: width and depth, time embedding, batch size, learning rate and schedule, EMA decay,
stratified t). Writes <out>.md and <out>.json;
a part given alone updates only its own rows. Training uses every core torch is given (OMP_NUM_THREADS).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from scoresde.evaluation import mixture_report
from scoresde.data import GaussianMixture

CONF = Path(__file__).resolve().parents[1] / "conf"
DATA = {  # name: overrides
    "eight_gaussians": ["data=eight_gaussians"],
    "gmm": ["data=gmm"],
    "six": ["data=gmm", "data.means=[[-2.5,-1.0],[-1.2,1.8],[0.4,-0.2],[1.9,2.1],[2.6,-1.7],[-0.3,-2.6]]",
            "data.stds=[0.25,0.6,0.15,0.35,0.45,0.2]", "data.weights=[3,5,2,6,4,1]"],
    "checkerboard": ["data=checkerboard"],
}
PRESETS = {"flow_matching": ["experiment=flow_matching"], "precise": ["experiment=precise"]}
FRESH_SEED = 2027  # the --fresh mixtures' seed: no recipe was chosen on them


def fresh(k, seed=FRESH_SEED):
    """``k`` 2-D Gaussian mixtures of known density drawn from ``seed``: 3 to 8 components each, means uniform
    on [-3, 3]², stds log-uniform on [0.15, 0.6], weights Dirichlet(2) (each at least 0.02, then normalized);
    name: data overrides, as DATA."""
    rng = np.random.default_rng(seed)
    sets = {}
    for i in range(k):
        n = int(rng.integers(3, 9))
        means = np.round(rng.uniform(-3.0, 3.0, (n, 2)), 2)
        stds = np.round(np.exp(rng.uniform(np.log(0.15), np.log(0.6), n)), 3)
        weights = np.maximum(rng.dirichlet(np.full(n, 2.0)), 0.02)
        weights = np.round(weights / weights.sum(), 3)
        sets[f"fresh{i}"] = ["data=gmm", f"data.means={means.tolist()}".replace(" ", ""),
                             f"data.stds={stds.tolist()}".replace(" ", ""),
                             f"data.weights={weights.tolist()}".replace(" ", "")]
    return sets

FORMER = ["model.parameterization=eps", "loss.weighting=eps", "model.net.hidden=128", "model.net.embed_dim=128",
          "solver=em"]  # the former default job
OBJECTIVES = {  # name: overrides over the former default job (whose loss is eps)
    "eps (the default)": [],
    "likelihood, importance t": ["loss.weighting=likelihood", "loss.time=importance"],
    "flow matching (sde=rf, v)": ["loss.weighting=flow", "sde=rf", "model.parameterization=v"],
    "edm (x0)": ["loss.weighting=edm", "model.parameterization=x0"],
}
CHOICES = {  # name: overrides over the former default job (an MLP 128 wide, 4 blocks, batch 1024, cosine, EMA 0.999)
    "the default": [],
    "width 64": ["model.net.hidden=64"],
    "width 256": ["model.net.hidden=256"],
    "depth 2": ["model.net.depth=2"],
    "depth 6": ["model.net.depth=6"],
    "sinusoidal time embedding": ["model.net.embedding=sinusoidal"],
    "batch 512": ["train.batch_size=512"],
    "batch 2048": ["train.batch_size=2048"],
    "lr 1e-3": ["train.lr=1e-3"],
    "lr 4e-3": ["train.lr=4e-3"],
    "constant lr": ["train.schedule=constant"],
    "EMA 0.99": ["train.ema_decay=0.99"],
    "EMA 0.9999": ["train.ema_decay=0.9999"],
    "t not stratified": ["loss.stratified=false"],
}


def config(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=["+eval=ode", *overrides])


def build(cfg, **train):
    torch.manual_seed(cfg.seed)
    sde, data = instantiate(cfg.sde), instantiate(cfg.data)
    model = instantiate(cfg.model, sde=sde, data=data)
    trainer = instantiate(cfg.train, progress=False, ckpt_every=10**9, **train)
    return sde, data, model, instantiate(cfg.loss), trainer


def steps_per_second(cfg, out, steps=1000):
    """Steps per second of the row's training after a warm start (the first 50 steps are not timed)."""
    sde, data, model, loss, _ = build(cfg)
    warm = instantiate(cfg.train, progress=False, ckpt_every=10**9, steps=50)
    warm.fit(model, loss, sde, data, out / "calibrate", "cpu")
    timed = instantiate(cfg.train, progress=False, ckpt_every=10**9, steps=50 + steps)
    start = time.perf_counter()
    timed.fit(model, loss, sde, data, out / "calibrate", "cpu", resume=out / "calibrate" / "checkpoint.pt")
    return steps / (time.perf_counter() - start)


def paired_kl(nll, exact_nll, dim):
    """KL per dimension as the mean over test points of (NLL_θ(x) − NLL(x)) / d, and its standard error."""
    gap = (np.asarray(nll, dtype=np.float64) - np.asarray(exact_nll, dtype=np.float64)) / dim
    return float(gap.mean()), float(gap.std(ddof=1) / math.sqrt(len(gap)))


def measure(name, overrides, budget, out, test=2000, samples=20000, fixed_steps=None):
    """Train the composed configuration for ``budget`` seconds (or ``fixed_steps``; 0: no training, as for
    model=oracle) and measure it."""
    cfg = config(overrides)
    work = out.parent / f".{out.name}_work"
    work.mkdir(parents=True, exist_ok=True)
    steps = fixed_steps if fixed_steps is not None else max(100, int(budget * steps_per_second(cfg, work)))
    sde, data, model, loss, trainer = build(cfg, steps=steps)
    start = time.perf_counter()
    ema = trainer.fit(model, loss, sde, data, work / "train", "cpu")[0] if steps else model
    seconds = time.perf_counter() - start
    ema.eval()
    x = data.test(test, torch.Generator().manual_seed(cfg.seed + 1))
    start = time.perf_counter()
    nll, _ = instantiate(cfg.eval.ode).likelihood(sde, ema, x)
    ode_seconds = time.perf_counter() - start
    kl, kl_stderr = paired_kl(nll.double().cpu().numpy(), (-data.log_prob(x.double())).numpy(), x[0].numel())
    row = {"name": name, "overrides": list(overrides), "steps": steps, "train_seconds": seconds,
           "kl": kl, "kl_stderr": kl_stderr, "test": test,
           "likelihood_seconds": ode_seconds, "threads": torch.get_num_threads()}
    if isinstance(data, GaussianMixture):
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        with torch.no_grad():
            solver = instantiate(cfg.solver)
            xs, _ = solver(sde, ema, sde.prior_sample((samples, *data.shape), gen), gen)
        exact = data.sample(samples, torch.Generator().manual_seed(cfg.seed + 3), dtype=torch.float64)
        row.update(weights_tv=mixture_report(data, xs)["weights_tv"], exact_tv=mixture_report(data, exact)["weights_tv"],
                   samples=samples, solver=type(solver).__name__)
    print(json.dumps(row), flush=True)
    return row


def job(name, overrides, out, test=10000, samples=20000):
    """``python run.py <overrides> likelihood=true`` itself, with ``test`` test points and ``samples`` samples
    (the default job draws 2,000 and has no likelihood: its own wall time is below the one measured here);
    KL and its standard error from the run's likelihood.npz (its nll and exact_nll per point). The scratch run
    directory is emptied first: run.py refuses a new run into a finished run's directory."""
    run_dir = out.parent / f".{out.name}_work" / "job"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [sys.executable, str(CONF.parent / "run.py"), *overrides, "likelihood=true", f"eval.num={test}",
            f"sample.num={samples}", "progress=false", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=CONF.parent, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    per_point = np.load(run_dir / "likelihood.npz")
    kl, kl_stderr = paired_kl(per_point["nll"], per_point["exact_nll"], per_point["x"][0].size)
    row = {"name": name, "overrides": list(overrides), "steps": metrics["train_steps"],
           "train_seconds": metrics["train_seconds"], "wall_seconds": wall, "kl": kl,
           "kl_stderr": kl_stderr, "test": test,
           **({"weights_tv": metrics["weights_tv"]} if "weights_tv" in metrics else {}),
           "samples": samples, "command": "python run.py " + " ".join(overrides)}
    print(json.dumps(row), flush=True)
    return row


def part_rows(part, budget, choice_budget, out, sets=DATA, presets=tuple(PRESETS)):
    if part == "default":
        return [{**job(f"`python run.py {' '.join(o)}`", o, out), "data": d} for d, o in sets.items()]
    if part == "preset":
        return [{**job(f"`python run.py {' '.join(PRESETS[p] + o)}`", PRESETS[p] + o, out), "data": d}
                for p in presets for d, o in sets.items()]
    if part == "objectives":
        return [{**measure(n, DATA["eight_gaussians"] + FORMER + o, budget, out, test=4000), "data": "eight_gaussians"}
                for n, o in OBJECTIVES.items() if o]
    return [{**measure(n, DATA["eight_gaussians"] + FORMER + o, choice_budget, out), "data": "eight_gaussians"}
            for n, o in CHOICES.items()]


def table(rows, part):
    sel = [r for r in rows if r["part"] == part]
    if not sel:
        return []
    lines = ["| row | data | steps | train s | KL nats/dim | ± stderr | test points | weights TV | exact TV |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sel:
        tv = f"{r['weights_tv']:.4f}" if "weights_tv" in r else "–"
        floor = f"{r['exact_tv']:.4f}" if "exact_tv" in r else "–"
        seconds = f"{r['train_seconds']:.0f}" + (f" ({r['wall_seconds']:.0f} whole run)" if "wall_seconds" in r else "")
        lines.append(f"| {r['name']} | {r['data']} | {r['steps']} | {seconds} | {r['kl']:.4f} | "
                     f"{r['kl_stderr']:.4f} | {r['test']} | {tv} | {floor} |")
    return lines + [""]


TITLES = {
    "default": "The default job, `python run.py data=... likelihood=true` (its own train.steps; seconds measured)",
    "preset": "The presets experiment=flow_matching (sde=rf, v, loss.weighting=flow) and experiment=precise (edm, x0, 128 wide), `python run.py experiment=... data=...` (their own train.steps)",
    "objectives": "Objectives with the former default job's other settings on the eight Gaussians (budget {budget:g} s)",
    "choices": "One choice changed from the former default job on the eight Gaussians (budget {choice_budget:g} s)",
}


def write(rows, out, args, command):
    """<out>.md and <out>.json of ``rows``; a row without its ``run`` (the command that measured it) gets
    ``command``, and the table lists every command its rows came from."""
    for r in rows:
        r.setdefault("run", command)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    lines = ["# Training to a wall-clock budget on 2-D data of known density", "",
             "Rows measured by " + "; ".join(f"`{c}`" for c in runs) + " (a later command replaces only the "
             "rows of its own parts, presets and data sets).", "",
             f"Device: CPU, {args.threads} torch threads, torch {torch.__version__}. KL is per dimension, paired on the "
             "same test points (model NLL by the probability-flow ODE, dopri5 at 1e-5, minus the exact NLL). "
             "Weights TV at 20,000 samples of the configured solver; 'exact TV' is what as many exact samples "
             "reach (the floor). Written by benchmarks/training.py.", ""]
    for part in ("default", "preset", "objectives", "choices"):
        body = table(rows, part)
        if body:
            lines += [f"## {TITLES[part].format(budget=args.budget, choice_budget=args.choice_budget)}", ""] + body
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/training_budget")
    p.add_argument("--part", choices=("all", "default", "preset", "objectives", "choices"), default="all")
    p.add_argument("--budget", type=float, default=240.0, help="training seconds of the objective rows")
    p.add_argument("--choice-budget", type=float, default=60.0, help="training seconds of the choice rows")
    p.add_argument("--fresh", type=int, default=0, metavar="K",
                   help="also K mixtures drawn from FRESH_SEED (fresh0, ...) in the default and preset parts")
    p.add_argument("--only-fresh", action="store_true", help="the default and preset parts on the fresh mixtures only")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS),
                   help="the presets of the preset part (their rows replace only those presets' rows)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count())
    p.add_argument("--render", action="store_true", help="only write <out>.md again from <out>.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else []
    if args.render:
        write(old, out, args, "an earlier command")
        return old
    parts = ("default", "preset", "objectives", "choices") if args.part == "all" else (args.part,)
    rows = [r for r in old if r["part"] not in parts or (args.only_fresh and not r["data"].startswith("fresh"))
            or (r["part"] == "preset" and not any(PRESETS[p][0] in r["overrides"] for p in args.presets))]
    for part in parts:
        sets = {**({} if args.only_fresh else DATA), **fresh(args.fresh)}
        rows += [{**r, "part": part} for r in part_rows(part, args.budget, args.choice_budget, out, sets, args.presets)]
        write(rows, out, args, "python -m benchmarks.training " + " ".join(sys.argv[1:] if argv is None else argv))
    return rows


if __name__ == "__main__":
    main()
