"""Compose the config, build the parts, train if asked, sample, evaluate, write the outputs into the Hydra
run directory.

    python run.py                                   # train an MLP on a 2-D toy set, sample with PC
    python run.py sde=vp solver=pc
    python run.py model=oracle data=gmm solver=ode likelihood=true
    python run.py sde._target_=my_module.MySDE
"""
import json
import os
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from evaluation import classifier_report, mixture_report, plot_samples, sample_quality
from evaluation.classify import applies as classifier_applies
from models.guidance import GuidedScore, class_labels
from scoredata import GaussianMixture
from scoresde import Pipeline
from scoresde.pipeline import Clock, resolve_device
from scoresde.cli import (build, check_data_fits, check_group_choices, check_override_keys, check_sample_range,
                          cached_training, choose_threads, fit_model_to_data, help_text, keep_for_sweep,
                          one_line_errors, reconcile, run_lock, show_warnings_in_one_line, warn_about_scale)
from sde.errors import ConfigError, check_int, check_number, config_scope, invalid
from training.checkpoint import read_checkpoint
from training.trainer import load_for_sampling

CONF = Path(__file__).resolve().parent / "conf"
SUMMARY = ("train_steps", "train_seconds", "nfe_sample", "sample_seconds", "swd", "swd_floor", "weights_tv",
           "logp_gap_per_dim", "class_score", "class_score_real", "class_recognised", "class_recognised_real",
           "class_recognised_noise", "classifier_accuracy",
           "nll", "exact_nll", "bpd", "nfe_likelihood", "likelihood_seconds", "elbo", "elbo_bpd", "elbo_stderr")
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


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    with one_line_errors(), run_lock(out):
        run(cfg, out)


def run(cfg, out):
    """Everything a run does, in order; every option is checked before training starts."""
    meta = checkpoint_meta(cfg)
    choose_threads(cfg.threads)
    device = resolve_device(cfg.device)
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
    metrics = {"sde": repr(sde), "solver": repr(solver), "data": repr(data), "device": str(device)}
    size = sum(p.numel() for p in model.parameters())
    print(f"run {out}\n  data     {data!r}\n  model    {type(model).__name__}"
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

    trainer = build("train", cfg.train)
    cached = cached_training(cfg)
    if next(model.parameters(), None) is not None:
        if cached is not None and cached.exists():
            metrics.update(train_steps=load_for_sampling(model, cached), trained_in=str(cached.parent))
            print(f"trained model of this sweep reused: {cached}", flush=True)
        elif trainer.steps > 0:
            loss = build("loss", cfg.loss)
            spec = {"sde": OmegaConf.to_container(cfg.sde, resolve=True),
                    "model": OmegaConf.to_container(cfg.model, resolve=True),
                    "data": OmegaConf.to_container(cfg.data, resolve=True), "data_spec": data.spec()}
            with Clock(device) as clock:
                model, step = trainer.fit(model, loss, sde, data, out, device, cfg.ckpt, meta=spec)
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
    with config_scope("sample"):
        x, stats = pipe.sample(cfg.sample.num, solver, batch=cfg.sample.batch, generator=gen, info=True,
                               progress=cfg.progress, classes=to_plain(cfg.sample.classes),
                               guidance=cfg.guidance.scale)
    labels = stats["labels"]
    metrics.update(nfe_sample=stats["nfe"], sample_seconds=stats["seconds"])
    if labels is not None:
        metrics.update(guidance_scale=cfg.guidance.scale, nfe_counts="network passes per sample" + (
            "; under guidance each pass holds the batch twice (conditional and null labels)"
            if cfg.guidance.scale else ""))
    if "grid_tuning" in stats:
        metrics["grid_tuning"] = stats["grid_tuning"]
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
        np.savez(out / "likelihood.npz", x=stats["x"].cpu().numpy(), **columns)
    if mode == "ode":
        with config_scope("eval.ode"):
            nll, stats = pipe.nll(x_test, batch=cfg.eval.batch, likelihood=likelihood, generator=gen, info=True,
                              progress=cfg.progress, dequant_draws=cfg.eval.dequant_draws)
        metrics.update(nll=nll.mean().item(), bpd=pipe.bits_per_dim(nll), nfe_likelihood=stats["nfe"],
                       likelihood_seconds=stats["seconds"])
        if data.levels is not None and metrics["bpd"] < 0:
            raise ConfigError(f"eval.ode: bits/dim came out {metrics['bpd']:.3g} < 0, impossible for {data.levels}-level "
                              f"data: the likelihood solve (method={cfg.eval.ode.method}) is inaccurate for this model; "
                              "use eval.ode.method=dopri5 or more eval.ode.steps")
        columns = {"nll": nll.numpy()}
        if data.has_log_prob:
            exact = -data.log_prob(stats["x"].double().cpu())
            metrics["exact_nll"] = exact.mean().item()
            columns["exact_nll"] = exact.numpy()
        np.savez(out / "likelihood.npz", x=stats["x"].cpu().numpy(), **columns)

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
    main()
