"""Compose the config, build the parts, train if asked, sample, evaluate, write the outputs into the Hydra
run directory.

    python run.py                                   # train an MLP on a 2-D toy set, sample with PC
    python run.py sde=vp solver=pc
    python run.py model=oracle data=gmm solver=ode likelihood=true
    python run.py sde._target_=my_module.MySDE
    torchrun --nproc_per_node=4 run.py ...          # DistributedDataParallel over 4 GPUs (train.batch_size global)
"""
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from scoresde.evaluation import (FID, classifier_report, inpainting_report, mixture_report, plot_inpainting, plot_samples,
                        sample_quality)
from scoresde.evaluation.classify import applies as classifier_applies
from models.guidance import GuidedScore, class_labels
from scoresde.data import GaussianMixture
from scoresde import Pipeline
from scoresde.pipeline import Clock, resolve_device
from scoresde.cli import (build, check_data_fits, check_group_choices, check_override_keys, check_sample_range,
                          cached_training, choose_threads, fit_model_to_data, help_text, keep_for_sweep,
                          one_line_errors, reconcile, run_lock, show_warnings_in_one_line, warn_about_scale)
from solvers.fitting import fallback, save_grid
from solvers.inpaint import Inpainter
from solvers.observe import Observation, gray_chroma
from sde.errors import ConfigError, ConfigWarning, check_int, check_number, config_scope, invalid
from scoresde.training import distributed
from scoresde.training.checkpoint import read_checkpoint
from scoresde.training.trainer import load_for_sampling

CONF = Path(__file__).resolve().parent / "conf"
TASKS = ("sample", "inpaint", "colorize")
SUMMARY = ("train_steps", "train_seconds", "nfe_sample", "sample_seconds", "swd", "swd_floor", "weights_tv",
           "logp_gap_per_dim", "class_score", "class_score_real", "class_recognised", "class_recognised_real",
           "class_recognised_noise", "classifier_accuracy",
           "nll", "exact_nll", "bpd", "nfe_likelihood", "likelihood_seconds", "elbo", "elbo_bpd", "elbo_stderr", "fid",
           "kid", "kid_std", "fid_num", "fid_seconds")
LIKELIHOODS = {False: None, True: "ode", "ode": "ode", "elbo": "elbo"}


def to_plain(node):
    """An OmegaConf list as a Python list; anything else as it is."""
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def checkpoint_meta(cfg):
    """What ckpt= says about its model (sde, model and data configs, data shape), with the config fitted to it."""
    if not cfg.ckpt:
        return None
    state = read_checkpoint(cfg.ckpt)
    meta = dict(state.get("meta") or {}, path=state["path"])
    reconcile(cfg, meta, HydraConfig.get().overrides.task, override=cfg.ckpt_override)
    return meta


def sample_and_report(cfg, pipe, solver, classify, out, metrics, gen):
    """task=sample: draw sample.num samples (for sample.classes, with guidance), score them, save and plot them."""
    sde, data = pipe.sde, pipe.data
    with config_scope("sample"):
        x, stats = pipe.sample(cfg.sample.num, solver, batch=cfg.sample.batch, generator=gen, info=True,
                               progress=cfg.progress, classes=to_plain(cfg.sample.classes),
                               guidance=cfg.guidance.scale)
    if not distributed.is_main_process():
        return
    labels = stats["labels"]
    metrics.update(nfe_sample=stats["nfe"], sample_seconds=stats["seconds"])
    if labels is not None:
        metrics.update(guidance_scale=cfg.guidance.scale, nfe_counts="network passes per sample" + (
            "; under guidance each pass holds the batch twice (conditional and null labels)"
            if cfg.guidance.scale else ""))
    if "grid_fit" in stats:
        metrics["grid_fit"] = save_grid(out / "grid.json", stats["grid_fit"])
    metrics.update(sample_quality(x, data, torch.Generator().manual_seed(cfg.seed + 5), labels=labels))
    if isinstance(data, GaussianMixture):
        metrics.update(mixture_report(data, x, labels))
    if classify:
        metrics.update(classifier_report(x, data, torch.Generator().manual_seed(cfg.seed + 6), labels))
    np.savez(out / "samples.npz", x=x.cpu().numpy(), **({} if labels is None else {"y": labels.numpy()}))
    if cfg.sample.max_range:
        check_sample_range(x, data, torch.Generator().manual_seed(cfg.seed + 4), cfg.sample.max_range)
    if cfg.sample.plot:
        reference = data.sample(min(len(x), 5000), torch.Generator().manual_seed(cfg.seed + 2)).numpy()
        plot_samples(x.cpu().numpy(), out / "samples.png", reference, title=f"{sde!r}\n{solver!r}",
                     value_range=data.value_range, labels=None if labels is None else labels.numpy())


