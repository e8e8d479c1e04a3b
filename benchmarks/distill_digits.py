"""Few-step students of the digits U-Net: rounds of progressive distillation from a trained teacher run.

    python run.py experiment=digits hydra.run.dir=runs/digits          # the teacher, once (~6 min on 2 cores)
    python -m benchmarks.distill_digits --teacher runs/digits --steps 4 2 1

Round k trains a student of N_k steps (``--steps``, each half the one before, or the first any count) on the one
before it: the first on the teacher run, ``--substeps`` of its DDIM steps per student step; each later round on
the previous round's student, 2 of its steps per student step, starting from its weights (distill.init=auto).
Each round is ``run.py experiment=distill teacher=PREVIOUS data=digits model=unet`` with the teacher's own network,
a run directory of its own under ``--runs``. Each student's samples (``--num``, at its own step count) are judged
by the digits classifier (class_score, class_recognised) beside the teacher's at its own sampler
(DPM-Solver++(3M), 20 steps), and timed. Writes <out>.md and <out>.json.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from scoresde.cli.main import run

KEYS = ("class_score", "class_recognised", "nfe_sample", "train_seconds", "train_steps")


def network_of(teacher):
    """The overrides that give a student the teacher run's own network (model=unet and its model.net options)."""
    from scoresde.pipeline import load

    net = load(Path(teacher) / "checkpoint.pt").config["model"]["net"]
    options = [f"model.net.{k}={json.dumps(v).replace(' ', '')}" for k, v in net.items() if not k.startswith("_")]
    return ["model=unet", *options]


def sample_teacher(teacher, out, num, threads):
    metrics = run([f"ckpt={Path(teacher) / 'checkpoint.pt'}", "train.steps=0", f"sample.num={num}",
                   "eval=[quality,classifier]", "progress=false", f"threads={threads}"], out)
    return {k: metrics.get(k) for k in KEYS}


def distill_round(teacher, steps, substeps, out, args):
    argv = ["experiment=distill", f"teacher={teacher}", "data=digits", *network_of(teacher), "distill.method=progressive",
            f"distill.steps={steps}", f"distill.substeps={substeps}", f"distill.init={args.init}",
            f"train.steps={args.train_steps}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
            "train.warmup=100", f"train.ema_decay={args.ema}", "train.ckpt_every=500", f"sample.num={args.num}",
            "eval=[quality,classifier]", "progress=false", f"threads={args.threads}"]
    start = time.perf_counter()
    metrics = run(argv, out)
    row = {k: metrics.get(k) for k in KEYS}
    row.update(steps=steps, substeps=substeps, seconds=time.perf_counter() - start, run=str(out))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a run directory of experiment=digits")
    p.add_argument("--steps", nargs="+", type=int, default=[4, 2, 1])
    p.add_argument("--substeps", type=int, default=8, help="teacher DDIM steps per student step in the first round")
    p.add_argument("--init", default="auto", choices=["auto", "teacher", "none"],
                   help="the first round's student start (later rounds: auto, a copy of the previous student)")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/distill_digits")
    p.add_argument("--note", default="")
    p.add_argument("--out", default="benchmarks/results/distill_digits")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    teacher_row = sample_teacher(args.teacher, runs / "teacher", args.num, args.threads)
    rows, teacher, init = [], args.teacher, args.init
    for k, steps in enumerate(args.steps):
        substeps = args.substeps if k == 0 else args.steps[k - 1] // steps
        if k and args.steps[k - 1] != steps * substeps:
            raise SystemExit(f"--steps: {steps} cannot come from {args.steps[k - 1]} by halving")
        row = distill_round(teacher, steps, substeps, runs / f"student{steps}", args)
        rows.append(row)
        print(f"{steps} steps: class score {row['class_score']:.3f}, recognised {row['class_recognised']:.3f} "
              f"(teacher {teacher_row['class_score']:.3f}, {teacher_row['class_recognised']:.3f}); "
              f"{row['seconds']:.0f} s", flush=True)
        teacher, args.init = runs / f"student{steps}", "auto"
    args.init = init
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"teacher": teacher_row, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(table(teacher_row, rows, args))


def table(teacher, rows, args):
    lines = [f"Command: `python -m benchmarks.distill_digits --teacher {args.teacher} --steps "
             f"{' '.join(map(str, args.steps))} --substeps {args.substeps} --init {args.init} --train-steps "
             f"{args.train_steps} --batch {args.batch} --lr {args.lr} --ema {args.ema} --num {args.num}`", "",
             f"Teacher: the experiment=digits U-Net, sampled by its own DPM-Solver++(3M) at 20 steps. {args.num} "
             f"samples each, judged by the digits classifier. Machine: {platform.machine()}, {args.threads} torch "
             f"thread(s){'; ' + args.note if args.note else ''}; torch {torch.__version__}.", "",
             "| sampler | NFE | class score | recognised | score / teacher's | training steps | seconds |",
             "|---|---|---|---|---|---|---|",
             f"| teacher, DPM-Solver++(3M) | {teacher['nfe_sample']:g} | {teacher['class_score']:.3f} | "
             f"{teacher['class_recognised']:.3f} | 1 | – | – |"]
    for r in rows:
        lines.append(f"| progressive student ({r['substeps']} teacher steps per step) | {r['nfe_sample']:g} | "
                     f"{r['class_score']:.3f} | {r['class_recognised']:.3f} | "
                     f"{r['class_score'] / teacher['class_score']:.3f} | {r['train_steps']} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
