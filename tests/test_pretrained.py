"""diffusers checkpoints (random tiny U-Nets saved as a pipeline folder, nothing downloaded) under our solvers:
DDIM on the model's own levels reproduces diffusers' DDIMScheduler, the ancestral step DDPMScheduler's, and an
NCSN++ U-Net's score is its output at the scheduler's σ."""
import pytest
import torch

pytest.importorskip("diffusers")

from models.pretrained import DiffusersModel, import_diffusers  # noqa: E402
from scoresde.data import DataSpec  # noqa: E402
from sde import VESDE, VPSDE  # noqa: E402
from sde.errors import CheckpointError, ConfigError  # noqa: E402
from solvers import DDIM, PredictorCorrector  # noqa: E402
from solvers.grids import ModelLevels  # noqa: E402
from solvers.stochastic import ancestral_step  # noqa: E402

diffusers = import_diffusers()


def tiny_unet(size=8, fourier=False, classes=None):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4,
                                 time_embedding_type="fourier" if fourier else "positional",
                                 num_class_embeds=classes)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return unet


def save(folder, unet, scheduler):
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def diffusers_ddim(unet, scheduler, x, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


def ddim_on_the_model_levels(model, steps, x_T, **grid):
    solver = DDIM(steps, grid=ModelLevels(**{**model.grid_options(), **grid}), eps=0.0)
    return solver(model.sde, model, x_T.clone())


def ours_and_diffusers(tmp_path, unet, steps, **options):
    """DDIM on the model levels of a folder saved with DDIMScheduler(**options), and DDIMScheduler itself, from
    the same x_T: (the model, x_T, ours, theirs), the NFE checked."""
    folder = save(tmp_path, unet, diffusers.DDIMScheduler(**options))
    model = DiffusersModel(folder)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    ours, nfe = ddim_on_the_model_levels(model, steps, x_T)
    theirs = diffusers_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, steps)
    assert nfe == steps
    return model, x_T, ours, theirs


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 7, pytest.param(30, marks=pytest.mark.slow),
                                   pytest.param(50, marks=pytest.mark.slow)])
def test_ddim_on_the_model_levels_reproduces_diffusers_at_every_spacing(tmp_path, unet, spacing, prediction, steps):
    """N = 1000 levels in K = 10, 7, 30, 50 steps: DDIMScheduler steps from each listed timestep i to i − ⌊N/K⌋,
    which under linspace and trailing spacing with K not dividing N is not the next listed one; stepping to the next
    listed one instead (stride off) is far off there."""
    options = dict(prediction_type=prediction, clip_sample=False, timestep_spacing=spacing)
    model, x_T, ours, theirs = ours_and_diffusers(tmp_path, unet, steps, **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)  # a random ε-net's x̂0 reaches |x/a| ~ 500
    if spacing != "leading" and 1000 % steps:
        plain, _ = ddim_on_the_model_levels(model, steps, x_T, stride=False)
        assert (plain - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("options", [dict(set_alpha_to_one=False), dict(steps_offset=1),
                                     dict(set_alpha_to_one=False, timestep_spacing="linspace")])
def test_ddim_on_the_model_levels_reproduces_diffusers_final_level_and_offset(tmp_path, unet, options):
    """set_alpha_to_one=False: a step below level 0 lands on ᾱ_0 (from level 0 itself: a step of length zero);
    steps_offset shifts leading spacing's timesteps."""
    _, _, ours, theirs = ours_and_diffusers(tmp_path, unet, 7, clip_sample=False, prediction_type="v_prediction",
                                            **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, pytest.param(50, marks=pytest.mark.slow)])
