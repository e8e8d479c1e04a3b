"""Denoising score matching, written once in score space for every linear SDE: its weightings and time laws."""
import math

import torch

from sde import expand
from sde.errors import ConfigError, check_choice, check_number, invalid, unknown

WEIGHTINGS = ("eps", "likelihood", "flow", "edm")
TIMES = ("auto", "uniform", "importance", "lognormal")
REDUCTIONS = ("mean", "sum")


class DSMLoss:
    """L(θ) = E_{t ~ π, x_0, z} [ λ(t) ‖ s_θ(a x_0 + s z, t) + z / s ‖² ]   (Song et al. 2021, eq. 7),

    with x_t = a x_0 + s z, σ = s / a, the weighting λ and its own time law π:

    - 'eps': λ = s², π = U(t_min, T): the noise-prediction loss ‖ε_θ − z‖² (Ho et al. 2020's L_simple).
    - 'likelihood': λ = g², π = U(t_min, T): (T − t_min) L/2 + terms free of θ bounds −log p_θ(x_0)
      (Song et al. 2021b, see solvers.ELBO).
    - 'flow': flow matching on the Gaussian path (Lipman et al. 2022), π = U(t_min, T): the model's
      probability-flow velocity v_θ = f x_t − ½ g² s_θ regressed on the path's velocity
      u = d/dt (a x_0 + s z) = a' x_0 + s' z, with a' = f a and s' = g² / (2 s) + f s (from g² = d s²/dt − 2 f s²):

          ‖v_θ − u‖² = ‖f x_t − ½ g² s_θ − f x_t − ½ g² z / s‖² = (g² / 2)² ‖s_θ + z / s‖²,

      so flow matching is DSM with λ = g⁴ / 4 (on the rectified-flow path a = 1 − t, s = t: u = z − x_0).
    - 'edm': Karras et al. 2022, π: ln σ ~ N(p_mean, p_std²) (truncated to [σ(t_min), σ(T)]), and the denoiser
      D_θ = x̂_0 = (x_t + s² s_θ) / a weighted by λ_σ = (σ² + σ_d²) / (σ σ_d)²:

          λ_σ ‖D_θ − x_0‖² = λ_σ (s² / a)² ‖s_θ + z / s‖²,   i.e. DSM with λ = s² (σ² + σ_d²) / σ_d².

    ``time`` picks the law q that t is drawn from: 'auto' (the weighting's own π), 'uniform' (U(t_min, T)),
    'importance' (q ∝ g² / s², i.e. uniform in log σ, since g² / s² = d log σ² / dt; Song et al. 2021b) or
    'lognormal' (as for 'edm'). When q differs from π each term is multiplied by π(t) / q(t), which keeps the
    estimator unbiased for the same L. With λ = g² and q ∝ g² / s² the weight becomes a constant times s²:
    λ π / q = 2 log(σ(T) / σ(t_min)) s² / (T − t_min), the noise-prediction loss with t uniform in log σ.

    t is drawn first, then z. ``stratified`` draws the batch's N uniforms behind t one in each of the strata
    [i/N, (i+1)/N) (u_i = (i + U_i)/N; the points of a batch are exchangeable, so no shuffle is needed): each u_i is
    still uniform, so the estimator stays unbiased, and its variance over t falls (Kingma et al. 2021's
    low-discrepancy sampler). reduction 'mean' averages over dimensions, 'sum' adds
    them; both average over the batch.
    """

    def __init__(self, weighting="eps", reduction="mean", t_min=1e-5, time="auto", p_mean=-1.2, p_std=1.2,
                 sigma_data=0.5, stratified=False):
        if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
            raise unknown("weighting", weighting, WEIGHTINGS)
        self.weighting = weighting
        self.time = check_choice("time", time, TIMES)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.t_min = check_number("t_min", t_min, strict=False, maximum=1.0, strict_max=True)
        self.p_mean = check_number("p_mean", p_mean, minimum=-math.inf)
        self.p_std = check_number("p_std", p_std)
        self.sigma_data = check_number("sigma_data", sigma_data)
        if not isinstance(stratified, bool):
            raise invalid("stratified", stratified, "true or false")
        self.stratified = stratified
        self.law = ("lognormal" if weighting == "edm" else "uniform") if time == "auto" else time
        if self.law != "uniform" and self.t_min <= 0:
            raise ConfigError(f"t_min={t_min!r} is invalid with time={self.law!r}: that law lives in log sigma, "
                              "which is -inf at t = 0; choose t_min > 0", ("t_min", "time"))

    @property
    def native(self):
        """The weighting's own time law π."""
        return "lognormal" if self.weighting == "edm" else "uniform"

    def __call__(self, model, sde, x0, generator=None):
        return self.per_sample(model, sde, x0, generator).mean()

    def per_sample(self, model, sde, x0, generator=None):
        """The loss of each point of the batch, shape (N,)."""
        n = x0.shape[0]
        u = torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.stratified:
            u = (torch.arange(n, device=x0.device, dtype=x0.dtype) + u) / n
        t, ratio = self.times(sde, u)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = expand(sde.s(t), x0)
        x_t = expand(sde.a(t), x0) * x0 + s * z
        score = model(x_t, t).to(z.dtype)
        if self.weighting == "flow":
            a, f, g2 = expand(sde.a(t), x0), expand(sde.f(t), x0), expand(sde.g(t) ** 2, x0)
            velocity = f * a * x0 + (g2 / (2 * s) + f * s) * z
            per_dim = (sde.ode_drift(x_t, t, score) - velocity) ** 2
        elif self.weighting == "edm":
            a = expand(sde.a(t), x0)
            sigma2 = (s / a) ** 2
            weight = (sigma2 + self.sigma_data**2) / (sigma2 * self.sigma_data**2)
            per_dim = weight * ((x_t + s**2 * score) / a - x0) ** 2
        else:
            weight = s**2 if self.weighting == "eps" else expand(sde.g(t) ** 2, x0)
            per_dim = weight * (score + z / s) ** 2
        if ratio is not None:
            per_dim = expand(ratio, x0) * per_dim
        per_sample = per_dim.reshape(n, -1)
        return per_sample.mean(1) if self.reduction == "mean" else per_sample.sum(1)

    def times(self, sde, u):
        """t from uniforms u through the law q, and π(t) / q(t) (None where q = π), in u's dtype."""
        if self.law == "uniform" and self.native == "uniform":
            return self.t_min + (sde.T - self.t_min) * u, None
        if self.law == "uniform":
            t = (self.t_min + (sde.T - self.t_min) * u.double())
            q = torch.full_like(t, 1 / (sde.T - self.t_min))
        elif self.law == "importance":
            t, q = sde.importance_time(u, self.t_min)
        else:
            t, q = self.lognormal_time(sde, u)
        if self.law == self.native:
            return t.to(u.dtype), None
        pi = self.lognormal_density(sde, t) if self.native == "lognormal" else 1 / (sde.T - self.t_min)
        return t.to(u.dtype), (pi / q).to(u.dtype)

    def lognormal_time(self, sde, u):
        """t with ln σ(t) ~ N(p_mean, p_std²) truncated to [σ(t_min), σ(T)], at quantiles u; and its density."""
        lo, hi = self._lognormal_cdf_range(sde, u.device)
        z = torch.special.ndtri(lo + u.double() * (hi - lo))
        t = sde.time_at_sigma(torch.exp(self.p_mean + self.p_std * z), self.t_min)
        return t, self.lognormal_density(sde, t)

    def lognormal_density(self, sde, t):
        """q(t) = φ((ln σ(t) − p_mean) / p_std) / (p_std Z) · d ln σ / dt, with d ln σ / dt = g² / (2 s²) and Z
        the normal mass of [σ(t_min), σ(T)]."""
        lo, hi = self._lognormal_cdf_range(sde, t.device)
        z = (torch.log(sde.sigma(t)) - self.p_mean) / self.p_std
        phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        return phi / (self.p_std * (hi - lo)) * sde.g(t) ** 2 / (2 * sde.s(t) ** 2)

    def _lognormal_cdf_range(self, sde, device):
        ends = torch.tensor([self.t_min, sde.T], dtype=torch.float64, device=device)
        cdf = torch.special.ndtr((torch.log(sde.sigma(ends)) - self.p_mean) / self.p_std)
        return cdf[0], cdf[1]

    def __repr__(self):
        extra = "" if self.time == "auto" else f", time={self.time!r}"
        if self.law == "lognormal" or self.weighting == "edm":
            extra += f", p_mean={self.p_mean}, p_std={self.p_std}, sigma_data={self.sigma_data}"
        if self.stratified:
            extra += ", stratified=True"
        return f"DSMLoss(weighting={self.weighting!r}, reduction={self.reduction!r}, t_min={self.t_min}{extra})"
