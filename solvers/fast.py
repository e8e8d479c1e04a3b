"""Few-step deterministic samplers of the probability-flow ODE: DDIM, Heun (EDM) and DPM-Solver++ (2M, 3M).

Each is written through the kernel x_t = a(t) x_0 + s(t) z alone, so it runs on any SDE, including one whose
a and s come from a numeric table. Time grids are uniform in t, uniform in λ = log(a/s), or ρ-spaced in
σ = s/a (Karras et al. 2022); λ and σ are mapped back to t by bisection.
"""

import torch

from sde.errors import check_choice, check_int, check_number

from .common import CountedScore, Solver
from .grids import GRIDS, make_grid
from .schedule import tune_grid

LOWER_ORDER_FINAL_BELOW = 15


def _path(sde, t):
    """a(t), s(t) in float64 on the CPU."""
    return sde.a(t).double(), sde.s(t).double()


def _on(x, *tables):
    return [v.to(device=x.device, dtype=x.dtype) for v in tables]


class GridSolver(Solver):
    """A fixed-step solver on ``steps`` intervals of a time grid: 'time', 'logsnr', 'karras' (with ``rho``), or
    'tuned': fitted to the model by ``solvers.schedule.tune_grid`` on ``pilots`` prior draws against a
    ``reference_steps`` DPM-Solver++(3M) solve, once per model, SDE, event shape and end time (a model trained
    further after that needs a new solver). The tuning's evaluations (on the pilots) are not in the NFE the
    call reports; ``tuning`` says what it cost.
    """

    def __init__(self, steps, grid, rho, eps, denoise, pilots=256, reference_steps=500, seed=0):
        super().__init__(eps, denoise)
        self.steps = check_int("steps", steps)
        self.grid = check_choice("grid", grid, GRIDS + ("tuned",))
        self.rho = check_number("rho", rho)
        self.pilots = check_int("pilots", pilots)
        self.reference_steps = check_int("reference_steps", reference_steps)
        self.seed = int(seed)
        self._tuned = {}

    @property
    def tuning(self):
        """What the last tuning found and cost: times, start, loss_start, loss, solves, nfe (per pilot), pilots."""
        return self._tuned[self._last][1] if self._tuned else None

    def solve(self, sde, score, x, eps, generator):
        return self.integrate(sde, score, x, self.times(sde, score.score_fn, x, eps))

    def times(self, sde, score_fn, x, eps):
        if self.grid != "tuned":
            return make_grid(sde, self.steps, eps, self.grid, self.rho)
        self._last = (id(sde), id(score_fn), tuple(x.shape[1:]), x.dtype, str(x.device), eps)
        if self._last not in self._tuned:
            self._tuned[self._last] = self.tune(sde, score_fn, x, eps)
        return self._tuned[self._last][0]

    def tune(self, sde, score_fn, x, eps):
        gen = torch.Generator(x.device).manual_seed(self.seed)
        pilots = sde.prior_sample((self.pilots, *x.shape[1:]), gen, x.device, x.dtype)
        score = CountedScore(score_fn)
        fine = DPMSolver(self.reference_steps, order=3, grid="logsnr")
        t, info = tune_grid(lambda t, x: self.integrate(sde, score, x, t),
                            lambda x: fine.integrate(sde, score, x, fine.times(sde, score_fn, x, eps)),
                            sde, pilots, self.steps, eps, rho=self.rho)
        return t, dict(info, times=t, nfe=score.nfe, pilots=self.pilots)


class DDIM(GridSolver):
    """DDIM: the deterministic first-order solver of the probability-flow ODE (exact in its linear part):

        ε̂ = −s_i ∇log p_{t_i}(x_i),   x̂_0 = (x_i − s_i ε̂) / a_i,   x_{i+1} = a_{i+1} x̂_0 + s_{i+1} ε̂.

    ``grid``: time, logsnr, karras (with ``rho``) or tuned (see GridSolver). NFE = steps.
    """

    def __init__(self, steps=100, grid="karras", rho=7.0, eps=None, denoise=False, pilots=256, reference_steps=500,
                 seed=0):
        super().__init__(steps, grid, rho, eps, denoise, pilots, reference_steps, seed)

    def integrate(self, sde, score, x, t64):
        t, a, s = _on(x, t64, *_path(sde, t64))
        for i in range(len(t64) - 1):
            e = -s[i] * score(x, t[i])
            x = a[i + 1] * ((x - s[i] * e) / a[i]) + s[i + 1] * e
        return x


