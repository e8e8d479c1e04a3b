"""Networks trained elsewhere, seen through one continuous time: each wrapper maps our process and time t to the
network's own noise level and input scale, and reads its output back as a score (theory.md, "Networks trained
elsewhere").

Under any process x_t = a x_0 + s z the scaled variable x/a = x_0 + σ z, σ = s/a, is where every convention meets:

    DiscreteModel   eps(x_i, i) on an ᾱ table: x_i = √ᾱ_i x_0 + √(1 − ᾱ_i) z, level i where (1 − ᾱ_i)/ᾱ_i = σ²
    Denoiser        D(y, σ) ≈ E[x_0 | y], y = x_0 + σ z (k-diffusion, EDM)
    VelocityModel   v(x_τ, τ) of flow matching on the straight path between data and noise
    ScoreNetwork    NCSN++: net(y, σ) = σ ∇log p_σ(y) (or the score itself), y = x_0 + σ z

Each gives ε̂ = E[z | x_t], shared by all of them; the score is −ε̂/s and x̂_0 = (x − s ε̂)/a.
"""
import math

import numpy as np
import torch
from torch import nn

from sde import expand
from sde.errors import ConfigError, check_choice, check_int

from .embedding import batch_times, check_labels

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
SNAP = 1e-4


def betas_for_schedule(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"):
    """The β_i, i = 0…N−1, of a discrete schedule, in float32 as diffusers' schedulers compute them:

        linear             β_i = β_start + i/(N−1) (β_end − β_start)
        scaled_linear      √β_i = √β_start + i/(N−1) (√β_end − √β_start)
        squaredcos_cap_v2  β_i = min(1 − ᾱ((i+1)/N) / ᾱ(i/N), 0.999),  ᾱ(u) = cos²((u + 0.008)/1.008 · π/2)
    """
    n = check_int("num_train_timesteps", num_train_timesteps, 2)
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if beta_schedule == "linear":
        return torch.linspace(float(beta_start), float(beta_end), n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(float(beta_start) ** 0.5, float(beta_end) ** 0.5, n, dtype=torch.float32) ** 2

    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                        dtype=torch.float32)


def alphas_cumprod(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   trained_betas=None):
    """ᾱ_i = ∏_{j≤i} (1 − β_j) in float32 (as diffusers keeps it), from the schedule or from ``trained_betas``."""
    betas = (torch.tensor(np.asarray(trained_betas, dtype=np.float32)) if trained_betas is not None
             else betas_for_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule))
    return torch.cumprod(1.0 - betas, dim=0)


def interpolate(x, xp, fp):
    """Piecewise-linear f(x) through the points (xp, fp), xp increasing, clamped to its ends (numpy's interp)."""
    x = x.clamp(xp[0], xp[-1])
    right = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    x0, x1 = xp[right - 1], xp[right]
    return fp[right - 1] + (x - x0) / (x1 - x0) * (fp[right] - fp[right - 1])