def test_ddim_on_the_model_levels_reproduces_diffusers_on_the_cosine_schedule(tmp_path, unet, prediction, steps):
    options = dict(beta_schedule="squaredcos_cap_v2", prediction_type=prediction, clip_sample=False)
    model, x_T, ours, theirs = ours_and_diffusers(tmp_path, unet, steps, **options)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_ddim_on_the_model_levels_under_another_process_reproduces_diffusers(tmp_path, unet, spacing):
    """Under VE (a = 1, s = σ) the scheduler's variable is x/√(a² + s²) = x/√(1 + σ²): our x_T is the scheduler's
    times √(1 + σ²) at the first level, our sample the scheduler's times it at the last landing (level 0 for
    trailing spacing's 7 steps, σ = 0 for linspace's); each step's landing is carried to the next start in it."""
    sde = VESDE(0.005, 400.0)
    folder = save(tmp_path, unet, diffusers.DDIMScheduler(clip_sample=False, prediction_type="v_prediction",
                                                          timestep_spacing=spacing))
    model = DiffusersModel(folder, sde=sde)
    times = ModelLevels(**model.grid_options())(sde, 7, 0.0)
    scale = torch.sqrt(sde.a(times) ** 2 + sde.s(times) ** 2).float()
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    ours, _ = ddim_on_the_model_levels(model, 7, x_T * scale[0])
    theirs = diffusers_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 7)
    torch.testing.assert_close(ours / scale[-1], theirs, rtol=1e-5, atol=1e-4)


def test_a_first_level_above_the_process_is_refused_in_one_line(tmp_path, unet):
    """Trailing spacing starts at level N − 1: σ_999 = 157.4 of the linear β lies above σ(T = 1) = 152.2 of
    VP(0.1, 20) (the default process reaches it: T = 1.0034), and σ_999 = 2.03e4 of the capped cosine β above the
    cosine VP's σ(T) = 118.8."""
    x_T = torch.randn(1, 2, 8, 8)
    model = DiffusersModel(save(tmp_path / "a", unet, diffusers.DDIMScheduler(timestep_spacing="trailing")),
                           sde=VPSDE())
    with pytest.raises(ConfigError, match=r"first timestep 999 has sigma = 157\.407, above sigma\(T\) = 152\.167"):
        ddim_on_the_model_levels(model, 10, x_T)
    assert model.sde.T == 1.0 and DiffusersModel(tmp_path / "a").sde.T == pytest.approx(1.00338, abs=1e-5)
    cosine = diffusers.DDIMScheduler(timestep_spacing="trailing", beta_schedule="squaredcos_cap_v2")
    model = DiffusersModel(save(tmp_path / "b", unet, cosine))
    with pytest.raises(ConfigError, match=r"first timestep 999 has sigma = 20291\.3, above sigma\(T\) = 118\.8"):
        ddim_on_the_model_levels(model, 10, x_T)


def diffusers_ddpm(unet, scheduler, x, steps, generator):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = unet(x, t).sample
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 7])
def test_ancestral_sampling_on_the_model_levels_reproduces_ddpm_scheduler(tmp_path, unet, spacing, prediction,
                                                                           steps):
    """The whole chain on the same x_T and the same generator (one draw per step, the last step's std 0):
    DDPMScheduler steps to the next listed timestep, so the plain grid of the model's levels is its chain."""
    options = dict(prediction_type=prediction, clip_sample=False, timestep_spacing=spacing)
    folder = save(tmp_path, unet, diffusers.DDPMScheduler(**options))
    model = DiffusersModel(folder)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    solver = PredictorCorrector(steps, predictor="ancestral", corrector="none", eps=0.0,
                                grid=ModelLevels(**model.grid_options()))
    ours, nfe = solver(model.sde, model, x_T.clone(), torch.Generator().manual_seed(5))
    theirs = diffusers_ddpm(unet, diffusers.DDPMScheduler.from_pretrained(str(folder / "scheduler")), x_T, steps,
                            torch.Generator().manual_seed(5))
    assert nfe == steps
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_ddim_with_clipping_reproduces_clip_sample(tmp_path, unet):
    folder = save(tmp_path, unet, diffusers.DDIMScheduler(clip_sample=True, clip_sample_range=0.5))
    model = DiffusersModel(folder)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    ours, _ = DDIM(10, grid=ModelLevels(**model.grid_options()), eps=0.0, clip=0.5)(model.sde, model, x_T.clone())
    plain, _ = DDIM(10, grid=ModelLevels(**model.grid_options()), eps=0.0)(model.sde, model, x_T.clone())
    theirs = diffusers_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 10)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert (plain - theirs).abs().max() > 1e-2


