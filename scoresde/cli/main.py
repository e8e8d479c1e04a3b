"""The run: ``python run.py`` and the ``score-sde`` command. ``main()`` checks the command line and hands it to
Hydra; ``job(cfg, out, overrides)`` does the run in its steps: build every part (each option checked before
training), train or load, the task, the evaluations, the report."""
import contextlib
import faulthandler
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sde.errors import ConfigError, ConfigWarning
from scoresde.paths import config_dir
from scoresde.pipeline import Clock, Pipeline, resolve_device
from scoresde.seeds import Seeds
from scoresde.tasks import Context, Sampling, TrainingPictures
from scoresde.training import distributed
from scoresde.training.checkpoint import write_output
from scoresde.training.names import all_named
from scoresde.training.trainer import load_for_sampling
from solvers.grids import ModelLevels

from .args import help_text
from .build import build, named_by_source, takes
from .checkpoint import CHECKPOINT_GROUPS, SAMPLING_GROUPS, check_steps, checkpoint_meta, held_by
from .checks import check_data_fits, check_solver_fits, fit_model_to_data, warn_about_scale
from .distill import init_student, load_teacher, loss_node, prepare as prepare_distillation
from .errors import one_line_errors, show_warnings_in_one_line
from .launch import as_torchrun
from .legacy import translate
from .rundir import claimed
from .sweep import NOTES, SUMMARY, cached_training, keep_for_sweep
from .threads import AutoThreads, choose_threads
from .values import check_command_line


def to_plain(node):
    """An OmegaConf list as a Python list; anything else as it is."""
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def evaluation_names(conf=None):
    """The evaluations conf/eval/ offers."""
    return sorted(p.stem for p in (Path(conf or config_dir()) / "eval").glob("*.yaml"))


@dataclass
class Run:
    """The parts of a run, built and checked: what ``job`` trains, samples and evaluates."""

    cfg: Any
    sde: Any
    data: Any
    model: Any
    task: Any
    evaluations: List[Any]
    trainer: Any
    context: Context
    meta: Optional[dict]
    metrics: dict
    loss: Any = None


def build_evaluations(cfg, keyed=False):
    """One object per evaluation listed under eval (a node with a _target_; ``false`` leaves one out); with
    ``keyed``, (config key, node, object) for each."""
    if "likelihood" in cfg:
        raise ConfigError(f"likelihood: {cfg.likelihood} in a config file is not read: list the evaluation instead "
                          "(defaults: - override /eval: [quality, mixture, classifier, ode]), or give "
                          "likelihood=true on the command line", "likelihood")
    evaluations, names = [], evaluation_names()
    for name, node in cfg.eval.items():
        if node is True and name in names:
            raise ConfigError(f"eval.{name}=true does not add an evaluation: use +eval={name}", f"eval.{name}")
        if OmegaConf.is_dict(node) and "_target_" in node:
            evaluations.append((f"eval.{name}", node, build(f"eval.{name}", node)))
    return evaluations if keyed else [evaluation for *_, evaluation in evaluations]


def build_run(cfg, out, overrides):
    """Every part of the run built from ``cfg`` and checked against the others, before any training: the
    config fitted to ckpt= (or the model to the data), threads, device, the global seed, the process, data,
    model, solver, task and evaluations (each set up against the data and the model)."""
    main_process = distributed.is_main_process()
    if not main_process:
        cfg.progress = False
    meta = checkpoint_meta(cfg, overrides)
    with held_by(meta):
        return build_parts(cfg, out, overrides, meta, main_process)


def model_grid(node, model):
    """{"grid": the model's own levels} for solver.grid=model (solvers.grids.ModelLevels from a pretrained discrete
    model's grid_options), else nothing."""
    if node.get("grid") != "model":
        return {}
    options = getattr(model, "grid_options", None)
    if options is None:
        raise ConfigError(f"solver.grid=model needs a pretrained discrete model (model=diffusers); "
                          f"{type(model).__name__} has no training timesteps", "solver.grid")
    return {"grid": ModelLevels(**options())}


