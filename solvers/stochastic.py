"""Samplers of the reverse-time SDE: Euler–Maruyama, and predictor–corrector with interchangeable pieces."""
from sde import expand
from sde.errors import check_choice, check_int, check_number

from .common import SteppingSolver, randn_like


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


def langevin_step(sde, score, x, t, generator, snr):
    """x ← x + δ ∇log p_t + √(2δ) z,  δ = 2 (r ‖z‖ / ‖∇log p_t‖)², norms averaged over the batch."""
    grad = score(x, t)
    z = randn_like(x, generator)
    grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=1).mean()
    z_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    delta = 2 * (snr * z_norm / grad_norm) ** 2
    return x + delta * grad + (2 * delta).sqrt() * z


CORRECTORS = {"langevin": langevin_step, "none": None}


class EulerMaruyama(SteppingSolver):
    """Euler–Maruyama on the reverse SDE  dx = [f x − g² ∇log p_t] dt + g dw̄  over the grid (default uniform in t);
    the last step adds no noise. NFE = steps."""

    deterministic = False

    def __init__(self, steps=1000, eps=None, denoise=False, grid="time", rho=7.0):
        super().__init__(steps, grid, rho, eps, denoise)

    def step(self, state, x, t, t_next):
        return euler_maruyama_step(state.sde, state.score, x, t, t_next, state.generator, last=state.last)


class PredictorCorrector(SteppingSolver):
    """At each grid time: ``corrector_steps`` Langevin corrections at signal-to-noise ratio ``snr``,
    then one predictor step (reverse_diffusion, euler_maruyama or ancestral) to the next time."""

    deterministic = False

    def __init__(self, steps=1000, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                 corrector_steps=1, eps=None, denoise=False, grid="time", rho=7.0):
        super().__init__(steps, grid, rho, eps, denoise)
        self.predictor = check_choice("predictor", predictor, PREDICTORS)
        self.corrector = check_choice("corrector", "none" if corrector is None else corrector, CORRECTORS)
        self.snr = check_number("snr", snr)
        self.corrector_steps = check_int("corrector_steps", corrector_steps, 0)

    def step(self, state, x, t, t_next):
        sde, score, generator = state.sde, state.score, state.generator
        correct = CORRECTORS[self.corrector]
        for _ in range(self.corrector_steps if correct is not None else 0):
            x = correct(sde, score, x, t, generator, self.snr)
        return PREDICTORS[self.predictor](sde, score, x, t, t_next, generator, last=state.last)
