"""Samplers of the reverse-time SDE: Euler–Maruyama, and predictor–corrector with interchangeable pieces."""
from sde.errors import check_choice, check_int, check_number

from .common import Solver, randn_like, time_grid


def euler_maruyama_step(sde, score, x, t, t_next, generator, last=False):
    """x ← x − [f x − g² ∇log p_t] Δ + g √Δ z,  Δ = t − t_next > 0."""
    dt = t - t_next
    x_mean = x - sde.reverse_drift(x, t, score(x, t)) * dt
    return x_mean if last else x_mean + sde.g(t) * dt.sqrt() * randn_like(x, generator)


def _transition(sde, t, t_next):
    """The exact forward kernel from t_next up to t: x_t = α x_{t_next} + σ z,  σ² = s(t)² − α² s(t_next)²."""
    alpha = sde.a(t) / sde.a(t_next)
    var = (sde.s(t) ** 2 - alpha**2 * sde.s(t_next) ** 2).clamp_min(0)
    return alpha, var


def reverse_diffusion_step(sde, score, x, t, t_next, generator, last=False):
    """Reverse the discretized forward step: x ← x − (α − 1) x + σ² ∇log p_t + σ z."""
    alpha, var = _transition(sde, t, t_next)
    x_mean = (2 - alpha) * x + var * score(x, t)
    return x_mean if last else x_mean + var.sqrt() * randn_like(x, generator)


def ancestral_step(sde, score, x, t, t_next, generator, last=False):
    """Sample the posterior q(x_{t_next} | x_t, x̂_0) with x̂_0 = (x + s² ∇log p_t) / a (DDPM's Algorithm 2):

        mean = α (s_n² / s²) x_t + (σ² / (α s²)) (x_t + s² ∇log p_t),   var = σ² s_n² / s².
    """
    alpha, var = _transition(sde, t, t_next)
    s2, s2_next = sde.s(t) ** 2, sde.s(t_next) ** 2
    x_mean = alpha * (s2_next / s2) * x + var / (alpha * s2) * (x + s2 * score(x, t))
    return x_mean if last else x_mean + (var * s2_next / s2).sqrt() * randn_like(x, generator)


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


class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse SDE  dx = [f x − g² ∇log p_t] dt + g dw̄,  on a uniform grid from T to eps."""

    def __init__(self, steps=1000, eps=None, denoise=False):
        super().__init__(eps, denoise)
        self.steps = check_int("steps", steps)

    def solve(self, sde, score, x, eps, generator):
        ts = time_grid(sde, self.steps, eps, x)
        for i in range(self.steps):
            x = euler_maruyama_step(sde, score, x, ts[i], ts[i + 1], generator, last=i == self.steps - 1)
        return x


class PredictorCorrector(Solver):
    """At each grid time: ``corrector_steps`` Langevin corrections at signal-to-noise ratio ``snr``,
    then one predictor step (reverse_diffusion, euler_maruyama or ancestral) to the next time."""

    def __init__(self, steps=1000, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                 corrector_steps=1, eps=None, denoise=False):
        super().__init__(eps, denoise)
        self.steps = check_int("steps", steps)
        self.predictor = check_choice("predictor", predictor, PREDICTORS)
        self.corrector = check_choice("corrector", "none" if corrector is None else corrector, CORRECTORS)
        self.snr = check_number("snr", snr)
        self.corrector_steps = check_int("corrector_steps", corrector_steps, 0)

    def solve(self, sde, score, x, eps, generator):
        predict, correct = PREDICTORS[self.predictor], CORRECTORS[self.corrector]
        ts = time_grid(sde, self.steps, eps, x)
        for i in range(self.steps):
            if correct is not None:
                for _ in range(self.corrector_steps):
                    x = correct(sde, score, x, ts[i], generator, self.snr)
            x = predict(sde, score, x, ts[i], ts[i + 1], generator, last=i == self.steps - 1)
        return x