def observation_setup(cfg, data):
    """The mask of what is known (True) and the channel transform for task=inpaint (the mask group) or
    task=colorize (the gray level of the orthogonal gray–chroma view)."""
    if cfg.task == "colorize":
        if len(data.shape) != 3 or data.shape[0] < 2:
            raise ConfigError(f"task=colorize needs colour images; {data!r} has shape {data.shape}")
        mask = torch.zeros(data.shape, dtype=torch.bool)
        mask[0] = True
        return mask, gray_chroma(data.shape[0])
    make = build("mask", cfg.mask)
    with config_scope("mask"):
        return make(tuple(data.shape)), None


def inpaint_and_report(cfg, pipe, inpainter, x_known, observed, out, metrics, gen):
    """task=inpaint or colorize: inpaint.completions completions of each of inpaint.num held-out points; against the
    exact conditional for mixture data; saved and pictured (original | observed | completions)."""
    mask, transform = observed
    with config_scope("inpaint"):
        x, stats = pipe.inpaint(x_known, mask, inpainter, cfg.inpaint.completions, transform=transform,
                                batch=cfg.sample.batch, generator=gen, info=True, progress=cfg.progress)
    if not distributed.is_main_process():
        return
    metrics.update(nfe_inpaint=stats["nfe"], inpaint_seconds=stats["seconds"], inpainter=repr(inpainter))
    if isinstance(pipe.data, GaussianMixture) and transform is None:
        metrics.update(inpainting_report(pipe.data, x_known, mask, x, torch.Generator().manual_seed(cfg.seed + 8)))
    unknown = ~Observation(x_known, mask, transform).mask.repeat_interleave(cfg.inpaint.completions, 0)
    rep = x_known.to(x).repeat_interleave(cfg.inpaint.completions, 0)
    metrics["inpaint_rmse"] = ((x - rep).pow(2)[unknown.to(x.device)].mean().sqrt().item() if transform is None else
                               (x - rep).pow(2).mean().sqrt().item())
    np.savez(out / "inpaint.npz", x=x_known.cpu().numpy(), observed=stats["observed"].cpu().numpy(),
             completions=x.cpu().numpy(), mask=mask.cpu().numpy())
    if cfg.sample.plot:
        plot_inpainting(x_known.cpu().numpy(), stats["observed"].cpu().numpy(), x.cpu().numpy(), out / "inpaint.png",
                        pipe.data.value_range, title=repr(inpainter))


def sample_grid(cfg, sde, data, solver, out, device):
    """train.sample_every: what the trainer calls at those steps, on_sample(step, ema_model), drawing the same
    prior points each time with the run's solver (64 for images, else up to 1000) into samples_step{N}.png; every
    process samples its share, the main process draws the picture."""
    num = 64 if len(data.shape) == 3 else min(cfg.sample.num, 1000)
    solver = fallback(solver)

    def on_sample(step, ema_model):
        x = Pipeline(sde, ema_model, data, device).sample(num, solver, batch=cfg.sample.batch,
                                                          generator=torch.Generator(device).manual_seed(cfg.seed))
        if distributed.is_main_process():
            plot_samples(x.cpu().numpy(), out / f"samples_step{step}.png", title=f"step {step}\n{solver!r}",
                         value_range=data.value_range)
    return on_sample


