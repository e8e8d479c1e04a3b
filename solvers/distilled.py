"""The sampler of a consistency model: multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
import torch

from sde.errors import ConfigError, check_int, invalid

from .base import SteppingSolver, randn_like
from .grids import times_at_log_snr


class ConsistencySampler(SteppingSolver):
    """Multistep consistency sampling with the model's consistency function f(x, t) = x̂₀(x, t) = (x + s² score)/a:

        x̂₀ = f(x_T, T);   for τ = τ_1 > ... > τ_{steps−1}:  x_τ = a(τ) x̂₀ + s(τ) z,  z ~ N(0, I),   x̂₀ = f(x_τ, τ);

    returns x̂₀. The times τ_i are those where σ = s/a equals ``sigmas`` (steps − 1 of them, decreasing, between
    σ(eps) and σ(T)), or by default the first ``steps`` points of ``grid`` (a fixed grid of ``steps`` intervals from
    T to eps, default ρ-spaced in σ; it nests in a consistency student's grid of N intervals when steps divides
    N). A distilled student is trained at its grid's times alone: sigmas between them may be far off (on VP's
    40-interval grid σ = 0.8 gave a log-density gap of −1.5 nats/dim where the grid's 0.87 gave −0.06). NFE = steps.
    A stepping solver (each step: x̂₀ = f(x, τ_i), then the next τ's draw), so solvers.Inpainter imposes the known
    part after every step: the student inpaints in its own steps (Song et al. 2023's zero-shot editing)."""

    deterministic = False

    def __init__(self, steps=4, grid="karras", eps=None, sigmas=None):
        super().__init__(check_int("steps", steps), grid, eps, False)
        self.sigmas = None
        if sigmas is not None:
            values = torch.as_tensor([float(v) for v in sigmas], dtype=torch.float64)
            if len(values) != self.steps - 1 or not (values > 0).all() or not (values[1:] < values[:-1]).all():
                raise ConfigError(f"sigmas={list(sigmas)!r} is invalid for steps={self.steps}: give {self.steps - 1} "
                                  "decreasing noise levels sigma = s/a > 0 (or null for the grid's)",
                                  ("sigmas", "steps"))
            self.sigmas = tuple(values.tolist())

    def times(self, sde, eps):
        """T, the re-noising times τ_1 > ... > τ_{steps−1}, and eps (float64, CPU): steps + 1 times."""
        if not self.sigmas:
            return self.grid(sde, self.steps, eps)
        ends = sde.sigma(torch.tensor([sde.T, eps], dtype=torch.float64))
        if not (self.sigmas[0] < ends[0] and self.sigmas[-1] > ends[1]):
            raise invalid("sigmas", list(self.sigmas), f"noise levels between sigma(eps) = {ends[1].item():.4g} "
                          f"and sigma(T) = {ends[0].item():.4g}")
        sigmas = torch.cat([ends[:1], torch.tensor(self.sigmas, dtype=torch.float64), ends[1:]])
        return times_at_log_snr(sde, -torch.log(sigmas), eps)

    def step(self, state, x, t, t_next):
        """x̂₀ = f(x, t); re-noised to x_{t_next} = a x̂₀ + s z, or x̂₀ itself after the last evaluation."""
        x0 = state.sde.x0_from_score(x, state.score(x, t), t)
        return x0 if state.last else state.sde.marginal_sample(x0, t_next, randn_like(x, state.generator))
