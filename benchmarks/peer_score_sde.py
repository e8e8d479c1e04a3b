"""score_sde_pytorch's DDPM++ (continuous VP, CIFAR-10 configuration) timed on a device, for benchmarks.throughput.

    python benchmarks/peer_score_sde.py CHECKOUT DEVICE STEPS WARMUP NFE NUM [BATCH]

Runs in its own process with the checkout first on sys.path (its packages `models`, `losses`, `sampling`,
`sde_lib` would clash with ours). Its training step is its own `losses.get_step_fn` (the continuous DSM loss with
mean reduction, Adam 2e-4 with its warm-up and gradient clip 1, its EMA at 0.9999) on a batch already on the
device; its sampler is its own predictor-corrector sampler with the Euler–Maruyama predictor and no corrector at NFE
steps. Its `op` package compiles CUDA kernels at import; DDPM++ (fir=False) never calls them, so a stand-in module
takes its place. Prints one JSON line: steps_per_s, peak_gib, images_per_s, parameters.
"""
import json
import sys
import time
import types
from types import SimpleNamespace as NS


def config(device, nfe, batch):
    model = NS(name="ncsnpp", scale_by_sigma=False, ema_rate=0.9999, normalization="GroupNorm", nonlinearity="swish",
               nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), resamp_with_conv=True,
               conditional=True, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan",
               progressive="none", progressive_input="none", progressive_combine="sum", attention_type="ddpm",
               init_scale=0.0, embedding_type="positional", fourier_scale=16, conv_size=3, sigma_min=0.01,
               sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0, dropout=0.1)
    return NS(model=model, data=NS(image_size=32, num_channels=3, centered=True, dataset="CIFAR10"),
              training=NS(continuous=True, sde="vpsde", batch_size=batch, reduce_mean=True,
                          likelihood_weighting=False),
              optim=NS(weight_decay=0, optimizer="Adam", lr=2e-4, beta1=0.9, eps=1e-8, warmup=5000, grad_clip=1.0),
              sampling=NS(method="pc", predictor="euler_maruyama", corrector="none", snr=0.16, n_steps_each=1,
                          noise_removal=True, probability_flow=False),
              device=device, seed=42)


def main():
    path, device, steps, warmup, nfe, num = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    sys.path.insert(0, path)
    op = types.ModuleType("op")
    op.upfirdn2d = None
    sys.modules["op"] = op
    import torch

    import losses
    import sampling
    import sde_lib
    from models import ncsnpp  # noqa: F401  (registers the model)
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    device = torch.device(device)
    torch.manual_seed(0)
    batch = int(sys.argv[7]) if len(sys.argv) > 7 else 128
    cfg = config(device, nfe, batch)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = mutils.create_model(cfg)
    ema = ExponentialMovingAverage(model.parameters(), decay=cfg.model.ema_rate)
    optimizer = losses.get_optimizer(cfg, model.parameters())
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    sde = sde_lib.VPSDE(beta_min=cfg.model.beta_min, beta_max=cfg.model.beta_max, N=cfg.model.num_scales)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(cfg),
                                 reduce_mean=True, continuous=True, likelihood_weighting=False)
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step_fn(state, x)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = [step_fn(state, x) for _ in range(steps)]
    sync()
    steps_per_s = steps / (time.perf_counter() - t0)
    assert torch.isfinite(torch.stack([o.detach() for o in out])).all()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    sde = sde_lib.VPSDE(beta_min=cfg.model.beta_min, beta_max=cfg.model.beta_max, N=nfe)
    sampler = sampling.get_pc_sampler(sde, (num, 3, 32, 32), sampling.get_predictor("euler_maruyama"),
                                      sampling.get_corrector("none"), lambda v: (v + 1) / 2, snr=0.16,
                                      n_steps=1, probability_flow=False, continuous=True, denoise=True,
                                      eps=1e-3, device=device)
    model.eval()
    sampler(model)
    sync()
    t0 = time.perf_counter()
    sampler(model)
    sync()
    images_per_s = num / (time.perf_counter() - t0)
    print(json.dumps({"steps_per_s": steps_per_s, "peak_gib": peak, "images_per_s": images_per_s,
                      "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
