"""Samplers of the reverse-time SDE: Euler–Maruyama, predictor–corrector with interchangeable pieces, and
SDE-DPM-Solver++ (an exponential integrator of the reverse SDE in λ = log(a/s), multistep in the data prediction)."""
import torch

from sde import expand
from sde.errors import check_choice, check_int, check_number

from .base import SteppingSolver, randn_like
from .exponential import exponential_weights


def euler_maruyama_step(sde, score, x, t, t_next, generator, last=False):
    """x ← x − [f x − g² ∇log p_t] Δ + g √Δ z,  Δ = t − t_next > 0."""
    dt = t - t_next
    x_mean = x - sde.reverse_drift(x, t, score(x, t)) * expand(dt, x)
    return x_mean if last else x_mean + expand(sde.g(t) * dt.sqrt(), x) * randn_like(x, generator)


def reverse_diffusion_step(sde, score, x, t, t_next, generator, last=False):
    """Reverse the forward transition x_t = α x_{t_next} + σ z (SDE.transition):
    x ← x − (α − 1) x + σ² ∇log p_t + σ z."""
    alpha, std = sde.transition(t, t_next)
    x_mean = expand(2 - alpha, x) * x + expand(std**2, x) * score(x, t)
    return x_mean if last else x_mean + expand(std, x) * randn_like(x, generator)


def ancestral_step(sde, score, x, t, t_next, generator, last=False):
    """Sample the posterior q(x_{t_next} | x_t, x̂_0) (SDE.posterior) at Tweedie's x̂_0 = (x + s² ∇log p_t) / a
    (DDPM's Algorithm 2)."""
    mean, std = sde.posterior(x, sde.x0_from_score(x, score(x, t), t), t, t_next)
    return mean if last else mean + std * randn_like(x, generator)


PREDICTORS = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
}


def langevin_step_size(sde, x, t, grad, z, snr, rule):
    """The step δ of a Langevin correction at signal-to-noise ratio r, per sample (shape (N,)):

        kernel:  δ = 2 r² s(t)²                                      (the default)
        sample:  δ = 2 (r ‖z‖ / ‖∇log p_t(x)‖)²,  norms per sample
        batch:   δ = 2 (r ‖z̄‖ / ‖∇log p_t‖)²,  norms averaged over the batch (score_sde's rule)

    On a Gaussian N(μ, V I) unadjusted Langevin with step δ is stationary at N(μ, V / (1 − δ/(2V)) I): it widens by
    δ/(2V). The exact score of p_t has −∇² log p_t ⪯ I/s(t)² (p_t is a Gaussian of variance s² convolved with the
    scaled data), so every component of p_t has V ≥ s², and the kernel rule widens none by more than r²/(1 − r²).
    The norm rules take δ ≈ 2 r² V̄ for a V̄ averaged over the batch (or a ratio of χ² norms per sample, unbounded in
    few dimensions), which widens a component narrower than the batch's average by more."""
    n = x.shape[0]
    if rule == "kernel":
        return (2 * snr**2 * sde.s(t) ** 2).to(x.dtype).expand(n)
    grad_norm, z_norm = grad.reshape(n, -1).norm(dim=1), z.reshape(n, -1).norm(dim=1)
    if rule == "batch":
        grad_norm, z_norm = grad_norm.mean().expand(n), z_norm.mean().expand(n)
    return 2 * (snr * z_norm / grad_norm) ** 2


def langevin_step(sde, score, x, t, generator, snr, rule="kernel"):
    """x ← x + δ ∇log p_t + √(2δ) z, δ by ``rule`` (langevin_step_size)."""
    grad = score(x, t)
    z = randn_like(x, generator)
    delta = expand(langevin_step_size(sde, x, t, grad, z, snr, rule), x)
    return x + delta * grad + (2 * delta).sqrt() * z


STEP_RULES = ("kernel", "sample", "batch")


CORRECTORS = {"langevin": langevin_step, "none": None}


class EulerMaruyama(SteppingSolver):
    """Euler–Maruyama on the reverse SDE  dx = [f x − g² ∇log p_t] dt + g dw̄  over the grid (default uniform in t);
    the last step adds no noise. NFE = steps."""

    deterministic = False

    def __init__(self, steps=1000, eps=None, denoise=False, grid="time"):
        super().__init__(steps, grid, eps, denoise)

    def step(self, state, x, t, t_next):
        return euler_maruyama_step(state.sde, state.score, x, t, t_next, state.generator, last=state.last)


