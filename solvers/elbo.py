"""The continuous-time variational bound on −log p(x), by Monte Carlo over t with importance sampling."""
import math

import torch

from sde import SDE, expand
from sde.errors import check_int, check_number

from .base import CountedScore, randn_like, time_dtype


class ELBO:
    """``elbo(sde, score_fn, x, generator) -> (bound, nfe)``: per point an upper bound on −log p_θ(x) in nats,
    where p_θ is the reverse-time SDE driven by score_fn from the prior at T down to t_min, read out at 0 through
    the Gaussian x_0 ~ N(x_{t_min} / a, σ(t_min)² I) (Song et al. 2021, "Maximum likelihood training of
    score-based diffusion models"; Huang et al. 2021; Kingma et al. 2021):

        −log p_θ(x_0) <= ½ ∫_{t_min}^T E_z[ g² ‖s_θ(x_t, t) + z / s‖² ] dt − E_z[log π(x_T)]
                         − D log s(T) + D log σ(t_min),                      x_t = a(t) x_0 + s(t) z.

    Derivation: for the reverse SDE started at x_{t_min} ~ N(a x_0, s² I) the path-space (Girsanov) bound is
    −log p_θ^{t_min}(x_{t_min}) <= −E log π(x_T) + ∫_{t_min}^T E[½ g² ‖s_θ‖² + g² ∇·s_θ − f D] dt; the read-out
    at t_min adds E[−log N(x_0; x_{t_min}/a, σ² I)] − H[N(a x_0, s² I)] = −D log a(t_min). Integration by parts
    against the Gaussian kernel, E_z[∇·s_θ(x_t)] = −E_z[s_θ · ∇log p(x_t|x_0)] = E_z[s_θ · z / s], turns the
    integrand into ½ g² ‖s_θ + z/s‖² − ½ g² ‖z‖²/s² − f D, whose last two terms integrate in closed form:
    ∫ g²/s² dt = 2 log(σ(T)/σ(t_min)) (as g²/s² = d log σ²/dt) and ∫ f dt = log(a(T)/a(t_min)). For the exact
    score and π = p_T the bound is tight up to O(σ(t_min)²); with π ≠ p_T it exceeds −log p(x_0) by
    E_z[log p_T(x_T) − log π(x_T)] (the prior mismatch).

    Estimate: ``draws`` times per point, drawn from q(t) ∝ g²/s² (uniform in log σ) and stratified (the k-th in
    the k-th of ``draws`` equal slices of q's mass), where ½ g² ‖s_θ + z/s‖² / q(t) = Δ ‖s s_θ + z‖²,
    Δ = log(σ(T)/σ(t_min)). The control variate Δ c(t) (‖z‖² − D), of mean zero, with c = (σ_d² / (σ_d² + σ²))²,
    is subtracted: for σ << σ_d the term is nearly Δ ‖z‖², for σ >> σ_d nearly 0; any σ_d keeps the estimate
    unbiased. Stratification and control variate cut the variance per point 9-fold in 2-D and 47-fold in 16-D on
    the mixtures of the tests. The prior term is exact for the Gaussian prior N(0, prior_std² I) (drawn with the
    same z where a process overrides prior_logp). The standard error of ``estimate`` comes from the squared
    differences of neighbouring strata, (1/K²) Σ_j (b_{2j} − b_{2j+1})², an estimate that errs on the high side.
    """

    def __init__(self, draws=256, t_min=1e-5, sigma_data=0.5, max_rows=65536):
        self.draws = check_int("draws", draws, minimum=2)
        self.t_min = check_number("t_min", t_min, maximum=1.0, strict_max=True)
        self.sigma_data = check_number("sigma_data", sigma_data)
        self.max_rows = check_int("max_rows", max_rows)

    def __call__(self, sde, score_fn, x, generator=None):
        bound, _, nfe = self.estimate(sde, score_fn, x, generator)
        return bound, nfe

    @torch.no_grad()
    def estimate(self, sde, score_fn, x, generator=None):
        """Per point the bound and its Monte Carlo standard error (float64, x's device), and the NFE per point
        (``draws``: one score evaluation per draw)."""
        check_number("t_min", self.t_min, maximum=sde.T, strict_max=True)
        n, d = x.shape[0], x[0].numel()
        score = CountedScore(score_fn)
        ends = torch.tensor([self.t_min, sde.T], dtype=torch.float64, device=x.device)
        delta = torch.log(sde.sigma(ends[1]) / sde.sigma(ends[0]))
        exact_prior = type(sde).prior_logp is SDE.prior_logp
        constant = d * (torch.log(sde.sigma(ends[0])) - torch.log(sde.s(ends[1])))
        if exact_prior:
            constant = constant + self.prior_term(sde, x)
        terms = []
        chunk = max(1, min(self.draws, self.max_rows // max(n, 1)))
        for start in range(0, self.draws, chunk):
            c = min(chunk, self.draws - start)
            xs = x.repeat(c, *([1] * (x.ndim - 1)))
            strata = torch.arange(start, start + c, dtype=torch.float64, device=x.device).repeat_interleave(n)
            u = (strata + torch.rand(c * n, generator=generator, device=x.device, dtype=torch.float64)) / self.draws
            t = sde.importance_time(u, self.t_min)[0].to(time_dtype(x))
            t64 = t.double()
            z = randn_like(xs, generator)
            x_t = expand(sde.a(t), xs) * xs + expand(sde.s(t), xs) * z
            s = sde.s(t64)
            residual = expand(s, z) * score(x_t, t).double() + z.double()
            sq_z = z.double().reshape(c * n, -1).pow(2).sum(1)
            c_t = (self.sigma_data**2 / (self.sigma_data**2 + sde.sigma(t64) ** 2)) ** 2
            term = delta * (residual.reshape(c * n, -1).pow(2).sum(1) - c_t * (sq_z - d))
            if not exact_prior:
                x_T = expand(sde.a(ends[1]), xs) * xs + expand(sde.s(ends[1]), xs) * z
                term = term - sde.prior_logp(x_T).double()
            terms.append(term.reshape(c, n))
        terms = torch.cat(terms)
        bound = terms.mean(0) + constant
        pairs = (terms[0:self.draws - 1:2] - terms[1::2]).pow(2)
        variance = pairs.sum(0) + (self.draws % 2) * pairs.mean(0) / 2
        return bound, variance.sqrt() / self.draws, self.draws

    @staticmethod
    def prior_term(sde, x):
        """−E_z[log π(a(T) x + s(T) z)] for π = N(0, p² I):  D/2 log(2π p²) + (a(T)² ‖x‖² + s(T)² D) / (2 p²)."""
        d = x[0].numel()
        end = torch.tensor(sde.T, dtype=torch.float64, device=x.device)
        var = sde.prior_std() ** 2
        sq = x.double().reshape(x.shape[0], -1).pow(2).sum(1)
        return 0.5 * d * math.log(2 * math.pi * var) + (sde.a(end) ** 2 * sq + sde.s(end) ** 2 * d) / (2 * var)

    def __repr__(self):
        return f"ELBO(draws={self.draws}, t_min={self.t_min}, sigma_data={self.sigma_data})"