class Heun(Solver):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) in y = x/a and σ = s/a, where the ODE is
    dy/dσ = (y − D(y))/σ = ε̂ = −s ∇log p_t(a y):

        d = ε̂(y_i, σ_i),   ỹ = y_i + (σ_{i+1} − σ_i) d,   y_{i+1} = y_i + (σ_{i+1} − σ_i) (d + ε̂(ỹ, σ_{i+1})) / 2,

    on ``steps`` intervals ρ-spaced in σ from σ(T) to σ(eps). NFE = 2·steps (2·steps − 1 when eps = 0 makes the
    last σ zero: that step is Euler, as in EDM).
    """

    def __init__(self, steps=30, rho=7.0, eps=None, denoise=False):
        super().__init__(eps, denoise)
        self.steps = check_int("steps", steps)
        self.rho = check_number("rho", rho)

    def solve(self, sde, score, x, eps, generator):
        t64 = make_grid(sde, self.steps, eps, "karras", self.rho)
        a64, s64 = _path(sde, t64)
        correct = (s64[1:] > 0).tolist()
        t, a, s, sigma = _on(x, t64, a64, s64, s64 / a64)
        y = x / a[0]
        for i in range(self.steps):
            d = -s[i] * score(a[i] * y, t[i])
            y_next = y + (sigma[i + 1] - sigma[i]) * d
            if correct[i]:
                d = 0.5 * (d - s[i + 1] * score(a[i + 1] * y_next, t[i + 1]))
                y_next = y + (sigma[i + 1] - sigma[i]) * d
            y = y_next
        return a[-1] * y


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


class DPMSolver(GridSolver):
    """DPM-Solver++(2M)/(3M) (Lu et al. 2022): a multistep exponential integrator in λ = log(a/s) with the data
    prediction D = x̂_0 = (x + s² ∇log p_t)/a,

        x_{i+1} = (s_{i+1}/s_i) x_i − a_{i+1} (e^{−h} − 1) D̄,   h = λ_{i+1} − λ_i,

    D̄ = D_i at order 1, (1 + 1/(2r)) D_i − 1/(2r) D_{i−1} with r = h_{i−1}/h at order 2, and the third-order
    multistep correction at order 3 (see dpm_weights). The first steps use orders 1, 2, ...; with
    ``lower_order_final`` and fewer than 15 steps the last steps count down the same way; a last step onto
    s = 0 (eps = 0) is first order. ``grid``: logsnr, time, karras or tuned (see GridSolver). NFE = steps.
    """

    def __init__(self, steps=40, order=2, grid="logsnr", rho=7.0, lower_order_final=True, eps=None, denoise=False,
                 pilots=256, reference_steps=500, seed=0):
        super().__init__(steps, grid, rho, eps, denoise, pilots, reference_steps, seed)
        self.order = check_choice("order", order, (1, 2, 3))
        self.lower_order_final = bool(lower_order_final)

    def integrate(self, sde, score, x, t64):
        steps = len(t64) - 1
        a64, s64 = _path(sde, t64)
        lam = torch.log(a64) - torch.log(s64)
        orders = _step_orders(steps, self.order, self.lower_order_final, bool(torch.isinf(lam[-1])))
        t, a, s, ratio, w = _on(x, t64, a64, s64, s64[1:] / s64[:-1], dpm_weights(lam, a64, orders))
        history = []
        for i in range(steps):
            history = [(x + s[i] ** 2 * score(x, t[i])) / a[i]] + history[:2]
            x = ratio[i] * x + sum(w[i, j] * d for j, d in enumerate(history[:orders[i]]))
        return x