class PretrainedScore(nn.Module):
    """A network trained elsewhere as a score model of ``sde``: the interface of models.ScoreModel (forward →
    score, predict → (ε̂, x̂_0), denoise, eps; .sde, .shape, .num_classes). A subclass states
    ``noise(x, t, y) -> ε̂`` in float64-safe coefficients; every other reading follows from the kernel:

        score = −ε̂ / s,   x̂_0 = (x − s ε̂) / a.

    ``shape`` is the event shape the network takes; ``num_classes`` its classes (None: unconditional)."""

    def __init__(self, net, sde, shape=(), num_classes=None):
        super().__init__()
        self.net, self.sde = net, sde
        self.shape = tuple(int(n) for n in shape) or tuple(getattr(net, "shape", ()))
        self.num_classes = num_classes if num_classes is not None else getattr(net, "num_classes", None)

    def levels(self, x, t):
        """a(t), s(t) and σ(t) = s/a for per-sample times, in float64, shaped to broadcast against x."""
        t = batch_times(t, x).double()
        a, s = self.sde.a(t), self.sde.s(t)
        return expand(a, x).double(), expand(s, x).double(), s / a

    def call(self, x, level, y):
        """The network at its own input x and level, with labels y where it is conditional."""
        if y is None:
            return self.net(x, level)
        return self.net(x, level, check_labels(y, self.num_classes, x))

    def noise(self, x, t, y=None):
        raise NotImplementedError

    def predict(self, x, t, y=None):
        """(ε̂, x̂_0) from one network evaluation."""
        eps = self.noise(x, t, y)
        a, s, _ = self.levels(x, t)
        return eps, ((x - s * eps) / a).to(x.dtype)

    def forward(self, x, t, y=None):
        """score = −ε̂ / s."""
        _, s, _ = self.levels(x, t)
        return (-self.noise(x, t, y) / s).to(x.dtype)

    def denoise(self, x, t, y=None):
        """x̂_0 = (x − s ε̂) / a."""
        return self.predict(x, t, y)[1]

    def eps(self, x, t, y=None):
        """ε̂ = E[z | x_t]."""
        return self.noise(x, t, y)


class DiscreteModel(PretrainedScore):
    """A discrete-time network net(x_i, i[, y]) trained on x_i = √ᾱ_i x_0 + √(1 − ᾱ_i) z, i = 0…N−1 (DDPM, DDIM).

    At our time t, σ = s(t)/a(t); the model's level is the fractional index i(σ) found by interpolating linearly
    between neighbouring levels in log σ_i, σ_i² = (1 − ᾱ_i)/ᾱ_i (exact at the model's own levels: an index within
    1e-4 of an integer is that integer, the rounding of a float32 time), clamped to [0, N−1]; at that level
    ᾱ(σ) = 1/(1 + σ²), and the model's input is

        x_m = x · √ᾱ(σ) / a = x / √(a² + s²).

    Its output is read by ``prediction``: 'epsilon' ε̂ = out; 'v_prediction' v = √ᾱ ε − √(1 − ᾱ) x_0, so
    ε̂ = √(1 − ᾱ) x_m + √ᾱ out; 'sample' x̂_0 = out, so ε̂ = (x_m − √ᾱ out)/√(1 − ᾱ). The ε of the model's variable is
    ours (both are the z of x/a = x_0 + σ z).
    """

    def __init__(self, net, sde, alphas_cumprod, prediction="epsilon", shape=(), num_classes=None):
        super().__init__(net, sde, shape, num_classes)
        self.prediction = check_choice("prediction_type", prediction, PREDICTIONS)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        if len(abar) < 2 or not ((abar > 0) & (abar < 1)).all() or not (abar[1:] < abar[:-1]).all():
            raise ConfigError("alphas_cumprod must be at least two values in (0, 1), decreasing", "alphas_cumprod")
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - abar) / abar), persistent=False)

    @property
    def sigmas(self):
        """σ_i = √((1 − ᾱ_i)/ᾱ_i) of the model's levels."""
        return self.log_sigmas.exp()

    def index(self, sigma):
        """The fractional index i(σ): log σ interpolated between the levels' log σ_i, snapped to an integer within
        1e-4 of it."""
        levels = torch.arange(len(self.log_sigmas), dtype=torch.float64, device=self.log_sigmas.device)
        i = interpolate(torch.log(sigma).to(self.log_sigmas.device), self.log_sigmas, levels)
        return torch.where((i - i.round()).abs() < SNAP, i.round(), i)

    def noise(self, x, t, y=None):
        a, s, sigma = self.levels(x, t)
        abar = 1 / (1 + expand(sigma, x) ** 2)
        x_m = (x / torch.sqrt(a**2 + s**2)).to(x.dtype)
        level = self.index(sigma).to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        out = self.call(x_m, level, y).double()
        if self.prediction == "epsilon":
            eps = out
        elif self.prediction == "v_prediction":
            eps = torch.sqrt(1 - abar) * x_m + torch.sqrt(abar) * out
        else:
            eps = (x_m - torch.sqrt(abar) * out) / torch.sqrt(1 - abar)
        return eps.to(x.dtype)

    def extra_repr(self):
        return f"sde={self.sde!r}, levels={len(self.log_sigmas)}, prediction={self.prediction!r}"


