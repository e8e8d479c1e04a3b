"""Few-step students distilled from the exact mixture score (teacher=oracle), against the exact answer.

    python -m benchmarks.distill --mixtures 2d --sdes vp --methods progressive --steps 4 --out benchmarks/results/distill

For each (mixture, process, method, student steps): a student (the default MLP, parameterized as the method asks)
trained by the ordinary Trainer on the method's loss (scoresde.training.distill) with the oracle as teacher, then
``--num`` samples with the student's own sampler at its step count from the prior draws of each seed: weights TV
and the gap of the mean exact log-density per dimension against exact samples (benchmarks.oracle's measures),
beside the exact-sample floor and beside the training-free DPM-Solver++(3M) (uniform-λ grid) on the oracle at the
same NFE; the paired gap against the exact probability-flow map on the same prior draws (evaluate), the
student's own error without the ±0.006 seed-to-seed noise of the gap; and the student's cost: optimizer steps,
teacher evaluations (network calls on batches), seconds on this CPU (a consistency student is one model for
every step count: trained once per process, its rows share that cost). Targets: at 4 NFE |gap| <= 0.01 and
TV <= 0.015; at 2 NFE 0.03 and 0.02. Writes <out>.md and <out>.json.
"""
import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import training_free
from benchmarks.oracle import MIXTURES, noise_floor
from benchmarks.peers import error
from models import MLP, MixtureScore, ScoreModel
from scoresde.cli.distill import PARAMETERIZATION
from scoresde.evaluation import mixture_report
from scoresde.training import Trainer
from scoresde.training.distill import distillation
from sde import VESDE, VPSDE
from sde.processes import RectifiedFlow
from solvers import DDIM, ConsistencySampler, DPMSolver, ProbabilityFlowODE
from solvers.base import check_eps

SDES = {"vp": VPSDE, "rf": RectifiedFlow, "ve": VESDE}
TARGETS = {4: (0.01, 0.015), 2: (0.03, 0.02)}
TRAIN_STEPS = {"2d": 6000, "64d": 18000}


