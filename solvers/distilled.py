"""The sampler of a consistency model: multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
from sde.errors import check_int

from .base import Solver, check_eps, randn_like
from .grids import as_grid


class ConsistencySampler(Solver):
    """Multistep consistency sampling with the model's consistency function f(x, t) = x̂₀(x, t) = (x + s² score)/a:

        x̂₀ = f(x_T, T);   for τ = τ_1 > ... > τ_{steps−1}:  x_τ = a(τ) x̂₀ + s(τ) z,  z ~ N(0, I),   x̂₀ = f(x_τ, τ);

    returns x̂₀. The times τ_i are the first ``steps`` points of ``grid`` (a fixed grid of ``steps`` intervals from
    T to eps, default ρ-spaced in σ). NFE = steps."""

    deterministic = False

    def __init__(self, steps=4, grid="karras", eps=None):
        super().__init__(eps, False)
        self.steps = check_int("steps", steps)
        self.grid = as_grid(grid)
        self.grid.check_steps(self.steps)

    def planned_nfe(self, sde):
        return self.steps

    def solve(self, sde, score, x, eps, generator):
        times = self.grid(sde, self.steps, check_eps(sde, eps)).to(x.device)
        x0 = sde.x0_from_score(x, score(x, times[0]), times[0])
        for tau in times[1:self.steps]:
            x_tau = sde.marginal_sample(x0, tau, randn_like(x, generator))
            x0 = sde.x0_from_score(x_tau, score(x_tau, tau), tau)
        return x0