def build_parts(cfg, out, overrides, meta, main_process):
    """build_run's parts, from the config fitted to ``meta`` (None without ckpt=)."""
    choose_threads(cfg.threads)
    device = distributed.process_device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    seeds = Seeds(cfg.seed)
    distills = prepare_distillation(cfg, overrides)
    sde = build("sde", cfg.sde)
    data = build("data", cfg.data)
    if meta:
        check_data_fits(meta, data)
    else:
        fit_model_to_data(cfg, data, overrides)
    loss = None
    if distills:
        teacher = load_teacher(cfg, sde, data, device)
        loss = build("distill", loss_node(cfg.distill), **teacher)
    model = build("model", cfg.model, sde=sde, data=data).to(device)
    if distills and init_student(model, teacher["teacher"], cfg.distill.get("init", "auto")) and main_process:
        print(f"student  a copy of the teacher {cfg.teacher}", flush=True)
    s = cfg.sample
    sampling = Sampling(num=s.num, classes=to_plain(s.classes), batch=s.batch, plot=s.plot, max_range=s.max_range,
                        guidance=cfg.guidance.scale)
    sampling.check(model)
    solver = build("solver", cfg.solver, **model_grid(cfg.solver, model))
    check_solver_fits(cfg, overrides, sde, solver)
    context = Context(out, seeds, device, solver, sampling, progress=cfg.progress, main=main_process)
    task = build("task", cfg.task, **({"mask": build("mask", cfg.mask)} if takes("task", cfg.task, "mask") else {}))
    task.setup(data, model, context)
    metrics = {"sde": repr(sde), "solver": repr(solver), "data": repr(data), "device": str(device)}
    if distributed.world_size() > 1:
        metrics["processes"] = distributed.world_size()
    size = sum(p.numel() for p in model.parameters())
    if main_process:
        print(f"run {out}\n  data     {data!r}\n  model    {type(model).__name__}"
              f"{f' ({size:,} parameters)' if size else ''}\n  process  {sde!r}\n  solver   {solver!r}\n"
              f"  device   {device} ({torch.get_num_threads()} threads)", flush=True)
    warn_about_scale(data, sde, seeds.generator("scale_check"))
    evaluations = []
    for key, node, evaluation in build_evaluations(cfg, keyed=True):
        with named_by_source(key, node):
            evaluation.setup(data, model, context)
        evaluations.append(evaluation)
    trainer = build("train", cfg.train)
    if meta and trainer.steps:
        check_steps(meta, trainer.steps)
    return Run(cfg, sde, data, model, task, evaluations, trainer, context, meta, metrics, loss)


def train_or_load(run):
    """The trained model (its EMA weights), and the metrics of its training: trained here (train.steps > 0),
    taken from the sweep's cache, or loaded from ckpt=; a model without trainable parameters (the oracle, a
    pretrained network) is used as it is."""
    cfg, model, context, metrics = run.cfg, run.model, run.context, {}
    if not any(p.requires_grad for p in model.parameters()):
        if getattr(model, "source", None):
            metrics["weights"] = dict(model.source)
        return model, metrics
    cached = cached_training(cfg)
    if cached is not None and cached.exists():
        metrics.update(train_steps=load_for_sampling(model, cached), trained_in=str(cached.parent))
        if context.main:
            print(f"trained model of this sweep reused: {cached}", flush=True)
    elif run.trainer.steps > 0:
        loss = run.loss if run.loss is not None else build("loss", cfg.loss)
        spec = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in CHECKPOINT_GROUPS + SAMPLING_GROUPS}
        if run.loss is not None:
            spec["distill"] = {"method": cfg.distill.method, "steps": cfg.distill.steps}
        if not all_named(spec["solver"]):
            del spec["solver"]  # a user's own solver: a run from the checkpoint names its solver itself
        spec["data_spec"] = run.data.spec()
        spec["task"] = cfg.task.get("_target_")  # the task the solver and sample settings served
        callbacks = [TrainingPictures(run.trainer.sample_every, run.sde, run.data, context)]
        callbacks += [e.callback(run.sde, run.data, context) for e in run.evaluations if hasattr(e, "callback")]
        if cfg.threads == "auto" and not distributed.launched():
            callbacks.append(AutoThreads())
        with Clock(context.device) as clock:
            model, step = run.trainer.fit(model, loss, run.sde, run.data, context.out, context.device, cfg.ckpt,
                                          meta=spec, callbacks=[c for c in callbacks if c is not None])
        metrics.update(train_steps=step, train_seconds=clock.seconds)
        if cached is not None and context.main:
            keep_for_sweep(context.out / "checkpoint.pt", cached)
    elif cfg.ckpt:
        metrics["train_steps"] = load_for_sampling(model, cfg.ckpt)
    else:
        raise ConfigError("train.steps=0 needs ckpt=PATH: an untrained network has nothing to sample")
    return model, metrics


