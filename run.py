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
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig

from evaluation import mixture_report, plot_samples
from solvers import bits_per_dim, dequantize
from training.runtime import build, check_group_choices, one_line_errors, resolve_device
from training.trainer import load_for_sampling

CONF = Path(__file__).resolve().parent / "conf"
SUMMARY = ("train_steps", "train_seconds", "nfe_sample", "sample_seconds", "weights_tv", "logp_gap_per_dim",
           "nll", "exact_nll", "bpd", "nfe_likelihood", "likelihood_seconds")


def in_batches(fn, chunks):
    """fn over chunks, outputs concatenated; NFE averaged over the calls."""
    outs, nfes = zip(*(fn(chunk) for chunk in chunks))
    return torch.cat(outs), float(np.mean(nfes))


def timed(fn, device):
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    with one_line_errors():
        out = Path(HydraConfig.get().runtime.output_dir)
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        sde = build("sde", cfg.sde)
        data = build("data", cfg.data)
        model = build("model", cfg.model, sde=sde, data=data).to(device)
        solver = build("solver", cfg.solver)
        metrics = {"sde": repr(sde), "solver": repr(solver), "data": repr(data), "device": str(device)}

        if any(p.requires_grad for p in model.parameters()):
            trainer = build("train", cfg.train)
            if trainer.steps > 0:
                loss = build("loss", cfg.loss)
                (model, step), seconds = timed(lambda: trainer.fit(model, loss, sde, data, out, device, cfg.ckpt), device)
                metrics.update(train_steps=step, train_seconds=seconds)
            elif cfg.ckpt:
                metrics["train_steps"] = load_for_sampling(model, cfg.ckpt)
            else:
                raise ValueError("train.steps=0 needs ckpt=PATH: an untrained network has nothing to sample")
        model.eval()

        gen = torch.Generator(device).manual_seed(cfg.seed)
        x_T = sde.prior_sample((cfg.sample.num, *data.shape), gen, device)
        (x, nfe), seconds = timed(lambda: in_batches(lambda c: solver(sde, model, c, gen), x_T.split(cfg.sample.batch)),
                                  device)
        metrics.update(nfe_sample=nfe, sample_seconds=seconds)
        if getattr(solver, "tuning", None):
            metrics["grid_tuning"] = {k: v.tolist() if torch.is_tensor(v) else v for k, v in solver.tuning.items()}
        if hasattr(data, "means"):
            metrics.update(mixture_report(data, x))
        np.savez(out / "samples.npz", x=x.cpu().numpy())
        if cfg.sample.plot:
            reference = data.sample(min(len(x), 5000), torch.Generator().manual_seed(cfg.seed + 2)).numpy()
            plot_samples(x.cpu().numpy(), out / "samples.png", reference, title=f"{sde!r}\n{solver!r}",
                         value_range=(-1, 1) if data.levels else None)

        if cfg.likelihood:
            likelihood = build("eval.ode", cfg.eval.ode)
            x_test = data.test(cfg.eval.num, torch.Generator().manual_seed(cfg.seed + 1)).to(device)
            if data.levels is not None:
                x_test = dequantize(x_test, data.levels, data.range, gen)
            evaluate = lambda c: likelihood(sde, model, c, gen)  # noqa: E731
            (nll, nfe), seconds = timed(lambda: in_batches(evaluate, x_test.split(cfg.eval.batch)), device)
            nll = nll.double().cpu()
            metrics.update(nll=nll.mean().item(), bpd=bits_per_dim(nll.mean().item(), data.dim, data.levels, data.range),
                           nfe_likelihood=nfe, likelihood_seconds=seconds)
            if hasattr(data, "log_prob"):
                metrics["exact_nll"] = -data.log_prob(x_test.double().cpu()).mean().item()
            np.savez(out / "likelihood.npz", x=x_test.cpu().numpy(), nll=nll.numpy())

        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for key in SUMMARY:
            if key in metrics:
                print(f"{key:>20s}  {metrics[key]:.6g}")
        print(f"{'outputs':>20s}  {out}")


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    with one_line_errors():
        check_group_choices(sys.argv[1:], CONF)
    main()
