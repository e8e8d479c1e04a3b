"""The built-in processes: each states its coefficients and, where known, its closed-form path."""
import math
import warnings

import torch

from .base import SDE
from .errors import ConfigError, ConfigWarning, check_number


def _horizon(T):
    """A repr's T, where it is not the usual T = 1 (so that processes that differ print differently)."""
    return "" if T == 1 else f", T={T}"


class VPSDE(SDE):
    """Variance preserving (DDPM limit): f = −β/2, g² = β, β(t) = β_min + t (β_max − β_min)."""

    def __init__(self, beta_min=0.1, beta_max=20.0, T=1.0):
        self.beta_min = check_number("beta_min", beta_min)
        self.beta_max = check_number("beta_max", beta_max)
        self.T = check_number("T", T)
        if self.beta_max < self.beta_min:
            warnings.warn(ConfigWarning(f"beta_max={beta_max!r} is below beta_min={beta_min!r}: the noise rate "
                                        "falls over time (swap them for the usual schedule)", ("beta_max", "beta_min")))
        super().__init__()

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t):
        """∫_0^t β."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def f(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))

    def a(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def s(self, t):
        return torch.sqrt(-torch.expm1(-self.int_beta(t)))

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}{_horizon(self.T)})"


class SubVPSDE(VPSDE):
    """Sub-VP: f = −β/2, g² = β (1 − exp(−2∫β)), s = 1 − a²."""

    def g(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.int_beta(t)))

    def s(self, t):
        return -torch.expm1(-self.int_beta(t))

    def __repr__(self):
        return f"SubVPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}{_horizon(self.T)})"


class VESDE(SDE):
    """Variance exploding (SMLD): f = 0, g² = dσ²/dt, σ(t) = σ_min (σ_max/σ_min)^t, s² = σ² − σ_min²."""

    sampling_eps = 1e-5

    def __init__(self, sigma_min=0.01, sigma_max=50.0, T=1.0):
        self.sigma_min = check_number("sigma_min", sigma_min)
        self.sigma_max = check_number("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ConfigError(f"sigma_max={sigma_max!r} must exceed sigma_min={sigma_min!r}", ("sigma_max", "sigma_min"))
        self.T = check_number("T", T)
        super().__init__()

    def noise(self, t):
        """σ(t) = σ_min (σ_max / σ_min)^(t / T)."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def f(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return self.noise(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min) / self.T)

    def a(self, t):
        return torch.ones_like(t)

    def s(self, t):
        return self.sigma_min * torch.sqrt(torch.expm1(2 * math.log(self.sigma_max / self.sigma_min) * t / self.T))

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}{_horizon(self.T)})"


class CosineVPSDE(SDE):
    """Cosine VP (improved DDPM): a² = ᾱ(t) = cos²(θ(t)) / cos²(θ(0)), θ(t) = (t + k)/(1 + k) · π/2, s² = 1 − a².

    T stops short of 1, where a vanishes and f diverges (T = 0.9946 keeps a(T) ≈ 0.0084).
    """

    def __init__(self, k=0.008, T=0.9946):
        self.k = check_number("k", k)
        self.T = check_number("T", T, maximum=1.0, strict_max=True)
        super().__init__()

    def theta(self, t):
        return (t + self.k) / (1 + self.k) * (math.pi / 2)

    def f(self, t):
        """d log a / dt = −tan θ · θ'."""
        return -torch.tan(self.theta(t)) * (math.pi / 2) / (1 + self.k)

    def g(self, t):
        """g² = d(s²)/dt − 2 f s² = −2 f (since d(a²)/dt = 2 f a²)."""
        return torch.sqrt(-2 * self.f(t))

    def a(self, t):
        return torch.cos(self.theta(t)) / math.cos(self.theta(0.0))

    def s(self, t):
        return torch.sqrt((1 - self.a(t) ** 2).clamp_min(0))

    def __repr__(self):
        return f"CosineVPSDE(k={self.k}, T={self.T})"


class RectifiedFlow(SDE):
    """Rectified-flow / flow-matching path a = 1 − t, s = t:  f = −1/(1 − t), g² = 2t/(1 − t).

    T stops short of 1, where f and g diverge.
    """

    def __init__(self, T=0.999):
        self.T = check_number("T", T, maximum=1.0, strict_max=True)
        super().__init__()

    def f(self, t):
        return -1.0 / (1.0 - t)

    def g(self, t):
        return torch.sqrt(2 * t / (1.0 - t))

    def a(self, t):
        return 1.0 - t

    def s(self, t):
        return t

    def __repr__(self):
        return f"RectifiedFlow(T={self.T})"