def fid_setup(cfg, data, device):
    """eval.fid: the FID/KID evaluator (None when off), its feature network built and the reference statistics of
    the training images read from eval.fid_cache or computed there, before training."""
    if cfg.eval.fid is False:
        return None
    if cfg.eval.fid is not True:
        raise invalid("fid", cfg.eval.fid, "true or false").under("eval")
    if data.levels is None or len(data.shape) != 3:
        raise ConfigError(f"eval.fid=true needs 8-bit images (FID compares them through an image network); {data!r} "
                          f"holds {'continuous ' if data.levels is None else ''}points of shape {tuple(data.shape)}")
    with config_scope("eval"):
        check_int("fid_num", cfg.eval.fid_num, 2), check_int("fid_every", cfg.eval.fid_every, 0)
    fid = FID(data, build("eval.fid_features", cfg.eval.fid_features, device=device), cache=cfg.eval.fid_cache,
              seed=cfg.seed, progress=cfg.progress is True)
    with distributed.main_first():
        fid.reference()
    fid.features = distributed.split_rows(fid.features)
    return fid


def fid_score(cfg, fid, sde, model, data, solver, device, progress=False):
    """FID, KID (and its spread over subsets) of eval.fid_num samples of ``model``, drawn as task=sample draws them
    (sample.classes, guidance.scale) sample.batch at a time, and the seconds it took."""
    pipe, gen = Pipeline(sde, model, data, device), torch.Generator(device).manual_seed(cfg.seed + 9)
    num, batch = cfg.eval.fid_num, cfg.sample.batch

    def batches():
        for start in range(0, num, batch):
            yield pipe.sample(min(batch, num - start), solver, batch=batch, generator=gen, progress=progress,
                              classes=to_plain(cfg.sample.classes), guidance=cfg.guidance.scale)
    with Clock(device) as clock, config_scope("sample"):
        scores = fid(batches())
    return dict(scores, fid_seconds=clock.seconds)


def log_fid(out, step, scores):
    """A row (step, fid, kid) of fid_log.csv, replacing rows of this step or later (a resumed run's)."""
    path = out / "fid_log.csv"
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    rows = [r for r in rows if int(r.split(",")[0]) < step] + [f"{step},{scores['fid']:.6g},{scores['kid']:.6g}"]
    path.write_text("\n".join(["step,fid,kid", *rows]) + "\n")


def fid_during_training(cfg, fid, sde, data, solver, out, device, scored):
    """eval.fid_every: what the trainer calls at those steps, on_eval(step, ema_model): FID and KID into
    fid_log.csv, kept in ``scored`` by step."""
    def on_eval(step, ema_model):
        scored[step] = fid_score(cfg, fid, sde, ema_model, data, solver, device)
        if distributed.is_main_process():
            log_fid(out, step, scored[step])
            print(f"step {step}: fid {scored[step]['fid']:.4g}, kid {scored[step]['kid']:.4g}", flush=True)
    return on_eval


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    with one_line_errors():
        if distributed.launched():
            distributed.init_from_env(resolve_device(cfg.device).type)
            out = distributed.broadcast_object(out)
    main_process = distributed.is_main_process()
    try:
        with one_line_errors(), run_lock(out) if main_process else contextlib.nullcontext():
            run(cfg, out)
    except BaseException:
        distributed.shutdown(wait=False)
        raise
    distributed.shutdown()


def quiet_other_ranks(argv):
    """Under torchrun, the command line of a process other than rank 0: Hydra writes nothing for it (no .hydra
    folder, no log, the working directory as its run directory; main takes rank 0's), its warnings are left to
    rank 0. A sweep (-m) is refused: start one torchrun per run."""
    if not distributed.launched():
        return argv
    if {"-m", "--multirun"} & set(argv) or any(a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv):
        raise ConfigError("sweeps (-m) do not run under torchrun: start one torchrun per run")
    if os.environ["RANK"] == "0":
        return argv
    warnings.filterwarnings("ignore", category=ConfigWarning)
    return argv + ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                   "hydra.run.dir=."]


