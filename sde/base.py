"""The abstract linear SDE  dx = f(t) x dt + g(t) dw  on t in [0, T]."""
import math

import numpy as np
import torch

from .errors import ConfigError

NEWTON_STEPS = 4


def expand(t, x):
    """Reshape per-sample times t of shape (N,) to broadcast against x of shape (N, ...)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


class SDE:
    """A linear Itô SDE  dx = f(t) x dt + g(t) dw  with Gaussian kernel  x_t = a(t) x_0 + s(t) z.

    A subclass states either the coefficients ``f(t)`` and ``g(t)`` or the path ``a(t)`` and
    ``s(t)`` (or all four, in closed form). The missing pair is derived:

        from (f, g):  a = exp(∫_0^t f),   s² = a² ∫_0^t g² / a²     (numerically, once, then interpolated)
        from (a, s):  f = d log a / dt,   g² = d(s²)/dt − 2 f s²     (by automatic differentiation)

    Every method takes a tensor t of any shape and returns a tensor of the same shape.
    """

    T = 1.0
    sampling_eps = 1e-3
    grid_size = 8193

    def __init__(self):
        cls = type(self)
        has_fg = cls.f is not SDE.f and cls.g is not SDE.g
        has_as = cls.a is not SDE.a and cls.s is not SDE.s
        if not (has_fg or has_as):
            raise TypeError(f"{cls.__name__} must define f(t) and g(t), or a(t) and s(t)")
        self._derive_path = not has_as
        self._derive_coefficients = not has_fg
        self._tables = {}

    # -- the forward process -------------------------------------------------------------
    def f(self, t):
        """Linear drift coefficient f(t) = d log a / dt."""
        return self._from_path(t)[0]

    def g(self, t):
        """Diffusion coefficient g(t) = sqrt(d(s²)/dt − 2 f s²)."""
        return self._from_path(t)[1].clamp_min(0).sqrt()

    def drift(self, x, t):
        """f(t) x."""
        return expand(self.f(t), x) * x

    def diffusion(self, t):
        """g(t)."""
        return self.g(t)

    # -- the perturbation kernel ---------------------------------------------------------
    def a(self, t):
        """Mean scale a(t) = exp(∫_0^t f)."""
        return torch.exp(self._interpolate(t, 0))

    def s(self, t):
        """Standard deviation s(t), with s(t)² = a(t)² ∫_0^t g(u)² / a(u)² du."""
        return self._interpolate(t, 1).clamp_min(0).sqrt()

    def marginal(self, x0, t):
        """Mean and std of p(x_t | x_0) = N(a(t) x_0, s(t)² I), broadcast against x0."""
        return expand(self.a(t), x0) * x0, expand(self.s(t), x0)

    def marginal_sample(self, x0, t, noise):
        """x_t = a(t) x_0 + s(t) z."""
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def sigma(self, t):
        """Noise level σ(t) = s(t) / a(t) of the scaled variable x / a."""
        return self.s(t) / self.a(t)

    def log_snr(self, t):
        """Half log signal-to-noise ratio λ(t) = log(a(t) / s(t))."""
        return torch.log(self.a(t)) - torch.log(self.s(t))

    # -- what a score says about x_0 and the noise; the kernel between two times ----------
    def x0_from_score(self, x, score, t):
        """Tweedie's formula  x̂₀ = E[x_0 | x_t = x] = (x + s(t)² ∇log p_t(x)) / a(t)."""
        return (x + expand(self.s(t) ** 2, x) * score) / expand(self.a(t), x)

    def eps_from_score(self, score, t):
        """The noise estimate  ε̂ = E[z | x_t] = −s(t) ∇log p_t(x_t)."""
        return -expand(self.s(t), score) * score

    def x0_from_eps(self, x, eps, t):
        """x̂₀ = (x − s(t) ε̂) / a(t), the kernel x_t = a x_0 + s z solved for x_0."""
        return (x - expand(self.s(t), x) * eps) / expand(self.a(t), x)

    def score_from_eps(self, eps, t):
        """∇log p_t = −ε̂ / s(t)."""
        return -eps / expand(self.s(t), eps)

    def score_from_x0(self, x, x0, t):
        """∇log p_t(x) = (a(t) x̂₀ − x) / s(t)², Tweedie's formula solved for the score."""
        return (expand(self.a(t), x) * x0 - x) / expand(self.s(t) ** 2, x)

    def transition(self, t, u):
        """The exact forward transition p(x_t | x_u) from u up to t > u:  x_t = α x_u + σ z,  with
        α = a(t) / a(u)  and  σ² = s(t)² − α² s(u)²  (clamped at 0 against rounding). Returns (α, σ), shaped as
        t and u broadcast."""
        alpha = self.a(t) / self.a(u)
        return alpha, (self.s(t) ** 2 - alpha**2 * self.s(u) ** 2).clamp_min(0).sqrt()

    def posterior(self, x, x0, t, u):
        """Mean and std of q(x_u | x_t = x, x_0 = x0) for u < t (DDPM's posterior, for any process): with α, σ of
        transition(t, u),

            mean = α s(u)² / s(t)² · x + a(u) σ² / s(t)² · x0,   std = σ s(u) / s(t).
        """
        alpha, std = self.transition(t, u)
        s2, s2_u = self.s(t) ** 2, self.s(u) ** 2
        mean = expand(alpha * s2_u / s2, x) * x + expand(self.a(u) * std**2 / s2, x) * x0
        return mean, expand(std * (s2_u / s2).sqrt(), x)

    # -- inverting σ(t), and drawing t by the likelihood weighting -------------------------
    def time_at_sigma(self, sigma, lo, hi=None):
        """The t in [lo, hi] (0 < lo < hi <= T, default hi = T) with σ(t) = sigma, clamped to the ends; float64 on
        sigma's device.

        σ increases with t, since  d log σ² / dt = (d s²/dt − 2 f s²) / s² = g² / s² >= 0.  A table of log σ on
        a grid geometric and uniform in t (once per lo, hi and device) gives a first guess by linear
        interpolation; Newton steps on log σ(t) − log sigma, with slope g² / (2 s²), refine it.
        """
        hi = self.T if hi is None else float(hi)
        lo = float(lo)
        if not 0 < lo < hi <= self.T:
            raise ConfigError(f"lo={lo!r} is invalid: inverting sigma(t) needs 0 < lo < hi = {hi} <= T = {self.T}",
                              "lo")
        target = torch.log(torch.as_tensor(sigma).double())
        grid, log_sigma = self._sigma_table(lo, hi, target.device)
        right = torch.searchsorted(log_sigma, target.contiguous()).clamp(1, len(grid) - 1)
        l0, l1, t0, t1 = log_sigma[right - 1], log_sigma[right], grid[right - 1], grid[right]
        frac = torch.where(l1 > l0, (target - l0) / (l1 - l0), torch.zeros_like(target)).clamp(0, 1)
        t = t0 + frac * (t1 - t0)
        for _ in range(NEWTON_STEPS):
            slope = self.g(t) ** 2 / (2 * self.s(t) ** 2)
            step = (torch.log(self.sigma(t)) - target) / slope
            t = torch.where(torch.isfinite(step) & (slope > 0), t - step, t).clamp(lo, hi)
        return t

    def importance_time(self, u, t_min):
        """t at quantile u in [0, 1] of the density  q(t) = g(t)² / s(t)² / Z  on [t_min, T], and q(t).

        Since g² / s² = d log σ² / dt,  Z = ∫_{t_min}^T g²/s² dt = 2 log(σ(T) / σ(t_min)), and t is uniform in
        log σ: t = σ⁻¹(σ(t_min)^{1−u} σ(T)^u). Both come in float64 on u's device.
        """
        u = torch.as_tensor(u).double()
        ends = torch.log(self.sigma(torch.tensor([float(t_min), self.T], dtype=torch.float64, device=u.device)))
        t = self.time_at_sigma(torch.exp(ends[0] + u * (ends[1] - ends[0])), t_min)
        return t, self.g(t) ** 2 / self.s(t) ** 2 / (2 * (ends[1] - ends[0]))

    def _sigma_table(self, lo, hi, device):
        tables = self.__dict__.setdefault("_sigma_tables", {})
        key = (lo, hi, device)
        if key not in tables:
            n = self.grid_size // 2 + 1
            grid = torch.cat([lo * (hi / lo) ** torch.linspace(0, 1, n, dtype=torch.float64),
                              torch.linspace(lo, hi, n, dtype=torch.float64)]).unique()
            log_sigma = torch.log(self.sigma(grid))
            if not (torch.isfinite(log_sigma).all() and log_sigma[-1] > log_sigma[0]):
                raise ConfigError(f"{type(self).__name__}: sigma(t) = s/a is not finite and increasing on "
                                  f"[{lo:g}, {hi:g}]")
            tables[key] = (grid.to(device), torch.cummax(log_sigma, 0).values.to(device))
        return tables[key]

    # -- the prior at T ------------------------------------------------------------------
    def prior_std(self):
        """Std of the prior N(0, prior_std² I) that stands in for p_T."""
        return float(self.s(torch.tensor(self.T, dtype=torch.float64)))

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32):
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std() * z

    def prior_logp(self, z):
        """log N(z; 0, prior_std² I), summed over all but the batch dimension."""
        var = self.prior_std() ** 2
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / var - 0.5 * d * math.log(2 * math.pi * var)

    # -- reverse time ----------------------------------------------------------------------
    def reverse_drift(self, x, t, score):
        """Drift of the reverse-time SDE: f x − g² ∇log p_t  (integrated from T down to 0)."""
        return self.drift(x, t) - expand(self.g(t) ** 2, x) * score

    def ode_drift(self, x, t, score):
        """Velocity of the probability-flow ODE: dx/dt = f x − ½ g² ∇log p_t."""
        return self.drift(x, t) - 0.5 * expand(self.g(t) ** 2, x) * score

    # -- derivations for subclasses that give only one pair ------------------------------
    def _from_path(self, t):
        if not self._derive_coefficients:
            raise NotImplementedError
        with torch.enable_grad():
            t = torch.as_tensor(t)
            t = (t if t.is_floating_point() else t.to(torch.get_default_dtype())).detach().requires_grad_(True)
            log_a = torch.log(self.a(t))
            s2 = self.s(t) ** 2
            f = torch.autograd.grad(log_a.sum(), t, retain_graph=True)[0]
            ds2 = torch.autograd.grad(s2.sum(), t)[0]
        return f.detach(), (ds2 - 2 * f * s2).detach()

    def _interpolate(self, t, which):
        """Row ``which`` of the table (0: log a, 1: s²) at times t, in t's dtype and on its device."""
        if not self._derive_path:
            raise NotImplementedError
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        if t.device not in self._tables:
            self._tables[t.device] = [(v.to(t.device), d.to(t.device)) for v, d in self._tabulate()]
        pos = (t.double() / self.T).clamp(0, 1) * (self.grid_size - 1)
        lo = pos.floor().long().clamp(max=self.grid_size - 2)
        values, slopes = self._tables[t.device][which]
        return _hermite(values, slopes, lo, pos - lo, self.T / (self.grid_size - 1)).to(t.dtype)

    def _tabulate(self):
        """log a and s² on a uniform grid, with their exact slopes f and g² + 2 f s² for Hermite interpolation."""
        from scipy.integrate import cumulative_simpson

        grid = torch.linspace(0, self.T, self.grid_size, dtype=torch.float64)
        f = self.f(grid).double().numpy()
        g2 = (self.g(grid).double() ** 2).numpy()
        if not (np.isfinite(f).all() and np.isfinite(g2).all()):
            raise ConfigError(f"{type(self).__name__}: f(t) or g(t) is not finite on [0, {self.T}]")
        log_a = cumulative_simpson(f, x=grid.numpy(), initial=0.0)
        integral = cumulative_simpson(g2 * np.exp(-2 * log_a), x=grid.numpy(), initial=0.0)
        s2 = np.exp(2 * log_a) * integral
        as_t = torch.from_numpy
        return (as_t(log_a), as_t(f)), (as_t(s2), as_t(g2 + 2 * f * s2))

    def __repr__(self):
        return f"{type(self).__name__}(T={self.T})"


def _hermite(values, slopes, lo, u, h):
    """Cubic Hermite interpolation between grid points lo and lo + 1 at fraction u of a step h."""
    u2, u3 = u * u, u * u * u
    return ((2 * u3 - 3 * u2 + 1) * values[lo] + (u3 - 2 * u2 + u) * h * slopes[lo]
            + (3 * u2 - 2 * u3) * values[lo + 1] + (u3 - u2) * h * slopes[lo + 1])