def test_wrapped_eps_at_the_model_levels_is_the_unet_output(tmp_path, unet):
    model = DiffusersModel(save(tmp_path, unet, diffusers.DDPMScheduler()))
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    levels = torch.tensor([0, 17, 500, 900])
    t = model.sde.time_at_sigma(model.inner.sigmas[levels], 1e-9).float()
    with torch.no_grad():
        assert torch.equal(model.eps(x, t), unet(x, levels).sample)


def test_ancestral_step_is_ddpm_schedulers_step(tmp_path, unet):
    """Same inputs, same noise draw (two seeds pin mean and variance): our posterior step between consecutive model
    levels is DDPM's step with fixed_small variance, β_t = 1 − ᾱ_t/ᾱ_{t−1}, x̂0 = (x − √(1 − ᾱ_t) ε)/√ᾱ_t,

        mean = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂0 + √(1 − β_t)(1 − ᾱ_{t−1})/(1 − ᾱ_t) x,   var = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t),

    to float32 rounding against that formula in float64, and to 2e-4 against DDPMScheduler.step (which forms β_t in
    float32: at level 1 that alone moves its step by ~1.5e-4)."""
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    model = DiffusersModel(save(tmp_path, unet, scheduler))
    sde, sigmas, abar = model.sde, model.inner.sigmas, model.inner.alphas_cumprod
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    for level in (919, 500, 1):
        t, t_next = sde.time_at_sigma(sigmas[[level, level - 1]], 1e-9)
        with torch.no_grad():
            out = unet(x, level).sample
        a_t, a_p = abar[level], abar[level - 1]
        beta = 1 - a_t / a_p
        x0 = (x.double() - (1 - a_t).sqrt() * out.double()) / a_t.sqrt()
        mean = a_p.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_p) / (1 - a_t) * x.double()
        std = (beta * (1 - a_p) / (1 - a_t)).sqrt()
        for seed in (0, 1):
            ours = ancestral_step(sde, model, x, t, t_next, torch.Generator().manual_seed(seed))
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(ours.double(), mean + std * z, rtol=0, atol=2e-6)
            theirs = scheduler.step(out, level, x, generator=torch.Generator().manual_seed(seed)).prev_sample
            torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-4)


def test_ncsnpp_score_is_the_unet_output_at_the_schedulers_sigmas(tmp_path):
    unet = tiny_unet(fourier=True)
    scheduler = diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0)
    model = DiffusersModel(save(tmp_path, unet, scheduler))
    scheduler.set_timesteps(5)
    scheduler.set_sigmas(5)
    sigma = scheduler.sigmas.double()
    t = model.sde.time_at_sigma(sigma, 1e-9)
    torch.testing.assert_close(model.sde.sigma(t), sigma, rtol=1e-6, atol=0)
    x = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(5)) * sigma.float()[:, None, None, None]
    with torch.no_grad():
        theirs = unet(x, scheduler.sigmas).sample
    torch.testing.assert_close(model(x, t.float()), theirs, rtol=1e-4, atol=1e-4)


def test_class_conditional_unet(tmp_path):
    unet = tiny_unet(classes=3)
    model = DiffusersModel(save(tmp_path, unet, diffusers.DDPMScheduler()))
    assert model.num_classes == 3
    x, y = torch.randn(2, 2, 8, 8), torch.tensor([0, 2])
    t = model.sde.time_at_sigma(model.inner.sigmas[[100, 100]], 1e-9).float()
    with torch.no_grad():
        assert torch.equal(model.eps(x, t, y), unet(x, torch.tensor([100, 100]), class_labels=y).sample)
    with pytest.raises(ConfigError, match="null class"):
        model(x, t)
    assert DiffusersModel(tmp_path, null_class=True).num_classes == 2