class Counted(torch.nn.Module):
    """The teacher, its calls counted."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, x, t):
        self.calls += 1
        return self.teacher(x, t)


def sampler(method, steps, grid="karras"):
    if method == "consistency":
        return ConsistencySampler(steps, grid=grid)
    if method == "progressive":
        return DDIM(steps, grid=grid)
    return ProbabilityFlowODE(method="euler", steps=steps, grid="time")


def exact_map(sde, mixture, x_T, eps):
    """The probability-flow ODE's own end points of x_T at eps under the exact score: DPM-Solver++(3M), 200
    uniform-λ steps (400 steps move the paired gap by < 2e-4 per dim on both mixtures, VP and RF)."""
    solver = DPMSolver(200, order=3, grid="logsnr", eps=eps)
    with torch.no_grad():
        return solver(sde, MixtureScore(sde, mixture), x_T, None)[0]


def evaluate(sde, mixture, model, solver, num, seeds, ends=None):
    """Per seed: weights TV and log-density gap of the samples against exact samples (mixture_report), and the
    paired gap, mean over the same prior draws x_T of [log p(x̂(x_T)) − log p(Φ(x_T))] per dim with Φ the exact
    probability-flow map (exact_map): the sampler's own error, free of the ±0.006 sampling noise of the gap.
    ``ends``: a dict that keeps Φ(x_T) by (seed, eps) for the next call on the same process and mixture."""
    ends = {} if ends is None else ends
    eps = check_eps(sde, solver.eps)
    e = torch.tensor(eps, dtype=torch.float64)
    truth = mixture.perturbed(sde.a(e).item(), sde.s(e).item())
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        x_T = sde.prior_sample((num, *mixture.shape), gen)
        with torch.no_grad():
            x, nfe = solver(sde, model, x_T, gen)
        report = mixture_report(truth, x)
        if (seed, eps) not in ends:
            ends[seed, eps] = exact_map(sde, mixture, x_T, eps)
        exact = ends[seed, eps]
        paired = (truth.log_prob(x.double().reshape(num, -1)) - truth.log_prob(exact.double().reshape(num, -1)))
        out.append({"seed": seed, "nfe": nfe, "weights_tv": report["weights_tv"],
                    "logp_gap_per_dim": report["logp_gap_per_dim"],
                    "paired_gap_per_dim": paired.mean().item() / truth.dim})
    return out


SETTINGS = ("train_steps", "batch", "lr", "ema", "hidden", "depth", "grid", "intervals", "substeps", "seed",
            "weighting", "target_ema")


def settings(args, mixture, steps):
    """The student's settings for ``mixture`` at ``steps``, the defaults resolved: ``--train-steps`` or
    TRAIN_STEPS[mixture]; ``--substeps`` or 128 teacher intervals in all (Heun's, whose own paired gap at 128 is
    −0.001 on the 2-D VP mixture)."""
    out = {k: getattr(args, k) for k in SETTINGS}
    out["train_steps"] = args.train_steps or TRAIN_STEPS[mixture]
    out["substeps"] = args.substeps or max(1, 128 // steps)
    return out


def distill_one(sde, mixture, method, steps, s):
    """A student of ``method`` at ``steps`` trained with the settings ``s`` (settings), and its cost."""
    teacher = Counted(MixtureScore(sde, mixture))
    loss = distillation(method, teacher, steps, intervals=s["intervals"], substeps=s["substeps"], seed=s["seed"],
                        grid=s["grid"], weighting=s["weighting"], target_ema=s["target_ema"])
    torch.manual_seed(s["seed"])
    model = ScoreModel(MLP(mixture.shape, hidden=s["hidden"], depth=s["depth"], embed_dim=64), sde,
                       parameterization=PARAMETERIZATION[method])
    trainer = Trainer(steps=s["train_steps"], batch_size=s["batch"], lr=s["lr"], warmup=100, ema_decay=s["ema"],
                      progress=False, ckpt_every=10**6, schedule="cosine", seed=s["seed"])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        student, _ = trainer.fit(model, loss, sde, mixture, out, "cpu")
        seconds = time.perf_counter() - start
    return student, {"train_steps": s["train_steps"], "teacher_calls": teacher.calls, "train_seconds": seconds}


def summary(runs):
    worst = max(runs, key=lambda r: abs(r["logp_gap_per_dim"]))
    return {"weights_tv": runs[0]["weights_tv"], "logp_gap_per_dim": runs[0]["logp_gap_per_dim"],
            "worst_tv": max(r["weights_tv"] for r in runs), "worst_gap": worst["logp_gap_per_dim"],
            "nfe": runs[0]["nfe"], "seeds": runs,
            "worst_paired_gap": max((r["paired_gap_per_dim"] for r in runs), key=abs)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixtures", nargs="+", default=["2d"], choices=list(MIXTURES))
    p.add_argument("--sdes", nargs="+", default=["vp"], choices=list(SDES))
    p.add_argument("--methods", nargs="+", default=["progressive"], choices=["consistency", "progressive", "reflow"])
    p.add_argument("--steps", nargs="+", type=int, default=[4])
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help="the student's training seed")
    p.add_argument("--train-steps", type=int, default=None,
                   help=f"optimizer steps (default per mixture: {TRAIN_STEPS}; progressive gains about as 1/steps)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=4e-3, help="peak of the cosine schedule (2e-3: 1.2x the gap at 3000)")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--hidden", type=int, default=384,
                   help="the student MLP's width (64 wide leaves the 4-step map's basin edges blurred: gap -0.04)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--grid", default="karras", choices=["karras", "logsnr", "time"],
                   help="the distillation grid and the student's sampler's")
    p.add_argument("--intervals", type=int, default=40, help="consistency: N intervals of the grid")
    p.add_argument("--weighting", default="output", choices=["output", "inverse", "uniform"],
                   help="consistency: the loss weighting ('uniform', the paper's, leaves small sigma untrained: gap -2)")
    p.add_argument("--target-ema", type=float, default=0.95,
                   help="consistency: the target network's decay mu (0: stop-gradient; 0.95 the paper's, 4-8x smaller "
                        "gap than 0)")
    p.add_argument("--substeps", type=int, default=None, help="progressive: teacher steps per student step "
                   "(default 128 / student steps)")
    p.add_argument("--out", default="benchmarks/results/distill")
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: small ops on a shared machine)")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite <out>.md from <out>.json (and benchmarks/results/training_free.json), run nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows, floors = previous.get("rows", []), previous.get("floors", {})
    if args.table_only:
        out.with_suffix(".md").write_text(table(rows, floors, args, previous.get("command")))
        return
    students = {}  # a consistency student is one model for every step count: trained once, sampled at each
    for mix_name in args.mixtures:
        mixture = MIXTURES[mix_name]()
        floors[mix_name] = noise_floor(mixture, args.num, args.seeds[0])
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            oracle, ends = MixtureScore(sde, mixture), {}
            five = summary(evaluate(sde, mixture, oracle, DPMSolver(5, order=3, grid="logsnr"), args.num,
                                    args.seeds, ends))
            for steps in args.steps:
                free = five if steps == 5 else summary(evaluate(sde, mixture, oracle,
                                                                DPMSolver(steps, order=3, grid="logsnr"), args.num,
                                                                args.seeds, ends))
                for method in args.methods:
                    if method == "reflow" and sde_name != "rf":
                        continue
                    key = (mix_name, sde_name, method)
                    if method != "consistency" or key not in students:
                        students[key] = distill_one(sde, mixture, method, steps, settings(args, mix_name, steps))
                    student, cost = students[key]
                    row = summary(evaluate(sde, mixture, student, sampler(method, steps, args.grid), args.num,
                                          args.seeds, ends))
                    row.update(cost, mixture=mix_name, sde=sde_name, method=method, steps=steps,
                               free_tv=free["weights_tv"], free_gap=free["logp_gap_per_dim"],
                               free5_tv=five["weights_tv"], free5_gap=five["logp_gap_per_dim"],
                               settings=settings(args, mix_name, steps))
                    rows = [r for r in rows if (r["mixture"], r["sde"], r["method"], r["steps"])
                            != (mix_name, sde_name, method, steps)] + [row]
                    print(f"{mix_name} {sde_name} {method} {steps}: TV {row['weights_tv']:.4f} gap "
                          f"{row['logp_gap_per_dim']:+.4f} (worst {row['worst_tv']:.4f}, {row['worst_gap']:+.4f}); "
                          f"DPM-Solver++ {free['weights_tv']:.4f} {free['logp_gap_per_dim']:+.4f}; "
                          f"{cost['train_seconds']:.0f} s", flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    command = " ".join(_argv(args))
                    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "floors": floors,
                                                                    "command": command}, indent=1))
                    out.with_suffix(".md").write_text(table(rows, floors, args, command))


def table(rows, floors, args, command):
    lines = [(f"Command: `python -m benchmarks.distill {command}`" if command else
              "Command: `python -m benchmarks.distill` with each row's settings (distill.json)")
             + " (rows of earlier commands kept, each with its settings in distill.json)", "",
             f"Teacher: the exact mixture score (teacher=oracle). {args.num} samples per seed, seeds "
             f"{' '.join(map(str, args.seeds))}; TV and gap for seed 0, 'worst' over the seeds. Machine: "
             f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) on a 2-core machine"
             f"{'; ' + args.note if args.note else ''}; torch {torch.__version__}. Exact samples: "
             + "; ".join(f"{m} TV {f['weights_tv']:.4f}, gap {f['logp_gap_per_dim']:+.4f}" for m, f in floors.items())
             + ". Training-free: DPM-Solver++(3M) on the uniform-λ grid with the oracle at the same NFE, and the best "
             "of every training-free setting, ours and the diffusers peers "
             "([training_free.md](training_free.md), its error max(|gap|/0.01, TV/0.015) over the student's).", "",
             "| mixture | process | method | NFE | TV | gap/dim | worst TV | worst gap | paired gap, worst "
             "| target met (on the paired gap) | DPM-Solver++ TV "
             "| DPM-Solver++ gap | DPM-Solver++ 5 NFE TV, gap | best training-free: gap, TV | its error / student's "
             "| student | student steps | teacher calls | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap_t, tv_t = TARGETS.get(r["steps"], (None, None))
        met = "–" if gap_t is None else ("yes" if abs(r["worst_gap"]) <= gap_t and r["worst_tv"] <= tv_t else "no")
        lines.append(f"| {r['mixture']} | {r['sde']} | {r['method']} | {r['nfe']} | {r['weights_tv']:.4f} | "
                     f"{r['logp_gap_per_dim']:+.4f} | {r['worst_tv']:.4f} | {r['worst_gap']:+.4f} | {_paired(r)} | "
                     f"{met}{_paired_met(r, gap_t, tv_t)} | "
                     f"{r['free_tv']:.4f} | {r['free_gap']:+.4f} | {_five(r)} | {_best_free(r)} | {_student(r)} | "
                     f"{r['train_steps']} | "
                     f"{r['teacher_calls']} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _best_free(r):
    """The best training-free setting at the row's NFE (benchmarks.training_free) and its error over the row's."""
    best = training_free.best(r["mixture"], r["sde"], r["nfe"])
    if best is None:
        return "not measured | –"
    mine = max(error({"logp_gap_per_dim": r["worst_gap"], "weights_tv": r["worst_tv"]}), 1e-9)
    return (f"{best['solver']}: {best['worst_gap']:+.3f}, {best['worst_tv']:.3f} | "
            f"{best['error'] / mine:.0f}")


def _paired(r):
    return f"{r['worst_paired_gap']:+.4f}" if "worst_paired_gap" in r else "–"


def _paired_met(r, gap_t, tv_t):
    if gap_t is None or "worst_paired_gap" not in r:
        return ""
    return " (yes)" if abs(r["worst_paired_gap"]) <= gap_t and r["worst_tv"] <= tv_t else " (no)"


def _five(r):
    return f"{r['free5_tv']:.4f}, {r['free5_gap']:+.4f}" if "free5_tv" in r else "–"


def _student(r):
    s = r.get("settings", {})
    net = f"MLP {s.get('hidden', 64)}x{s.get('depth', 4)}"
    if r["method"] == "consistency":
        return (f"{net}, {s.get('grid', 'karras')}, N={s.get('intervals')}, {s.get('weighting', 'uniform')}, "
                f"target EMA {s.get('target_ema', 0)}")
    return f"{net}, {s.get('grid', 'karras')}, {s.get('substeps')} sub" if r["method"] == "progressive" else net


def _argv(args):
    parts = []
    for key in ("mixtures", "sdes", "methods", "steps", "seeds"):
        parts.append(f"--{key} {' '.join(map(str, getattr(args, key)))}")
    for key in ("num", "train_steps", "lr", "ema", "hidden", "depth", "grid", "intervals", "substeps", "weighting",
                "target_ema"):
        if getattr(args, key) is not None:
            parts.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    return parts


if __name__ == "__main__":
    main()
