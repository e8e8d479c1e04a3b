"""Data distributions. Each gives ``sample(n, generator)``, its event ``shape`` and how it is quantized."""
import math

import torch


def _as_float_tensor(name, value, min_ndim, max_ndim):
    value = _to_nested(value)
    try:
        x = value.double() if torch.is_tensor(value) else torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"data.{name}={_short(value)} is not a numeric array of equal-length rows") from None
    if not min_ndim <= x.ndim <= max_ndim:
        what = "a list of numbers" if max_ndim == 1 else "one row per component, shape (K, D)"
        raise ValueError(f"data.{name}={_short(value)} must be {what} (got rank {x.ndim})")
    if not torch.isfinite(x).all():
        raise ValueError(f"data.{name}={_short(value)} contains a non-finite value")
    return x


def _short(value):
    text = str(value.tolist() if torch.is_tensor(value) else value)
    return text if len(text) < 80 else text[:77] + "..."


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, σ_k² I), with means (K, *shape), stds (K,) and weights (K,).

    Under a linear SDE its marginal is again a mixture:  p_t = Σ_k w_k N(a μ_k, (a² σ_k² + s²) I).
    """

    levels = None  # continuous data: no dequantization, bits/dim straight from nats
    range = None

    def __init__(self, means, stds, weights=None):
        means = _as_float_tensor("means", means, 2, 8)
        k = means.shape[0]
        stds = _as_float_tensor("stds", stds, 0, 1).reshape(-1)
        weights = torch.ones(k, dtype=torch.float64) if weights is None else _as_float_tensor("weights", weights, 1, 1)
        if stds.numel() == 1 and k > 1:
            stds = stds.expand(k).clone()
        if stds.numel() != k:
            raise ValueError(f"data.stds has {stds.numel()} entries but data.means has {k} components")
        if weights.numel() != k:
            raise ValueError(f"data.weights has {weights.numel()} entries but data.means has {k} components")
        if (stds <= 0).any():
            bad = stds[stds <= 0][0].item()
            raise ValueError(f"data.stds contains {bad:g}: every std must be > 0")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"data.weights={_short(weights.tolist())} must be >= 0 with a positive sum")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @property
    def shape(self):
        return tuple(self.means.shape[1:])

    @property
    def dim(self):
        return math.prod(self.shape)

    def sample(self, n, generator=None, device=None, dtype=torch.float32, return_labels=False):
        """Draw n points; the randomness comes from ``generator`` alone (CPU draws, then moved)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        x = self.means[labels] + self.stds[labels].reshape(-1, *([1] * len(self.shape))) * z
        x = x.to(device=device, dtype=dtype)
        return (x, labels.to(device)) if return_labels else x

    def test(self, n, generator=None, device=None, dtype=torch.float32):
        """Held-out points: fresh draws (pass a generator other than the training one)."""
        return self.sample(n, generator, device, dtype)

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


def random_mixture(components=8, dim=64, spread=3.0, std_min=0.3, std_max=1.0, seed=0):
    """A reproducible mixture in ``dim`` dimensions: means ~ N(0, spread² I), stds ~ U(std_min, std_max),
    weights ∝ 1, 2, ..., K (unequal on purpose)."""
    if int(components) < 1 or int(dim) < 1:
        raise ValueError(f"data.components={components!r} and data.dim={dim!r} must both be >= 1")
    if not 0 < std_min <= std_max:
        raise ValueError(f"data.std_min={std_min!r}, data.std_max={std_max!r}: expected 0 < std_min <= std_max")
    g = torch.Generator().manual_seed(int(seed))
    means = spread * torch.randn(int(components), int(dim), generator=g, dtype=torch.float64)
    stds = std_min + (std_max - std_min) * torch.rand(int(components), generator=g, dtype=torch.float64)
    weights = torch.arange(1, int(components) + 1, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)