def diffusers_guided_ddim(unet, scheduler, x, steps, labels, null, scale):
    """DDIMScheduler with ε = ε(x, t, ∅) + scale · (ε(x, t, y) − ε(x, t, ∅)), the two passes apart."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        with torch.no_grad():
            cond = unet(x, t, class_labels=labels).sample
            uncond = unet(x, t, class_labels=torch.full_like(labels, null)).sample
        x = scheduler.step(uncond + scale * (cond - uncond), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_guided_sampling_on_the_model_grid_is_diffusers_classifier_free_guidance(tmp_path, prediction):
    """A U-Net with 4 class embeddings, the last the null class: our guidance w = 1.5 is diffusers' 2.5."""
    import scoresde

    unet = tiny_unet(classes=4)
    scheduler = diffusers.DDIMScheduler(clip_sample=False, prediction_type=prediction, timestep_spacing="trailing")
    folder = save(tmp_path, unet, scheduler)
    pipe = scoresde.from_diffusers(folder, device="cpu", null_class=True)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(9))
    x, stats = pipe.sample(3, solver="ddim", steps=7, grid="model", eps=0.0, x_T=x_T, classes=[0, 1, 2],
                           guidance=1.5, info=True)
    labels = torch.tensor([0, 1, 2])
    theirs = diffusers_guided_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 7,
                                   labels, 3, 2.5)
    torch.testing.assert_close(x, theirs, rtol=1e-5, atol=1e-4)
    assert stats["nfe"] == 7 and torch.equal(stats["labels"], labels)
    plain = diffusers_guided_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 7,
                                  labels, 3, 1.0)
    assert (plain - theirs).abs().max() > 1e-2


def test_bad_folders_and_configs_are_one_line(tmp_path, unet):
    with pytest.raises(ConfigError, match="is not a folder"):
        DiffusersModel(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="no scheduler/scheduler_config.json"):
        DiffusersModel(tmp_path)
    folder = save(tmp_path / "p", unet, diffusers.DDPMScheduler())
    with pytest.raises(ConfigError, match="does not fit"):
        DiffusersModel(folder, data=DataSpec((3, 32, 32)))
    cfg = folder / "scheduler" / "scheduler_config.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"epsilon"', '"flow"'))
    with pytest.raises(ConfigError, match="prediction_type='flow'"):
        DiffusersModel(folder)
    cfg.write_text(text.replace('"linear"', '"quadratic"'))
    with pytest.raises(ConfigError, match="beta_schedule='quadratic'"):
        DiffusersModel(folder)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(ConfigError, match="no unet/config.json"):
        DiffusersModel(folder)


def test_default_process_is_the_ddpm_limit(tmp_path, unet):
    model = DiffusersModel(save(tmp_path, unet, diffusers.DDPMScheduler()))
    assert isinstance(model.sde, VPSDE) and model.sde.beta_max == pytest.approx(20.0)


def test_front_door_samples_on_the_model_grid_from_given_prior_draws(tmp_path, unet):
    import scoresde

    folder = save(tmp_path, unet, diffusers.DDIMScheduler(clip_sample=False))
    pipe = scoresde.from_diffusers(folder, device="cpu")
    assert pipe.data.value_range == (-1.0, 1.0) and pipe.data.shape == (2, 8, 8)
    x_T = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    x, stats = pipe.sample(3, solver="ddim", steps=10, grid="model", eps=0.0, x_T=x_T, info=True)
    theirs = diffusers_ddim(unet, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 10)
    torch.testing.assert_close(x, theirs, rtol=1e-5, atol=1e-4)
    assert stats["nfe"] == 10
    assert pipe.config["source"]["digest"] and len(pipe.config["source"]["digest"]) == 64
    with pytest.raises(ConfigError, match="x_T has shape"):
        pipe.sample(2, solver="ddim", steps=10, x_T=x_T)


