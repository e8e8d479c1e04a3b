"""Few-step deterministic samplers of the probability-flow ODE: DDIM, Heun (EDM) and DPM-Solver++ (2M, 3M).

Each is a step written through the kernel x_t = a(t) x_0 + s(t) z alone (the SDE's x̂₀, ε̂, σ and λ), so it runs on
any SDE, including one whose a and s come from a numeric table, and on any time grid (solvers.grids).
"""

import torch

from sde.errors import check_choice

from .common import SteppingSolver
from .grids import make_grid  # noqa: F401  (imported from here by older code)

LOWER_ORDER_FINAL_BELOW = 15


class DDIM(SteppingSolver):
    """DDIM: the deterministic first-order solver of the probability-flow ODE (exact in its linear part):

        ε̂ = −s_i ∇log p_{t_i}(x_i),   x̂_0 = (x_i − s_i ε̂) / a_i,   x_{i+1} = a_{i+1} x̂_0 + s_{i+1} ε̂.

    ``grid``: a Grid, 'time', 'logsnr', 'karras' (with ``rho``), 'tuned' (fitted to the model on ``pilots`` prior
    draws against a ``reference_steps`` DPM-Solver++(3M) solve; see solvers.grids.Tuned) or a list of times.
    NFE = steps.
    """

    order = 1

    def __init__(self, steps=100, grid="karras", rho=7.0, eps=None, denoise=False, pilots=256, reference_steps=500,
                 seed=0):
        super().__init__(steps, grid, rho, eps, denoise, pilots, reference_steps, seed)

    def step(self, state, x, t, t_next):
        sde = state.sde
        e = sde.eps_from_score(state.score(x, t), t)
        return sde.marginal_sample(sde.x0_from_eps(x, e, t), t_next, e)


class Heun(SteppingSolver):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) in y = x/a and σ = s/a, where the ODE is
    dy/dσ = ε̂ = −s ∇log p_t(a y); a step of Euler in y (which is DDIM's) is corrected by the trapezoid rule:

        d = ε̂(x_i, t_i),   ỹ = y_i + (σ_{i+1} − σ_i) d,   y_{i+1} = y_i + (σ_{i+1} − σ_i) (d + ε̂(a_{i+1} ỹ, t_{i+1})) / 2,

    on ``steps`` intervals of the grid (default ρ-spaced in σ). NFE = 2·steps (2·steps − 1 when eps = 0 makes the
    last σ zero: that step is Euler, as in EDM).
    """

    order = 2

    def __init__(self, steps=30, rho=7.0, eps=None, denoise=False, grid="karras", pilots=256, reference_steps=500,
                 seed=0):
        super().__init__(steps, grid, rho, eps, denoise, pilots, reference_steps, seed)

    def start(self, state, x):
        state.correct = (state.sde.s(state.times[1:]) > 0).tolist()

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


def dpm_weights(lam, a, orders):
    """Weights w (steps, 3) of the data predictions D_i, D_{i−1}, D_{i−2} in DPM-Solver++'s update
    x_{i+1} = (s_{i+1}/s_i) x_i + Σ_j w[i, j] D_{i−j}; with h = λ_{i+1} − λ_i, r_k = h_{i−k−1}/h, φ_1 = e^{−h} − 1,
    φ_2 = φ_1/h + 1, φ_3 = φ_2/h − 1/2 and the divided differences Δ_0 = (D_i − D_{i−1})/r_0,
    Δ_1 = (D_{i−1} − D_{i−2})/r_1:

        order 1:  −a φ_1 D_i
        order 2:  −a φ_1 (D_i + Δ_0 / 2)
        order 3:  −a φ_1 D_i + a φ_2 (Δ_0 + r_0/(r_0 + r_1) (Δ_0 − Δ_1)) − 2 a φ_3 (Δ_0 − Δ_1)/(r_0 + r_1)

    (Δ_0 − Δ_1)/(r_0 + r_1) ≈ h² D''/2, and the λ-integral needs −a φ_3 h² D'': hence the 2, which the reference
    implementations (dpm-solver, diffusers) omit, leaving their 3M second order.
    """
    h = lam[1:] - lam[:-1]
    h1 = torch.cat([h[:1], h[:-1]])
    h2 = torch.cat([h1[:1], h1[:-1]])
    r0, r1 = h1 / h, h2 / h
    an = a[1:]
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    zero = torch.zeros_like(h)
    delta0 = torch.stack([1 / r0, -1 / r0, zero], 1)
    delta1 = torch.stack([zero, 1 / r1, -1 / r1], 1)
    first = torch.stack([-an * phi1, zero, zero], 1)
    second = first - 0.5 * (an * phi1)[:, None] * delta0
    diff = (delta0 - delta1) / (r0 + r1)[:, None]
    third = first + (an * phi2)[:, None] * (delta0 + r0[:, None] * diff) - 2 * (an * phi3)[:, None] * diff
    k = torch.tensor(orders)[:, None]
    return torch.where(k == 1, first, torch.where(k == 2, second, third))


class DPMSolver(SteppingSolver):
    """DPM-Solver++(2M)/(3M) (Lu et al. 2022): a multistep exponential integrator in λ = log(a/s) with the data
    prediction D = x̂_0 = (x + s² ∇log p_t)/a,

        x_{i+1} = (s_{i+1}/s_i) x_i − a_{i+1} (e^{−h} − 1) D̄,   h = λ_{i+1} − λ_i,

    D̄ = D_i at order 1, (1 + 1/(2r)) D_i − 1/(2r) D_{i−1} with r = h_{i−1}/h at order 2, and the third-order
    multistep correction at order 3 (see dpm_weights). The first steps use orders 1, 2, ...; with
    ``lower_order_final`` and fewer than 15 steps the last steps count down the same way; a last step onto
    s = 0 (eps = 0) is first order. ``grid``: as for DDIM (default logsnr), or 'fit' (solvers.grids.Fitted). NFE =
    steps.
    """

    fits_grid = True

    def __init__(self, steps=40, order=2, grid="logsnr", rho=7.0, lower_order_final=True, eps=None, denoise=False,
                 pilots=256, reference_steps=500, seed=0):
        super().__init__(steps, grid, rho, eps, denoise, pilots, reference_steps, seed)
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
