"""Few-step deterministic samplers of the probability-flow ODE: DDIM, Heun (EDM) and DPM-Solver++ (2M, 3M).

Each is a step written through the kernel x_t = a(t) x_0 + s(t) z alone (the SDE's x̂₀, ε̂, σ and λ), so it runs on
any SDE, including one whose a and s come from a numeric table, and on any time grid (solvers.grids).
"""

import torch

from sde.errors import check_choice, check_number

from .base import SteppingSolver, check_eps
from .exponential import dpm_weights

LOWER_ORDER_FINAL_BELOW = 15


class DDIM(SteppingSolver):
    """DDIM: the deterministic first-order solver of the probability-flow ODE (exact in its linear part):

        ε̂ = −s_i ∇log p_{t_i}(x_i),   x̂_0 = (x_i − s_i ε̂) / a_i,   x_{i+1} = a_{i+1} x̂_0 + s_{i+1} ε̂.

    ``grid``: a Grid (default Karras, ρ = 7), a name, a list of times, or solvers.fitting.TuneGrid (fitted to the
    model before sampling). NFE = steps. ``clip`` = c clamps x̂_0 to [−c, c] and keeps ε̂ (diffusers' clip_sample with
    clip_sample_range c); None: no clipping.

    A grid that says where each step lands (``grid.landings(sde, times)`` → ℓ_i, c_i: solvers.grids.ModelLevels of
    a DDIMScheduler, whose step from level i goes to i − ⌊N/K⌋ whatever level comes next) takes the step there and
    hands the next step c_i times the result:  x_{i+1} = c_i (a(ℓ_i) x̂_0 + s(ℓ_i) ε̂).
    """

    order = 1

    def __init__(self, steps=400, grid="karras", eps=None, denoise=False, clip=None):
        super().__init__(steps, grid, eps, denoise)
        self.clip = None if clip is None else check_number("clip", clip)

    def start(self, state, x):
        landings = getattr(self.grid, "landings", None)
        state.landings = None
        if landings is not None:
            ell, c = landings(state.sde, state.times)
            state.landings = ell.to(state.t), c.to(device=x.device, dtype=x.dtype)

    def step(self, state, x, t, t_next):
        sde = state.sde
        e = sde.eps_from_score(state.score(x, t), t)
        x0 = sde.x0_from_eps(x, e, t)
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        if state.landings is None:
            return sde.marginal_sample(x0, t_next, e)
        ell, c = state.landings
        return c[state.i] * sde.marginal_sample(x0, ell[state.i], e)


class Heun(SteppingSolver):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) in y = x/a and σ = s/a, where the ODE is
    dy/dσ = ε̂ = −s ∇log p_t(a y); a step of Euler in y (which is DDIM's) is corrected by the trapezoid rule:

        d = ε̂(x_i, t_i),   ỹ = y_i + (σ_{i+1} − σ_i) d,   y_{i+1} = y_i + (σ_{i+1} − σ_i) (d + ε̂(a_{i+1} ỹ, t_{i+1})) / 2,

    on ``steps`` intervals of the grid (default ρ-spaced in σ). NFE = 2·steps (2·steps − 1 when eps = 0 makes the
    last σ zero: that step is Euler, as in EDM).
    """

    order = 2

    def __init__(self, steps=80, grid="karras", eps=None, denoise=False):
        super().__init__(steps, grid, eps, denoise)

    @staticmethod
    def corrected(sde, times):
        """Which steps take the trapezoid's second evaluation: those that end at a σ above zero."""
        return sde.s(times[1:]) > 0

    def planned_nfe(self, sde):
        corrections = int(self.corrected(sde, self.times(sde, check_eps(sde, self.eps))).sum())
        return self.steps + corrections + int(self.denoise)

    def start(self, state, x):
        state.correct = self.corrected(state.sde, state.times).tolist()

    def step(self, state, x, t, t_next):
        sde, score = state.sde, state.score
        d = sde.eps_from_score(score(x, t), t)
        x_next = sde.marginal_sample(sde.x0_from_eps(x, d, t), t_next, d)
        if state.correct[state.i]:
            d = 0.5 * (d + sde.eps_from_score(score(x_next, t_next), t_next))
            x_next = sde.marginal_sample(sde.x0_from_eps(x, d, t), t_next, d)
        return x_next


def _step_orders(steps, order, lower_order_final, last_is_infinite):
    """Order of each step: warm up from 1; with lower_order_final (and steps < 15) count down at the end."""
    orders = [min(order, i + 1) for i in range(steps)]
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        orders = [min(k, steps - i) for i, k in enumerate(orders)]
    if last_is_infinite:
        orders[-1] = 1
    return orders


class DPMSolver(SteppingSolver):
    """DPM-Solver++(2M)/(3M) (Lu et al. 2022): a multistep exponential integrator in λ = log(a/s) with the data
    prediction D = x̂_0 = (x + s² ∇log p_t)/a,

        x_{i+1} = (s_{i+1}/s_i) x_i − a_{i+1} (e^{−h} − 1) D̄,   h = λ_{i+1} − λ_i,

    D̄ = D_i at order 1, (1 + 1/(2r)) D_i − 1/(2r) D_{i−1} with r = h_{i−1}/h at order 2, and the third-order
    multistep correction at order 3 (solvers.exponential.dpm_weights). The first steps use orders 1, 2, ...; with
    ``lower_order_final`` and fewer than 15 steps the last steps count down the same way; a last step onto
    s = 0 (eps = 0) is first order. ``grid``: as for DDIM (default logsnr), or solvers.fitting.FitGrid. NFE =
    steps.
    """

    fits_grid = True

    def __init__(self, steps=60, order=3, grid="logsnr", lower_order_final=True, eps=None, denoise=False):
        super().__init__(steps, grid, eps, denoise)
        self.order = check_choice("order", order, (1, 2, 3))
        self.lower_order_final = bool(lower_order_final)

    def start(self, state, x):
        """Tables of the steps' orders, the ratios s_{i+1}/s_i and the weights, from the grid in float64."""
        sde, t64 = state.sde, state.times
        lam = sde.log_snr(t64).double()
        state.orders = _step_orders(state.steps, self.order, self.lower_order_final, bool(torch.isinf(lam[-1])))
        s64 = sde.s(t64).double()
        state.ratio = (s64[1:] / s64[:-1]).to(device=x.device, dtype=x.dtype)
        state.weights = dpm_weights(lam, sde.a(t64).double(), state.orders).to(device=x.device, dtype=x.dtype)

    def step(self, state, x, t, t_next):
        i = state.i
        state.history = [state.sde.x0_from_score(x, state.score(x, t), t)] + state.history[:2]
        return state.ratio[i] * x + sum(state.weights[i, j] * d for j, d in enumerate(state.history[:state.orders[i]]))
