"""Networks trained elsewhere behind models.external: the exact mixture score, written in each network's own
convention, comes back as the exact score under every process."""
import math

import pytest
import torch

from models import MixtureScore
from models.external import (DiscreteModel, Denoiser, ScoreNetwork, VelocityModel, alphas_cumprod,
                             betas_for_schedule, interpolate)
from scoresde.data import GaussianMixture
from sde import VESDE, VPSDE, CosineVPSDE, RectifiedFlow, SubVPSDE
from sde.errors import ConfigError

SDES = {"vp": VPSDE(), "ve": VESDE(), "subvp": SubVPSDE(), "cosine": CosineVPSDE(), "rf": RectifiedFlow()}


def mixture():
    return GaussianMixture([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.8], [0.2, 1.2, -1.0]], [0.3, 0.5, 0.4], [0.5, 0.3, 0.2])


def eps_at(mix, x, sigma):
    """The exact ε̂ = E[z | y] of y = x_0 + σ z, scaled to x = c y by any c: ε̂ = −σ ∇log p_σ(y)."""
    ones = torch.ones(len(x), dtype=x.dtype)
    return -sigma.reshape(-1, *[1] * (x.ndim - 1)) * mix.score(x, ones, sigma)


class FakeDiscrete(torch.nn.Module):
    """The exact ε, v or x_0 of the mixture on the VP chain of an ᾱ table, at a fractional index i: σ(i) by linear
    interpolation of log σ_i (the wrapper's own rule, inverted)."""

    def __init__(self, mix, abar, prediction):
        super().__init__()
        self.mix, self.prediction = mix, prediction
        self.log_sigmas = 0.5 * torch.log((1 - abar.double()) / abar.double())
        self.calls = []

    def forward(self, x_m, i):
        self.calls.append(i.clone())
        levels = torch.arange(len(self.log_sigmas), dtype=torch.float64)
        sigma = interpolate(i.double(), levels, self.log_sigmas).exp()[:, None]
        abar = 1 / (1 + sigma**2)
        x_m = x_m.double()
        eps = eps_at(self.mix, x_m / abar.sqrt(), sigma.reshape(-1))
        x0 = (x_m - (1 - abar).sqrt() * eps) / abar.sqrt()
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "sample":
            return x0
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def times_inside(sde, lo, hi, n=64, seed=0):
    """Random times whose σ(t) lies strictly inside [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    log_sigma = math.log(lo) + (0.02 + 0.96 * u) * (math.log(hi) - math.log(lo))
    return sde.time_at_sigma(log_sigma.exp(), 1e-6)


def points(n=64, seed=1):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", sorted(SDES))
def test_discrete_model_gives_the_exact_score_under_every_process(name, prediction, schedule):
    sde, mix = SDES[name], mixture()
    abar = alphas_cumprod(1000, 1e-4, 0.02, schedule) if schedule != "scaled_linear" else \
        alphas_cumprod(1000, 0.00085, 0.012, schedule)
    model = DiscreteModel(FakeDiscrete(mix, abar, prediction), sde, abar, prediction, shape=(3,))
    sig = model.sigmas
    t = times_inside(sde, float(sig[0]), min(float(sig[-1]), float(sde.sigma(torch.tensor(sde.T)))))
    x = sde.a(t)[:, None] * points()
    exact = MixtureScore(sde, mix)(x, t)
    torch.testing.assert_close(model(x, t), exact, rtol=1e-6, atol=1e-6)
    eps, x0 = model.predict(x, t)
    torch.testing.assert_close(x0, sde.x0_from_score(x, exact, t), rtol=1e-6, atol=1e-6)


def test_discrete_model_at_its_own_levels_passes_the_integer_level_and_returns_the_output():
    """At t with σ(t) = σ_i the network gets level i exactly and the input √ᾱ_i (x/a); its ε is ε̂ as it is."""
    sde, abar = VPSDE(), alphas_cumprod(1000)
    outputs = torch.randn(5, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    seen = {}

    def net(x_m, i):
        seen.update(x=x_m, i=i)
        return outputs

    model = DiscreteModel(net, sde, abar, "epsilon", shape=(3,))
    levels = torch.tensor([0, 1, 250, 950, 500])
    t = sde.time_at_sigma(model.sigmas[levels], 1e-6).float()
    x = torch.randn(5, 3, dtype=torch.float32)
    assert torch.equal(model.eps(x, t), outputs)
    assert torch.equal(seen["i"], levels.float())
    torch.testing.assert_close(seen["x"], x, rtol=2e-6, atol=1e-6)


def test_schedules_are_diffusers_formulas():
    lin = betas_for_schedule(1000, 1e-4, 0.02, "linear")
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02) and lin.dtype == torch.float32
    scaled = betas_for_schedule(10, 0.01, 0.04, "scaled_linear")
    torch.testing.assert_close(scaled.sqrt(), torch.linspace(0.1, 0.2, 10))
    cos = betas_for_schedule(1000, beta_schedule="squaredcos_cap_v2")
    abar = torch.cumprod(1 - cos.double(), 0)
    f = [math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 for u in (0.0, 0.5)]
    assert abar[499].item() == pytest.approx(f[1] / f[0], rel=1e-5)
    with pytest.raises(ConfigError, match="beta_schedule='quadratic'"):
        betas_for_schedule(beta_schedule="quadratic")


@pytest.mark.parametrize("name", sorted(SDES))
def test_denoiser_velocity_and_score_networks_give_the_exact_score(name):
    sde, mix = SDES[name], mixture()
    t = times_inside(sde, 0.02, min(40.0, float(sde.sigma(torch.tensor(sde.T)))))
    x = sde.a(t)[:, None] * points()
    exact = MixtureScore(sde, mix)(x, t)

    def denoiser(y, sigma):
        return y + sigma[:, None] ** 2 * mix.score(y, torch.ones_like(sigma), sigma)

    def data_at_1(x_tau, tau):
        sigma = (1 - tau) / tau
        y = x_tau / tau[:, None]
        eps = eps_at(mix, y, sigma)
        x1 = y - sigma[:, None] * eps
        return x1 - eps

    def noise_at_1(x_tau, tau):
        sigma = tau / (1 - tau)
        y = x_tau / (1 - tau[:, None])
        eps = eps_at(mix, y, sigma)
        return eps - (y - sigma[:, None] * eps)

    def scaled_score(y, sigma):
        return sigma[:, None] * mix.score(y, torch.ones_like(sigma), sigma)

    wrapped = [Denoiser(denoiser, sde), VelocityModel(data_at_1, sde, "data_at_1"),
               VelocityModel(noise_at_1, sde, "noise_at_1"), ScoreNetwork(scaled_score, sde),
               ScoreNetwork(lambda y, sigma: scaled_score(y, sigma) / sigma[:, None], sde, divide_by_sigma=False)]
    for model in wrapped:
        torch.testing.assert_close(model(x, t), exact, rtol=1e-6, atol=1e-6, msg=lambda m: f"{model}: {m}")


def test_bad_tables_and_options_are_one_line():
    with pytest.raises(ConfigError, match="prediction_type='flow'"):
        DiscreteModel(lambda x, i: x, VPSDE(), alphas_cumprod(10), "flow")
    with pytest.raises(ConfigError, match="alphas_cumprod"):
        DiscreteModel(lambda x, i: x, VPSDE(), torch.tensor([0.5, 0.9]))
    with pytest.raises(ConfigError, match="convention='up'"):
        VelocityModel(lambda x, t: x, VPSDE(), "up")
