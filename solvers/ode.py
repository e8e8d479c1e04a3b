"""The probability-flow ODE  dx/dt = f x − ½ g² ∇log p_t,  solved by torchdiffeq."""
import torch

from sde.errors import ConfigError, check_choice, check_int, check_number, invalid

from .base import Solver, time_dtype
from .grids import GRIDS, make_grid

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
STAGES = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}  # network evaluations per step
FIXED = tuple(STAGES)


TOLERANCE_MAX = 0.1
"""The loosest rtol and atol an adaptive solve accepts: beyond it the step control stops controlling (at 1e6 the
NLL of a 2-D mixture comes out 180 against 11.7)."""


def check_tolerances(rtol, atol):
    """rtol and atol in (0, TOLERANCE_MAX]."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        try:
            check_number(name, value, maximum=TOLERANCE_MAX)
        except ConfigError:
            raise invalid(name, value, f"a tolerance in (0, {TOLERANCE_MAX:g}], where the adaptive solve "
                                       "controls its error") from None
    return float(rtol), float(atol)


def check_ode_options(method, rtol, atol, steps, grid="time"):
    check_choice("method", method, ADAPTIVE + FIXED)
    check_choice("grid", grid, GRIDS)
    check_tolerances(rtol, atol)
    check_int("steps", steps)


def ode_times(sde, eps, method, steps, grid, like, forward=False):
    """The times handed to odeint, from T to eps (eps to T when ``forward``): the two ends for an adaptive
    method; for a fixed one, ``steps`` intervals uniform in t, in λ = log(a/s) ('logsnr') or ρ = 7-spaced
    in σ = s/a ('karras')."""
    if method in ADAPTIVE:
        ts = torch.tensor([sde.T, eps], dtype=torch.float64)
    else:
        ts = make_grid(sde, steps, eps, grid)
    ts = ts.flip(0) if forward else ts
    return ts.to(device=like.device, dtype=time_dtype(like))


def ode_options(method, ts):
    """Adaptive methods must step exactly onto the end time: beyond it the SDE may be undefined (t < 0)."""
    return {"step_t": ts} if method in ADAPTIVE else None


class ProbabilityFlowODE(Solver):
    """Integrates the probability-flow ODE from T to eps: adaptive (dopri5 by default, with rtol/atol)
    or on a fixed grid of ``steps`` (euler, midpoint, heun2, heun3, rk4) spaced by ``grid``."""

    def __init__(self, method="dopri5", rtol=1e-5, atol=1e-5, steps=100, grid="time", eps=None, denoise=False):
        super().__init__(eps, denoise)
        check_ode_options(method, rtol, atol, steps, grid)
        self.method, self.rtol, self.atol, self.steps, self.grid = method, float(rtol), float(atol), steps, grid

    def planned_nfe(self, sde):
        """A fixed method's stages times its steps (and one with ``denoise``); None for an adaptive one."""
        if self.method in ADAPTIVE:
            return None
        return STAGES[self.method] * self.steps + int(self.denoise)

    def solve(self, sde, score, x, eps, generator):
        def velocity(t, x):
            return sde.ode_drift(x, t, score(x, t))

        ts = ode_times(sde, eps, self.method, self.steps, self.grid, x)
        from torchdiffeq import odeint

        return odeint(velocity, x, ts, method=self.method, rtol=self.rtol, atol=self.atol,
                      options=ode_options(self.method, ts))[-1]
