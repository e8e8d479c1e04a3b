"""The probability-flow ODE  dx/dt = f x − ½ g² ∇log p_t,  solved by torchdiffeq."""
import torch
from torchdiffeq import odeint

from .common import Solver, check_choice, check_positive_int

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4")


def check_ode_options(method, rtol, atol, steps, prefix="solver"):
    check_choice("method", method, ADAPTIVE + FIXED, prefix)
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not float(tol) > 0:
            raise ValueError(f"{prefix}.{name}={tol!r} is invalid: expected a number > 0")
    check_positive_int("steps", steps, prefix)


def ode_times(method, t0, t1, steps, like):
    """The times handed to odeint: the two ends for an adaptive method, a uniform grid of ``steps`` for a fixed one."""
    n = 2 if method in ADAPTIVE else steps + 1
    return torch.linspace(t0, t1, n, dtype=like.dtype, device=like.device)


def ode_options(method, ts):
    """Adaptive methods must step exactly onto the end time: beyond it the SDE may be undefined (t < 0)."""
    return {"step_t": ts} if method in ADAPTIVE else None


class ProbabilityFlowODE(Solver):
    """Integrates the probability-flow ODE from T to eps: adaptive (dopri5 by default, with rtol/atol)
    or on a fixed uniform grid of ``steps`` (euler, midpoint, heun2, heun3, rk4)."""

    def __init__(self, method="dopri5", rtol=1e-5, atol=1e-5, steps=100, eps=None, denoise=False):
        super().__init__(eps, denoise)
        check_ode_options(method, rtol, atol, steps)
        self.method, self.rtol, self.atol, self.steps = method, float(rtol), float(atol), steps

    def solve(self, sde, score, x, eps, generator):
        def velocity(t, x):
            return sde.ode_drift(x, t, score(x, t))

        ts = ode_times(self.method, sde.T, eps, self.steps, x)
        return odeint(velocity, x, ts, method=self.method, rtol=self.rtol, atol=self.atol,
                      options=ode_options(self.method, ts))[-1]
