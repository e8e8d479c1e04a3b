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


def responsibilities(logp):
    """r_k = exp(l_k − max_j l_j) / Σ_k exp(l_k − max_j l_j) over the last axis: softmax, written out because
    torch's softmax over a short last axis is several times slower (rows of −inf only give NaN, as softmax does)."""
    e = (logp - logp.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def squared_distances(x, means, a):
    """‖x_n − a_n μ_k‖² for x (N, D), means (K, D), a (N or 1, 1): shape (N, K). From D = 8 on, as
    ‖x‖² − 2 a x·μ + a² ‖μ‖² in float64 (exact inputs, cancellation at 1e-16 ‖x‖², where float32 differences err
    at 1e-7 ‖x − aμ‖²), a matrix product instead of an (N, K, D) array of differences."""
    if x.shape[1] < 8:
        return (x[:, None, :] - a[:, :, None] * means[None]).pow(2).sum(-1)
    x64, m64, a64 = x.double(), means.double(), a.double()
    d2 = x64.pow(2).sum(1, keepdim=True) - 2 * a64 * (x64 @ m64.T) + a64**2 * m64.pow(2).sum(1)
    return d2.clamp_min(0).to(x.dtype)


class GaussianMixture(DataSet):
    """p(x) = Σ_k w_k N(x; μ_k, σ_k² I), with means (K, *shape), stds (K,) and weights (K,); a point's label
    is its component's class: ``classes[k]`` (default: each component its own class, ``classes[k] = k``).

    Under a linear SDE its marginal is again a mixture:  p_t = Σ_k w_k N(a μ_k, (a² σ_k² + s²) I), and so is
    each class-conditional, p_t(x | c) = Σ_{k: classes[k] = c} w_k N(a μ_k, (a² σ_k² + s²) I) / P(c).
    """

    def __init__(self, means, stds, weights=None, classes=None):
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
        self.classes = torch.arange(k) if classes is None else _class_map(_to_nested(classes), k)

    @property
    def shape(self):
        return tuple(self.means.shape[1:])

    @property
    def num_classes(self):
        return int(self.classes.max()) + 1

    @property
    def class_weights(self):
        """P(c) = Σ_{k: classes[k] = c} w_k."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.weights)

    def draw(self, n, generator):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k].reshape(-1, *([1] * len(self.shape))) * z, self.classes[k]

    def with_class_shares(self, shares):
        """The same classes with class c drawn in proportion ``shares[c]``: weights w_k shares[c_k] / P(c_k)."""
        shares = torch.as_tensor(shares, dtype=torch.float64)
        scale = shares / shares.sum() / self.class_weights
        return GaussianMixture(self.means, self.stds, self.weights * scale[self.classes], self.classes)

    def given(self, label):
        """The class-conditional p(x | c) as a GaussianMixture of class c's components."""
        keep = self.classes == int(label)
        return GaussianMixture(self.means[keep], self.stds[keep], self.weights[keep])

    def _restrict(self, logp, labels):
        """Component log-probabilities (N, K) with the components outside each point's class set to −∞;
        label −1 (or None) keeps every component."""
        if labels is None:
            return logp
        labels = torch.as_tensor(labels, device=logp.device).reshape(-1)
        mine = self.classes.to(logp.device)[None, :] == labels[:, None]
        return torch.where(mine | (labels[:, None] < 0), logp, torch.full_like(logp, -math.inf))

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
        d = x.shape[1]
        logn = -0.5 * squared_distances(x, means, a[:, :, 0]) / var - 0.5 * d * torch.log(2 * math.pi * var)
        return torch.log(self.weights.to(x)) + logn

    def log_prob(self, x, a=1.0, s=0.0, labels=None):
        """log p(x), or of the perturbed mixture log p_t(x) given a = a(t), s = s(t); with ``labels`` (N,)
        the class-conditional log p_t(x | c) = log Σ_{k ∈ c} w_k N(...) − log P(c) (label −1: unconditional)."""
        logp = torch.logsumexp(self._restrict(self.component_log_prob(x, a, s), labels), dim=1)
        if labels is None:
            return logp
        labels = torch.as_tensor(labels, device=logp.device).reshape(-1)
        prior = torch.log(self.class_weights.to(logp))[labels.clamp_min(0)]
        return logp - torch.where(labels < 0, torch.zeros_like(prior), prior)

    def score(self, x, a=1.0, s=0.0, labels=None):
        """∇_x log p_t(x) = Σ_k r_k(x) (a μ_k − x) / (a² σ_k² + s²),  r_k the posterior responsibilities;
        with ``labels`` the class-conditional score, r_k renormalised over each point's class (−1: all)."""
        flat = x.reshape(x.shape[0], -1)
        r = responsibilities(self._restrict(self.component_log_prob(flat, a, s), labels))  # (N, K)
        means = self.means.reshape(self.means.shape[0], -1).to(flat)
        a = torch.as_tensor(a, dtype=flat.dtype, device=flat.device).reshape(-1, 1)
        s = torch.as_tensor(s, dtype=flat.dtype, device=flat.device).reshape(-1, 1)
        var = a**2 * self.stds.to(flat) ** 2 + s**2  # (N or 1, K)
        weighted = r / var
        score = a * (weighted @ means) - weighted.sum(1, keepdim=True) * flat
        return score.reshape(x.shape)

    def missing_given_observed(self, x, known):
        """The exact conditional of the unknown coordinates given the known ones, point by point: with isotropic
        components the coordinates are independent given the component, so

            p(x_u | x_o) = Σ_k r_k(x_o) N(x_u; μ_k,u, σ_k² I),   r_k(x_o) ∝ w_k N(x_o; μ_k,o, σ_k² I).

        ``x`` (N, *shape) holds the observed values where ``known`` (a boolean mask of the event shape, or
        (N, *shape)) is true. Returns a function log p(x_u | x_o) of completed points (N, *shape) (reading only
        their unknown coordinates), the posterior weights r (N, K), and a sampler draw(generator) -> completed
        points (known coordinates kept)."""
        n = x.shape[0]
        known = torch.as_tensor(known, dtype=torch.bool).expand(x.shape).reshape(n, -1)
        flat = x.double().reshape(n, -1)
        means = self.means.reshape(len(self.weights), -1)
        var = self.stds**2
        diff2 = ((flat[:, None, :] - means[None]) ** 2 * known[:, None, :]).sum(-1)
        d_known = known.sum(1, keepdim=True).double()
        logr = torch.log(self.weights)[None] - 0.5 * diff2 / var[None] - 0.5 * d_known * torch.log(2 * math.pi * var)[None]
        r = torch.softmax(logr, dim=1)

        def log_prob(completed):
            c = completed.double().reshape(n, -1)
            d2 = ((c[:, None, :] - means[None]) ** 2 * ~known[:, None, :]).sum(-1)
            d_unknown = (~known).sum(1, keepdim=True).double()
            logn = -0.5 * d2 / var[None] - 0.5 * d_unknown * torch.log(2 * math.pi * var)[None]
            return torch.logsumexp(torch.log(r.clamp_min(1e-300)) + logn, dim=1)

        def draw(generator=None):
            k = torch.multinomial(r, 1, generator=generator).reshape(-1)
            z = torch.randn(flat.shape, generator=generator, dtype=torch.float64)
            sample = means[k] + self.stds[k, None] * z
            return torch.where(known, flat, sample).reshape(x.shape)

        return log_prob, r, draw

    def assign(self, x, a=1.0, s=0.0):
        """The most probable component of each point."""
        return self.component_log_prob(x, a, s).argmax(1)

    def __repr__(self):
        return f"GaussianMixture(K={len(self.weights)}, shape={self.shape})"


def _class_map(classes, k):
    """classes[k]: the class of component k, integers 0..C−1 that use every class."""
    try:
        mapping = torch.as_tensor(classes)
    except (TypeError, ValueError, RuntimeError):
        mapping = None
    if (mapping is None or mapping.ndim != 1 or len(mapping) != k or mapping.is_floating_point()
            or mapping.dtype == torch.bool or (mapping < 0).any()
            or set(mapping.tolist()) != set(range(int(mapping.max()) + 1))):
        raise ConfigError(f"classes={short(classes)} is invalid: expected one class per component ({k} integers), "
                          "using every class 0..C-1", "classes")
    return mapping.long()


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