def write_report(metrics, out):
    """metrics.json in the run directory, and the summary's metrics printed one a line (with NOTES' word on
    units)."""
    text = (json.dumps(metrics, indent=2) + "\n").encode()
    write_output(out / "metrics.json", lambda fh: fh.write(text))
    for key in SUMMARY:
        if key in metrics:
            print(f"{key:>20s}  {metrics[key]:<12.6g}  {NOTES.get(key, '')}".rstrip())
    print(f"{'outputs':>20s}  {out}")


def job(cfg, out, overrides=()):
    """Everything a run does, in order, with the run directory ``out`` and the command line's ``overrides``
    (which groups it chose and which keys it set, for ckpt= and the model's fit to the data); returns the
    metrics. Under torchrun every process runs it (training and evaluation are collective) and only the main
    one prints and writes."""
    out = Path(out)
    run = build_run(cfg, out, list(overrides))
    model, trained = train_or_load(run)
    model.eval()
    metrics, context = {**run.metrics, **trained}, run.context
    context.train_step = metrics.get("train_steps")
    context.generator = context.seeds.generator("solver", context.device)
    pipe = Pipeline(run.sde, model, run.data, context.device)
    metrics.update(run.task(pipe, context))
    for evaluation in run.evaluations:
        metrics.update(evaluation(pipe, context))
    if context.main:
        write_report(metrics, out)
    return metrics


def compose(overrides=()):
    """The config ``python run.py OVERRIDES`` runs with (old spellings translated, without the notice), and
    the overrides in today's spelling, for ``job(cfg, out, overrides)``."""
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = translate(list(overrides), evaluation_names(), notice=False)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=overrides), overrides


def run(overrides, out):
    """``python run.py OVERRIDES`` in this process, into the directory ``out`` (made if missing, as Hydra makes a
    run directory); returns the metrics."""
    cfg, overrides = compose(overrides)
    if not Path(out).exists():
        Path(out).mkdir(parents=True)
    return job(cfg, out, overrides)


def quiet_other_ranks(argv):
    """Under torchrun, the command line of a process other than rank 0: Hydra writes nothing for it (no .hydra
    folder, no log, the working directory as its run directory; main takes rank 0's), its warnings are left to
    rank 0. A sweep (-m) is refused: start one torchrun per run."""
    if not distributed.launched():
        return argv
    if multirun(argv):
        raise ConfigError("sweeps (-m) do not run under torchrun: start one torchrun per run")
    if os.environ["RANK"] == "0":
        return argv
    warnings.filterwarnings("ignore", category=ConfigWarning)
    return argv + ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                   "hydra.run.dir=."]


def hydra_job(cfg):
    """What Hydra calls with the composed config: the process group under torchrun (or of the tasks SLURM or
    submitit started: launch.as_torchrun), the run lock, the job."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    as_torchrun()
    with one_line_errors():
        if distributed.launched():
            distributed.init_from_env(resolve_device(cfg.device).type)
            out = distributed.broadcast_object(out)
    try:
        with one_line_errors(), claimed(out, cfg.ckpt) if distributed.is_main_process() else contextlib.nullcontext():
            job(cfg, out, hydra_cfg.overrides.task)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    with one_line_errors():
        distributed.shutdown()


def main(argv=None):
    """The command line ``argv`` (default sys.argv[1:]): --help, old spellings translated, group choices and
    keys checked (each refused in one line), then the run under Hydra, whose callback rundir.ClaimRunDir claims
    the run directory before Hydra writes its .hydra/ there."""
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.path.append(os.getcwd())
    report_fatal_signals()
    show_warnings_in_one_line()
    conf = config_dir()
    if {"--help", "-h"} & set(argv):
        print(help_text(conf))
        sys.exit(0)
    with one_line_errors():
        argv = translate(argv, evaluation_names(conf))
        argv = check_command_line(argv, conf)
        as_torchrun()
        argv = quiet_other_ranks(argv)
    sys.argv = sys.argv[:1] + argv
    hydra.main(config_path=str(conf), config_name="config", version_base="1.3")(hydra_job)()


def report_fatal_signals():
    """A fatal signal (SIGBUS from a memory-mapped file truncated under the run, SIGSEGV) prints the Python stack it
    struck in (faulthandler) before the process dies: Python cannot recover from such a signal, but the stack
    names the read that caused it."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # stderr without a file descriptor
        pass


def multirun(argv):
    """Whether the command line is a sweep (-m): its runs go into directories of their own under hydra.sweep.dir."""
    return bool({"-m", "--multirun"} & set(argv)) or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)