@pytest.mark.slow
def test_likelihood_of_a_wrapped_unet_agrees_between_solvers_and_the_elbo_is_finite(tmp_path):
    """A 1×4×4 U-Net (16 dimensions, the exact divergence) under the VP process: dopri5 at rtol = atol = 1e-5 and
    method=exponential at 50 steps agree per point to 2e-5 nats/dim (each within 3e-5 of dopri5 at 1e-7), far
    inside the 0.005 that test_likelihood_pointwise allows the exponential method on the exact mixture score.

    A random U-Net is smooth in λ, as a trained one is, only with two of its parts tamed: its timestep
    embedding's fastest frequency (cos τ and sin τ of the fractional timestep τ ∈ [0, 999], period 2π timesteps,
    which a random net's output follows), zeroed in the embedding's first layer, leaving the frequency 1/100; and
    GroupNorm over a handful of values (4 groups of one channel: 16 values at 4×4, 8 at 2×2), which puts features
    of width ~0.03 in λ on a path x_t, replaced by one group. With four groups and both frequencies (and the
    output layer scaled by 0.1) the exponential method at 50 steps is up to 0.075 nats/dim off dopri5; with only
    the frequency zeroed up to 0.035; with only one group its 50 and 200 steps still differ by 0.007."""
    import scoresde

    torch.manual_seed(0)
    small = diffusers.UNet2DModel(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                                  down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=1)
    assert small.time_embedding.linear_1.in_features == 4  # [cos τ, cos τ/100, sin τ, sin τ/100]
    with torch.no_grad():
        small.time_embedding.linear_1.weight[:, [0, 2]] = 0
    pipe = scoresde.from_diffusers(save(tmp_path, small, diffusers.DDPMScheduler()), device="cpu")
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(7)) * 2 - 1
    adaptive = pipe.nll(x, dequantize=False, rtol=1e-5, atol=1e-5, eps=1e-3, divergence="exact")
    exponential = pipe.nll(x, dequantize=False, method="exponential", steps=50, eps=1e-3, divergence="exact")
    gap = (exponential - adaptive).abs() / 16
    print(f"exponential(50) - dopri5: {gap.tolist()} nats/dim")
    assert gap.max() <= 2e-4, gap
    bound, stderr = pipe.elbo(x, draws=8)
    assert torch.isfinite(bound).all() and torch.isfinite(stderr).all() and (stderr > 0).all()
    assert pipe.bits_per_dim(adaptive) > 0


@pytest.mark.slow
def test_a_run_of_a_diffusers_model_records_its_weights_and_loads_again(tmp_path):
    """run.py model=diffusers, in this process (the process is the subject: training skipped, weights recorded, never copied), then
    scoresde.load on its run directory rebuilds it with the run's solver on the model's own levels."""
    import json

    import scoresde
    from test_run import run_main

    torch.manual_seed(0)
    small = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                  down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = save(tmp_path / "pipe", small, diffusers.DDIMScheduler(clip_sample=False))
    run = tmp_path / "run"
    done = run_main(run, "model=diffusers", f"model.path={folder}", "data=digits", "solver=ddim", "solver.steps=10",
                    "solver.grid=model", "solver.eps=0", "train.steps=0", "sample.num=4", "sample.max_range=0",
                    "sample.plot=false", "eval=[]")
    assert done.returncode == 0, done.stderr[-2000:]
    weights = json.loads((run / "metrics.json").read_text())["weights"]
    assert weights["path"] == str(folder.resolve()) and not list(run.rglob("*.safetensors"))
    pipe = scoresde.load(run, device="cpu")
    assert pipe.config["source"]["digest"] == weights["digest"]
    x, stats = pipe.sample(2, info=True)
    assert x.shape == (2, 1, 8, 8) and stats["nfe"] == 10
    with torch.no_grad():
        small.conv_out.bias.add_(1.0)
    small.save_pretrained(str(folder / "unet"))
    with pytest.raises(CheckpointError, match="not those run"):
        scoresde.load(run, device="cpu")