class PredictorCorrector(SteppingSolver):
    """At each grid time: ``corrector_steps`` Langevin corrections at signal-to-noise ratio ``snr`` with the step
    ``step_rule`` (kernel | sample | batch, see langevin_step_size), then one predictor step (reverse_diffusion,
    euler_maruyama or ancestral) to the next time."""

    deterministic = False

    def __init__(self, steps=1000, predictor="reverse_diffusion", corrector="langevin", snr=0.1,
                 corrector_steps=1, eps=None, denoise=False, grid="time", step_rule="kernel"):
        super().__init__(steps, grid, eps, denoise)
        self.predictor = check_choice("predictor", predictor, PREDICTORS)
        self.corrector = check_choice("corrector", "none" if corrector is None else corrector, CORRECTORS)
        self.snr = check_number("snr", snr)
        self.corrector_steps = check_int("corrector_steps", corrector_steps, 0)
        self.step_rule = check_choice("step_rule", step_rule, STEP_RULES)

    @property
    def corrections(self):
        """Corrector steps per grid time (none without a corrector)."""
        return self.corrector_steps if CORRECTORS[self.corrector] is not None else 0

    @property
    def evaluations_per_step(self):
        """The corrector's steps and the predictor's one."""
        return self.corrections + 1

    def step(self, state, x, t, t_next):
        sde, score, generator = state.sde, state.score, state.generator
        correct = CORRECTORS[self.corrector]
        for _ in range(self.corrections):
            x = correct(sde, score, x, t, generator, self.snr, self.step_rule)
        return PREDICTORS[self.predictor](sde, score, x, t, t_next, generator, last=state.last)


def sde_kernel(sde, t, u, eta):
    """The exact linear part of the step from t down to u < t of  dx = [f x − (1 + η²)/2 g² ∇log p_t] dt + η g dw̄
    with ∇log p_t = (a D − x)/s²:  x_u = (s_u/s_t) e^{−η² h} x_t + (D-terms) + s_u √(1 − e^{−2η² h}) z,
    h = λ_u − λ_t. Returns the ratio (s_u/s_t) e^{−η² h} and the noise std."""
    h, s_u = sde.log_snr(u) - sde.log_snr(t), sde.s(u)
    zero = torch.zeros_like(h)
    return (torch.where(s_u > 0, s_u / sde.s(t) * torch.exp(-eta**2 * h), zero),
            torch.where(s_u > 0, s_u * torch.sqrt(-torch.expm1(-2 * eta**2 * h)), zero))


class SDEDPMSolver(SteppingSolver):
    """SDE-DPM-Solver++ (Lu et al. 2022) and its kin (SA-Solver's stochastic Adams predictor, Xue et al. 2023):
    an exponential integrator in λ = log(a/s) of the reverse SDE with noise scale η,

        dx = [f x − (1 + η²)/2 · g² ∇log p_t] dt + η g dw̄        (η = 1: the reverse SDE; η = 0: the ODE),

    with the data prediction D = x̂₀ (SDE.x0_from_score). Writing ∇log p_t = (a D − x)/s² and ρ = 1 + η²,
    its linear part is exact (sde_kernel), and D is replaced by the polynomial P in λ through the last ``multistep``
    predictions:

        x_{i+1} = (s_{i+1}/s_i) e^{−η² h} x_i + a_{i+1} ρ ∫_0^h e^{−ρ v} P(λ_{i+1} − v) dv
                  + s_{i+1} √(1 − e^{−2η² h}) z,

    h = λ_{i+1} − λ_i (exponential_weights). multistep = 1 is SDE-DPM-Solver-1 (DDPM's ancestral step for η = 1),
    2 SDE-DPM-Solver++(2M); at η = 0 the weights are those of DPM-Solver++ with the exact λ-integrals. The first
    steps use 1, 2, ... predictions; a last step onto s = 0 (eps = 0) uses one. ``grid``: as for DPMSolver (default
    logsnr). NFE = steps. ``order`` (weak, measured in tests/test_stochastic_solvers.py) is min(multistep, 2) for
    η > 0, and multistep for η = 0 (the ODE).
    """

    deterministic = False

    def __init__(self, steps=100, multistep=3, eta=1.0, grid="logsnr", eps=None, denoise=False):
        self.eta = check_number("eta", eta, strict=False)
        self.deterministic = self.eta == 0
        super().__init__(steps, grid, eps, denoise)
        self.multistep = check_choice("multistep", multistep, (1, 2, 3))
        self.order = self.multistep if self.deterministic else min(self.multistep, 2)

    def start(self, state, x):
        """Per step, from the grid in float64: the ratio, the noise std and the weights of D_i, D_{i−1}, ..."""
        sde, t64, rho = state.sde, state.times, 1 + self.eta**2
        lam = sde.log_snr(t64).double()
        ratio, std = sde_kernel(sde, t64[:-1], t64[1:], self.eta)
        a = sde.a(t64).double()
        state.coefficients = []
        for i in range(state.steps):
            k = 1 if torch.isinf(lam[i + 1]) else min(self.multistep, i + 1)
            nodes = lam[i + 1] - lam[i + 1 - k:i + 1].flip(0)
            w = a[i + 1] * rho * exponential_weights(lam[i + 1] - lam[i], nodes, rho)
            state.coefficients.append([c.to(device=x.device, dtype=x.dtype) for c in (ratio[i], std[i], *w)])

    def noise(self, state, x):
        """The standard normal draw of step state.i."""
        return randn_like(x, state.generator)

    def step(self, state, x, t, t_next):
        ratio, std, *weights = state.coefficients[state.i]
        state.history = [state.sde.x0_from_score(x, state.score(x, t), t)] + state.history[:self.multistep - 1]
        x = ratio * x + sum(w * d for w, d in zip(weights, state.history))
        return x if state.last or self.eta == 0 else x + std * self.noise(state, x)