def run(cfg, out):
    """Everything a run does, in order; every option is checked before training starts. Under torchrun every
    process runs it (training and evaluation are collective) and only the main one prints and writes."""
    main_process = distributed.is_main_process()
    if not main_process:
        cfg.progress = False
    meta = checkpoint_meta(cfg)
    choose_threads(cfg.threads)
    device = distributed.process_device(resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    sde = build("sde", cfg.sde)
    data = build("data", cfg.data)
    if meta:
        check_data_fits(meta, data)
    else:
        fit_model_to_data(cfg, data, HydraConfig.get().overrides.task, CONF)
    model = build("model", cfg.model, sde=sde, data=data).to(device)
    with config_scope("sample"):
        labels = class_labels(to_plain(cfg.sample.classes), 1, getattr(model, "num_classes", None))
    with config_scope("guidance"):
        GuidedScore(model, labels, cfg.guidance.scale)
    solver = build("solver", cfg.solver)
    task = cfg.task
    if task not in TASKS:
        raise invalid("task", task, ", ".join(TASKS))
    if task != "sample":
        with config_scope("inpaint"):
            inpainter = Inpainter(solver, cfg.inpaint.method, cfg.inpaint.jumps)
            check_int("completions", cfg.inpaint.completions)
            x_known = data.test(cfg.inpaint.num, torch.Generator().manual_seed(cfg.seed + 7)).to(device)
        observed = observation_setup(cfg, data)
    metrics = {"sde": repr(sde), "solver": repr(solver), "data": repr(data), "device": str(device)}
    size = sum(p.numel() for p in model.parameters())
    if distributed.world_size() > 1:
        metrics["processes"] = distributed.world_size()
    print_main = print if main_process else (lambda *args, **kwargs: None)
    print_main(f"run {out}\n  data     {data!r}\n  model    {type(model).__name__}"
               f"{f' ({size:,} parameters)' if size else ''}\n  process  {sde!r}\n  solver   {solver!r}\n"
               f"  device   {device} ({torch.get_num_threads()} threads)", flush=True)
    with config_scope("sample"):
        check_int("num", cfg.sample.num), check_int("batch", cfg.sample.batch)
        check_number("max_range", cfg.sample.max_range, strict=False)
    warn_about_scale(data, sde, torch.Generator().manual_seed(cfg.seed + 3))
    classify = cfg.eval.classifier
    if classify not in ("auto", True, False):
        raise invalid("classifier", classify, "auto, true or false").under("eval")
    classify = classifier_applies(data) if classify == "auto" else classify
    if classify and data.num_classes is None:
        raise ConfigError(f"eval.classifier=true needs labelled data; {data!r} has no labels")
    mode = likelihood_mode(cfg.likelihood)
    if mode:
        likelihood = build(f"eval.{mode}", cfg.eval[mode])
        with config_scope("eval"):
            check_int("batch", cfg.eval.batch), check_int("dequant_draws", cfg.eval.dequant_draws)
            x_test = data.test(cfg.eval.num, torch.Generator().manual_seed(cfg.seed + 1))
            y_test = None
            if cfg.eval.conditional:
                if getattr(model, "num_classes", None) is None:
                    raise ConfigError("eval.conditional=true needs a conditional model (trained with train.cond_drop "
                                      "> 0, or model=oracle)")
                y_test = data.test(cfg.eval.num, torch.Generator().manual_seed(cfg.seed + 1), labels=True)[1]

    fid, scored = fid_setup(cfg, data, device), {}
    trainer = build("train", cfg.train)
    cached = cached_training(cfg)
    if next(model.parameters(), None) is not None:
        if cached is not None and cached.exists():
            metrics.update(train_steps=load_for_sampling(model, cached), trained_in=str(cached.parent))
            print_main(f"trained model of this sweep reused: {cached}", flush=True)
        elif trainer.steps > 0:
            loss = build("loss", cfg.loss)
            spec = {"sde": OmegaConf.to_container(cfg.sde, resolve=True),
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "data": OmegaConf.to_container(cfg.data, resolve=True), "data_spec": data.spec()}
            with Clock(device) as clock:
                model, step = trainer.fit(model, loss, sde, data, out, device, cfg.ckpt, meta=spec,
                                          on_sample=sample_grid(cfg, sde, data, solver, out, device),
                                          on_eval=fid_during_training(cfg, fid, sde, data, solver, out, device,
                                                                      scored) if fid else None,
                                          eval_every=cfg.eval.fid_every if fid else 0)
            metrics.update(train_steps=step, train_seconds=clock.seconds)
            if cached is not None:
                keep_for_sweep(out / "checkpoint.pt", cached)
        elif cfg.ckpt:
            metrics["train_steps"] = load_for_sampling(model, cfg.ckpt)
        else:
            raise ConfigError("train.steps=0 needs ckpt=PATH: an untrained network has nothing to sample")
    model.eval()

    pipe = Pipeline(sde, model, data, device)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    if task == "sample":
        sample_and_report(cfg, pipe, solver, classify, out, metrics, gen)
    else:
        inpaint_and_report(cfg, pipe, inpainter, x_known, observed, out, metrics, gen)
    if fid:
        step = metrics.get("train_steps")
        metrics.update(scored.get(step) or fid_score(cfg, fid, sde, model, data, solver, device, cfg.progress))
        if step is not None and main_process:
            log_fid(out, step, metrics)

    if mode == "elbo":
        with config_scope("eval.elbo"):
            bound, stderr, stats = pipe.elbo(x_test, batch=cfg.eval.batch, elbo=likelihood, generator=gen, info=True,
                                             progress=cfg.progress, dequant_draws=cfg.eval.dequant_draws)
        metrics.update(elbo=bound.mean().item(), elbo_bpd=pipe.bits_per_dim(bound),
                       elbo_stderr=stderr.norm().item() / len(stderr), nfe_elbo=stats["nfe"],
                       elbo_seconds=stats["seconds"])
        columns = {"elbo": bound.numpy(), "elbo_stderr": stderr.numpy()}
        if data.has_log_prob:
            exact = -data.log_prob(stats["x"].double().cpu())
            metrics["exact_nll"] = exact.mean().item()
            columns["exact_nll"] = exact.numpy()
        if main_process:
            np.savez(out / "likelihood.npz", x=stats["x"].cpu().numpy(), **columns)
    if mode == "ode":
        with config_scope("eval.ode"):
            nll, stats = pipe.nll(x_test, batch=cfg.eval.batch, likelihood=likelihood, generator=gen, info=True,
                                  progress=cfg.progress, dequant_draws=cfg.eval.dequant_draws, labels=y_test)
        metrics.update(nll=nll.mean().item(), bpd=pipe.bits_per_dim(nll), nfe_likelihood=stats["nfe"],
                       likelihood_seconds=stats["seconds"])
        if data.levels is not None and metrics["bpd"] < 0:
            raise ConfigError(f"eval.ode: bits/dim came out {metrics['bpd']:.3g} < 0, impossible for {data.levels}-level "
                              f"data: the likelihood solve (method={cfg.eval.ode.method}) is inaccurate for this model; "
                              "use eval.ode.method=dopri5 or more eval.ode.steps")
        columns = {"nll": nll.numpy()}
        if data.has_log_prob:
            given = {} if y_test is None else {"labels": y_test}
            exact = -data.log_prob(stats["x"].double().cpu(), **given)
            metrics["exact_nll"] = exact.mean().item()
            columns["exact_nll"] = exact.numpy()
        if main_process:
            np.savez(out / "likelihood.npz", x=stats["x"].cpu().numpy(), **columns)

    if not main_process:
        return
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for key in SUMMARY:
        if key in metrics:
            print(f"{key:>20s}  {metrics[key]:.6g}")
    print(f"{'outputs':>20s}  {out}")


def likelihood_mode(value):
    """likelihood=false | true (the probability-flow ODE, also 'ode') | elbo: None, 'ode' or 'elbo'."""
    if isinstance(value, (bool, str)) and value in LIKELIHOODS:
        return LIKELIHOODS[value]
    raise ConfigError(f"likelihood={value!r} is unknown: choose one of false, true (the ODE likelihood), elbo",
                      "likelihood")


if __name__ == "__main__":
    sys.path.append(os.getcwd())
    show_warnings_in_one_line()
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text(CONF))
        sys.exit(0)
    with one_line_errors():
        check_group_choices(sys.argv[1:], CONF)
        check_override_keys(sys.argv[1:], CONF)
        sys.argv = sys.argv[:1] + quiet_other_ranks(sys.argv[1:])
    main()