def test_the_command_line_samples_from_prior_draws_in_a_npy(tmp_path):
    """run.py model=diffusers ... task.x_T=FILE.npy, in this process, with trailing spacing (its first level, above
    sde=vp's σ(T = 1), refused in one line; reached with sde.T=1.0034): its samples are DDIMScheduler's from those
    draws; a missing file, a wrong shape and integers are one line each, before anything is sampled."""
    import numpy as np

    from scoresde.cli.main import run

    torch.manual_seed(0)
    small = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                  down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = save(tmp_path / "pipe", small, diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"))
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    np.save(tmp_path / "x_T.npy", x_T.numpy())
    np.save(tmp_path / "three.npy", x_T[:3].numpy())
    np.save(tmp_path / "ints.npy", np.zeros((4, 1, 8, 8), dtype=np.int64))
    args = ["model=diffusers", f"model.path={folder}", "data=digits", "solver=ddim", "solver.steps=7",
            "solver.grid=model", "solver.eps=0", "train.steps=0", "sample.num=4", "sample.max_range=0",
            "sample.plot=false", "eval=[]", f"threads={torch.get_num_threads()}", f"task.x_T={tmp_path / 'x_T.npy'}"]
    threads = torch.get_num_threads()
    (tmp_path / "run").mkdir()
    try:
        with pytest.raises(ConfigError, match=r"^solver\.grid=model: the scheduler's first timestep 999 has sigma"):
            run(args, tmp_path / "run")
        metrics = run([*args, "sde.T=1.0034"], tmp_path / "run")
        for name, needle in [("none.npy", "is not a .npy file"), ("three.npy", r"float32 of shape \(3, 1, 8, 8\)"),
                             ("ints.npy", "holds int64")]:
            with pytest.raises(ConfigError, match=rf"^task\.x_T='.*{name}'.*{needle}.*\(4, 1, 8, 8\)") as e:
                run([*args[:-1], "sde.T=1.0034", f"task.x_T={tmp_path / name}"], tmp_path / name)
            assert "\n" not in str(e.value) and not (tmp_path / name / "samples.npz").exists()
    finally:
        torch.set_num_threads(threads)
    ours = torch.as_tensor(np.load(tmp_path / "run" / "samples.npz")["x"])
    theirs = diffusers_ddim(small, diffusers.DDIMScheduler.from_pretrained(str(folder / "scheduler")), x_T, 7)
    assert metrics["nfe_sample"] == 7 and "stride=True" in metrics["solver"]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_missing_diffusers_is_one_line_naming_the_extra(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "diffusers" or m.startswith("diffusers.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r'pip install "\.\[diffusers\]"'):
        import_diffusers()


@pytest.mark.slow
def test_fast_solver_fits_a_grid_and_inpainting_runs_on_a_wrapped_unet(tmp_path, unet):
    import scoresde
    from solvers import FitGrid

    pipe = scoresde.from_diffusers(save(tmp_path, unet, diffusers.DDIMScheduler(clip_sample=False)), device="cpu")
    x, stats = pipe.sample(2, solver="fast", steps=4, grid=FitGrid(pilots=8, teacher_steps=20, iterations=3),
                           info=True)
    assert torch.isfinite(x).all() and stats["nfe"] == 4
    times = torch.as_tensor(stats["grid_fit"]["times"])
    assert len(times) == 5 and (times[1:] < times[:-1]).all()
    data = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(8)) * 2 - 1
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    out = pipe.inpaint(data, mask, solver="ddim", steps=10, grid="model", eps=0.0)
    assert torch.equal(out[:, :, :4], data[:, :, :4])


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """A 3-channel 8×8 U-Net with a DDIMScheduler as a pipeline folder, and 20 random 8-bit RGB images in a .npy."""
    import numpy as np

    tmp = tmp_path_factory.mktemp("rgb")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    folder = save(tmp / "pipe", unet, diffusers.DDIMScheduler(clip_sample=False))
    np.save(tmp / "rgb.npy", np.random.default_rng(0).integers(0, 256, size=(20, 3, 8, 8)).astype(np.uint8))
    return folder, tmp / "rgb.npy"


def run_here(out, *args):
    """run.py ARGS in this process into ``out``, the run's metrics.json read back."""
    import json

    from scoresde.cli.main import run

    threads = torch.get_num_threads()
    out.mkdir(parents=True)
    try:
        run([*args, "sample.plot=false", f"threads={threads}"], out)
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def test_the_command_line_colorizes_with_a_wrapped_unet(tmp_path, rgb):
    """task=colorize on a diffusers model: the held-out images in the model's range [−1, 1] (bin centres
    (2k + 1)/256 − 1 of the 8-bit data), their gray (1, 1, 1)ᵀx/√3 kept in every completion to float32 rounding
    of a random ε-net's |x| ~ 200. A U-Net predicting the sample with its output layer's weights zeroed, its
    biases b, has x̂0 ≡ b: the exact colorization of x is then the gray of x with the chroma of b,

        x̂_c = x̄ + b_c − b̄   (x̄, b̄ the means over the channels),

    which the run gives to 1e-5."""
    import numpy as np

    folder, images = rgb
    args = ["model=diffusers", "data=array", f"data.path={images}", "task=colorize", "task.num=2",
            "task.completions=2", "solver=ddim", "solver.steps=10", "solver.grid=model", "solver.eps=0",
            "train.steps=0", "eval=[]"]
    metrics = run_here(tmp_path / "eps", *args, f"model.path={folder}")
    saved = np.load(tmp_path / "eps" / "inpaint.npz")
    x, out = saved["x"].astype(np.float64), saved["completions"].astype(np.float64)
    assert metrics["nfe_inpaint"] == 10 and x.shape == (2, 3, 8, 8) and out.shape == (4, 3, 8, 8)
    k = (x + 1) * 128 - 0.5
    assert np.allclose(k, np.round(k), atol=1e-4) and k.min() >= 0 and k.max() <= 255
    gray = lambda v: v.sum(1) / np.sqrt(3)  # noqa: E731
    assert np.abs(gray(out) - np.repeat(gray(x), 2, 0)).max() < 1e-4 and np.isfinite(out).all()
    assert np.abs(out - np.repeat(x, 2, 0)).max() > 1

    unet = diffusers.UNet2DModel.from_pretrained(str(folder / "unet"))
    b = torch.tensor([0.3, -0.05, -0.1])
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.copy_(b)
    sample = save(tmp_path / "sample", unet, diffusers.DDIMScheduler(clip_sample=False, prediction_type="sample"))
    run_here(tmp_path / "x0", *args, f"model.path={sample}")
    saved = np.load(tmp_path / "x0" / "inpaint.npz")
    x, out = saved["x"], saved["completions"]
    exact = np.repeat(x.mean(1, keepdims=True) + (b - b.mean()).numpy()[:, None, None], 2, 0)
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5)


def test_fid_and_kid_of_a_wrapped_unet_in_pixel_features_and_against_its_own_samples(tmp_path, rgb):
    """eval=[fid] with scoresde.evaluation.PixelFeatures (nothing downloaded) on a diffusers model with x̂0-clipping
    (solver.clip=1, so its samples lie in [−1, 1]): against the 18 training images, finite FID and KID in
    metrics.json. Against a data file holding the run's own FID samples (the "fid" stream's draws, made again here)
    as its training split: FID 0 to rounding of the singular covariances (16 points in 192 features) and KID the
    unbiased estimate's value on two copies of one set of m rows, 2 (W − D)/m, W the mean kernel over distinct
    rows, D over each row with itself."""
    import numpy as np

    import scoresde
    from scoresde.data import TensorData
    from scoresde.evaluation.fid import to_uint8
    from scoresde.seeds import Seeds

    folder, images = rgb
    num = 16
    args = ["model=diffusers", f"model.path={folder}", "data=array", "solver=ddim", "solver.steps=10",
            "solver.grid=model", "solver.eps=0", "solver.clip=1", "train.steps=0", "sample.num=2", "eval=[fid]",
            "eval.fid.features._target_=scoresde.evaluation.PixelFeatures", f"eval.fid.cache={tmp_path / 'cache'}",
            f"eval.fid.num={num}"]
    metrics = run_here(tmp_path / "data", *args, f"data.path={images}")
    assert metrics["fid_num"] == num and 1 < metrics["fid"] < 1e3 and np.isfinite(metrics["kid"])
    assert metrics["kid_std"] > 0 and 0 <= metrics["precision"] <= 1

    pipe = scoresde.from_diffusers(folder, device="cpu")
    x = pipe.sample(num, solver="ddim", steps=10, grid="model", eps=0.0, clip=1.0, generator=Seeds(0).generator("fid"))
    assert x.abs().max() <= 1
    own = to_uint8(x, pipe.data).numpy()
    split = TensorData(np.zeros((num + 1, 1)), test_fraction=0.05)
    rows = np.zeros((num + 1, *own.shape[1:]), np.uint8)
    rows[split.train_index] = own
    np.save(tmp_path / "own.npy", rows)
    metrics = run_here(tmp_path / "own", *args, f"data.path={tmp_path / 'own.npy'}", "data.test_fraction=0.05")
    f = torch.from_numpy(own.reshape(num, -1)).double() / 255
    k = (f @ f.T / f.shape[1] + 1) ** 3
    w, d = (k.sum() - k.trace()) / (num * (num - 1)), k.trace() / num
    assert metrics["fid"] < 1e-4
    assert metrics["kid"] == pytest.approx(2 * (w - d).item() / num, rel=1e-5)


@pytest.mark.slow
def test_a_sweep_over_two_solvers_on_a_wrapped_unet(tmp_path, rgb, monkeypatch):
    """run.py -m solver=ddim,dpm solver.grid=model on a diffusers model, in this process: both runs on the model's
    own levels, each loading the U-Net once from the same folder, and summary.md lists both. A bad solver value
    is still refused for the whole sweep before any run (its grid=model checked as the time grid there)."""
    import json

    import numpy as np

    import models.pretrained as pretrained
    from test_run import run_main

    folder, images = rgb
    loads, load = [], pretrained.load_unet
    monkeypatch.setattr(pretrained, "load_unet", lambda path, *a, **k: loads.append(str(path)) or load(path, *a, **k))
    sweep = tmp_path / "sweep"
    proc = run_main(tmp_path / "run", "-m", f"hydra.sweep.dir={sweep}", "model=diffusers", f"model.path={folder}",
                    "data=array", f"data.path={images}", "solver=ddim,dpm", "solver.steps=10", "solver.grid=model",
                    "solver.eps=0", "train.steps=0", "sample.num=4", "sample.plot=false", "sample.max_range=0",
                    "eval=[]")
    assert proc.returncode == 0, proc.stderr
    assert loads == [str(folder)] * 2
    metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["solver"].split("(")[0] for m in metrics] == ["DDIM", "DPMSolver"]
    assert all("grid=ModelLevels(levels=1000" in m["solver"] and m["nfe_sample"] == 10 for m in metrics)
    assert metrics[0]["weights"] == metrics[1]["weights"] and metrics[0]["weights"]["path"] == str(folder.resolve())
    rows = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and "solver=ddim" in rows[1] and "solver=dpm" in rows[2] and "nfe_sample" in rows[0]
    assert all(np.load(sweep / str(i) / "samples.npz")["x"].shape == (4, 3, 8, 8) for i in range(2))
    proc = run_main(tmp_path / "bad", "-m", f"hydra.sweep.dir={tmp_path / 'bad'}", "model=diffusers",
                    f"model.path={folder}", "data=array", f"data.path={images}", "solver=ddim,dpm", "solver.steps=0",
                    "solver.grid=model", "train.steps=0", "eval=[]")
    assert proc.returncode == 2 and len(loads) == 2 and not (tmp_path / "bad" / "0").exists()
    assert proc.stderr.strip() == ("error: solver.steps=0 is invalid: expected an integer >= 1 (run 0 of the sweep: "
                                   "solver=ddim; no run was started)")