class Denoiser(PretrainedScore):
    """A denoiser net(y, σ[, c]) ≈ E[x_0 | y], y = x_0 + σ z (k-diffusion, EDM's D): x̂_0 = D(x/a, s/a),
    ε̂ = (x − a x̂_0)/s."""

    def noise(self, x, t, y=None):
        a, s, sigma = self.levels(x, t)
        x0 = self.call((x / a).to(x.dtype), sigma.to(x.dtype), y).double()
        return ((x - a * x0) / s).to(x.dtype)


CONVENTIONS = ("data_at_1", "noise_at_1")


class VelocityModel(PretrainedScore):
    """A flow-matching velocity net(x_τ, τ[, c]) = E[dx_τ/dτ | x_τ] on a straight path, in one of two conventions:

        'data_at_1'   x_τ = τ x_1 + (1 − τ) x_0, x_1 data, x_0 noise (torchcfm, Meta's flow_matching): v = x_1 − x_0;
                      τ = 1/(1 + σ), x_τ = x τ / a,  ε̂ = x_τ − τ v
        'noise_at_1'  x_τ = (1 − τ) x_0 + τ x_1, x_0 data, x_1 noise (rectified flow, our RectifiedFlow): v = x_1 − x_0;
                      τ = σ/(1 + σ), x_τ = x (1 − τ) / a,  ε̂ = x_τ + (1 − τ) v
    """

    def __init__(self, net, sde, convention="data_at_1", shape=(), num_classes=None):
        super().__init__(net, sde, shape, num_classes)
        self.convention = check_choice("convention", convention, CONVENTIONS)

    def noise(self, x, t, y=None):
        a, _, sigma = self.levels(x, t)
        sigma = expand(sigma, x)
        if self.convention == "data_at_1":
            tau = 1 / (1 + sigma)
            x_m = x * tau / a
            v = self.call(x_m.to(x.dtype), tau.reshape(-1).to(x.dtype), y).double()
            return (x_m - tau * v).to(x.dtype)
        tau = sigma / (1 + sigma)
        x_m = x * (1 - tau) / a
        v = self.call(x_m.to(x.dtype), tau.reshape(-1).to(x.dtype), y).double()
        return (x_m + (1 - tau) * v).to(x.dtype)

    def extra_repr(self):
        return f"sde={self.sde!r}, convention={self.convention!r}"


class ScoreNetwork(PretrainedScore):
    """A variance-exploding score network (score_sde's NCSN++) net(y, σ[, c]) at y = x_0 + σ z: its score
    ∇log p_σ(y) = net(y, σ)/σ with ``divide_by_sigma`` (score_sde's scale_by_sigma, and diffusers' pipeline for a
    U-Net that does not divide itself), else net(y, σ) (a diffusers UNet2DModel with Fourier time embedding divides
    its output by σ inside). Then ε̂ = −σ ∇log p_σ(x/a)."""

    def __init__(self, net, sde, divide_by_sigma=True, shape=(), num_classes=None):
        super().__init__(net, sde, shape, num_classes)
        self.divide_by_sigma = bool(divide_by_sigma)

    def noise(self, x, t, y=None):
        a, _, sigma = self.levels(x, t)
        out = self.call((x / a).to(x.dtype), sigma.to(x.dtype), y).double()
        sigma = expand(sigma, x)
        score = out / sigma if self.divide_by_sigma else out
        return (-sigma * score).to(x.dtype)
