"""Gaussian mixtures: exact density, score, marginals under every linear SDE, and component labels."""
import math

import torch

from sde.errors import ConfigError, check_int, check_number, short

from .base import DataSet


def _as_float_tensor(name, value, min_ndim, max_ndim):
    value = _to_nested(value)
    try:
        x = value.double() if torch.is_tensor(value) else torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{name}={short(value)} is not a numeric array of equal-length rows", name) from None
    if not min_ndim <= x.ndim <= max_ndim:
        what = "a list of numbers" if max_ndim == 1 else "one row per component, shape (K, D)"
        raise ConfigError(f"{name}={short(value)} must be {what} (got rank {x.ndim})", name)
    if not torch.isfinite(x).all():
        raise ConfigError(f"{name}={short(value)} contains a non-finite value", name)
    return x


class GaussianMixture(DataSet):
    """p(x) = Σ_k w_k N(x; μ_k, σ_k² I), with means (K, *shape), stds (K,) and weights (K,); a point's label
    is its component.

    Under a linear SDE its marginal is again a mixture:  p_t = Σ_k w_k N(a μ_k, (a² σ_k² + s²) I).
    """

    def __init__(self, means, stds, weights=None):
        means = _as_float_tensor("means", means, 2, 8)
        k = means.shape[0]
        stds = _as_float_tensor("stds", stds, 0, 1).reshape(-1)
        weights = torch.ones(k, dtype=torch.float64) if weights is None else _as_float_tensor("weights", weights, 1, 1)
        if stds.numel() == 1 and k > 1:
            stds = stds.expand(k).clone()
        if stds.numel() != k:
            raise ConfigError(f"stds has {stds.numel()} entries but means has {k} components", ("stds", "means"))
        if weights.numel() != k:
            raise ConfigError(f"weights has {weights.numel()} entries but means has {k} components", ("weights", "means"))
        if (stds <= 0).any():
            bad = stds[stds <= 0][0].item()
            raise ConfigError(f"stds contains {bad:g}: every std must be > 0", "stds")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ConfigError(f"weights={short(weights.tolist())} must be >= 0 with a positive sum", "weights")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @property
    def shape(self):
        return tuple(self.means.shape[1:])

    @property
    def num_classes(self):
        return len(self.weights)

    def draw(self, n, generator):
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[labels] + self.stds[labels].reshape(-1, *([1] * len(self.shape))) * z, labels

    def perturbed(self, a, s):
        """The mixture of x_t = a x_0 + s z for scalars a, s."""
        return GaussianMixture(a * self.means, torch.sqrt(a**2 * self.stds**2 + s**2), self.weights)

    def component_log_prob(self, x, a=1.0, s=0.0):
        """log w_k + log N(x; a μ_k, (a² σ_k² + s²) I) for each component: shape (N, K).

        a and s are scalars or per-sample tensors of shape (N,).
        """
        x = x.reshape(x.shape[0], -1)
        means = self.means.reshape(self.means.shape[0], -1).to(x)
        a = torch.as_tensor(a, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1, 1)
        var = a[:, :, 0] ** 2 * self.stds.to(x) ** 2 + s**2  # (N or 1, K)
        diff = x[:, None, :] - a * means[None]  # (N, K, D)
        d = x.shape[1]
        logn = -0.5 * diff.pow(2).sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)
        return torch.log(self.weights.to(x)) + logn

    def log_prob(self, x, a=1.0, s=0.0):
        """log p(x), or of the perturbed mixture log p_t(x) given a = a(t), s = s(t)."""
        return torch.logsumexp(self.component_log_prob(x, a, s), dim=1)

    def score(self, x, a=1.0, s=0.0):
        """∇_x log p_t(x) = Σ_k r_k(x) (a μ_k − x) / (a² σ_k² + s²),  r_k the posterior responsibilities."""
        flat = x.reshape(x.shape[0], -1)
        r = torch.softmax(self.component_log_prob(flat, a, s), dim=1)  # (N, K)
        means = self.means.reshape(self.means.shape[0], -1).to(flat)
        a = torch.as_tensor(a, dtype=flat.dtype, device=flat.device).reshape(-1, 1)
        s = torch.as_tensor(s, dtype=flat.dtype, device=flat.device).reshape(-1, 1)
        var = a**2 * self.stds.to(flat) ** 2 + s**2  # (N or 1, K)
        weighted = r / var
        score = a * (weighted @ means) - weighted.sum(1, keepdim=True) * flat
        return score.reshape(x.shape)

    def assign(self, x, a=1.0, s=0.0):
        """The most probable component of each point."""
        return self.component_log_prob(x, a, s).argmax(1)

    def __repr__(self):
        return f"GaussianMixture(K={len(self.weights)}, shape={self.shape})"


def _to_nested(value):
    """Turn OmegaConf list nodes into plain Python lists."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


class RandomMixture(GaussianMixture):
    """A reproducible mixture in ``dim`` dimensions: means ~ N(0, spread² I), stds ~ U(std_min, std_max),
    weights ∝ 1, 2, ..., K (unequal on purpose)."""

    def __init__(self, components=8, dim=64, spread=3.0, std_min=0.3, std_max=1.0, seed=0):
        components, dim = check_int("components", components), check_int("dim", dim)
        std_min = check_number("std_min", std_min)
        std_max = check_number("std_max", std_max, minimum=std_min, strict=False)
        g = torch.Generator().manual_seed(int(seed))
        means = spread * torch.randn(components, dim, generator=g, dtype=torch.float64)
        stds = std_min + (std_max - std_min) * torch.rand(components, generator=g, dtype=torch.float64)
        super().__init__(means, stds, torch.arange(1, components + 1, dtype=torch.float64))
