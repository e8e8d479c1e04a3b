"""Exact likelihood through the probability-flow ODE:

    log p_0(x_0) = log p_T(x_T) + ∫_0^T ∇·h(x_t, t) dt,   h = f x − ½ g² ∇log p_t,

with the divergence exact (one pass per dimension, batched) or Hutchinson's E_v[vᵀ ∂h/∂x v].

method='exponential' integrates the same ODE in λ = log(a/s), where it reads (D = x̂₀, the SDE's data prediction)

    d(x/s)/dλ = e^λ D(x, λ),    log p_eps(x_eps) − log p_T(x_T) = d log(s_T/s_eps) − ∫_{λ_T}^{λ_eps} a tr(∂D/∂x) dλ,

since h = (d log s/dt) x + (dλ/dt) a D and div h = d (d log s/dt) + (dλ/dt) a tr ∂D/∂x; the integrand
a tr(∂D/∂x) = e^{2λ} tr Cov[x_0 | x_t] runs smoothly from 0 (λ → −∞) to d (λ → ∞).
"""
import torch

from sde.errors import ConfigError, check_choice, check_int, check_number, invalid

from .base import CountedScore, GridState, randn_like, step_time_dtype, time_dtype
from .exponential import adams_weights
from .grids import GRIDS, FlooredLogSNR, as_grid
from .ode import ADAPTIVE, FIXED, check_tolerances, ode_options, ode_times

DIVERGENCES = ("auto", "exact", "gaussian", "rademacher")
EXPONENTIAL = "exponential"
LIKELIHOOD_GRIDS = ("auto",) + GRIDS + ("logsnr_floor",)


def exact_divergence(fn, x, max_rows=65536):
    """Returns fn(x) and tr ∂fn/∂x per sample. Copies of the batch are stacked, one per basis vector
    e_i, so that a single backward pass gives e_iᵀ J e_i for a whole chunk of dimensions."""
    n, d = x.shape[0], x[0].numel()
    chunk = max(1, min(d, max_rows // max(n, 1)))
    div = torch.zeros(n, dtype=x.dtype, device=x.device)
    out = None
    for start in range(0, d, chunk):
        c = min(chunk, d - start)
        xs = x.detach().repeat(c, *([1] * (x.ndim - 1))).requires_grad_(True)
        h = fn(xs)
        basis = torch.zeros(c, n, d, dtype=x.dtype, device=x.device)
        idx = torch.arange(c, device=x.device)
        basis[idx, :, start + idx] = 1
        (vjp,) = torch.autograd.grad(h, xs, basis.reshape(h.shape))
        div += (vjp.reshape(c, n, d) * basis).sum((0, 2))
        if out is None:
            out = h[:n].detach()
    return out, div


def hutchinson_divergence(fn, x, v):
    """Returns fn(x) and vᵀ (∂fn/∂x) v per sample, an unbiased estimate of the divergence when E[v vᵀ] = I."""
    x = x.detach().requires_grad_(True)
    h = fn(x)
    (vjp,) = torch.autograd.grad(h, x, v)
    return h.detach(), (vjp * v).reshape(x.shape[0], -1).sum(1)


class ODELikelihood:
    """``likelihood(sde, score_fn, x, generator) -> (nll, nfe)``: per-sample −log p_0(x) in nats.

    method, rtol, atol, steps, grid: as for the probability-flow ODE sampler (integrated from eps up to T), or
    method='exponential': the exponential Adams–Bashforth integrator of ``order`` (1–4) in λ (module docstring):

        x_{i+1} = (s_{i+1}/s_i) x_i + a_{i+1} Σ_j W[i, j] D_{i−j},   ∫ c dλ += Σ_j Q[i, j] c_{i−j}

    (solvers.exponential.adams_weights). NFE = steps: one evaluation at each node but the last, giving D and, in
    the same pass, c = a tr(∂D/∂x) (exact: one backward pass over d stacked copies of the batch; Hutchinson: one backward pass).
    grid 'auto' is 'time' for the torchdiffeq methods and 'logsnr_floor' (FlooredLogSNR with ``sigma_floor``) for 'exponential'.
    divergence: 'exact', 'gaussian' or 'rademacher' (Hutchinson, one probe vector per sample held
    through the solve), or 'auto': exact up to ``exact_max_dim`` dimensions, Rademacher above.

    A fixed-step method checks itself: it solves again with steps // 2 (same probes) and takes the change of the
    mean NLL, |mean(NLL_n − NLL_{n/2})| / d, as its error estimate (the error of the coarser solve; Richardson's
    smaller figure, divided by 2^p − 1, proved unreliable before the asymptotic regime, where this matters).
    'exponential' needs no second solve: the same evaluations combined at order − 1 (order 2 for order 1) give
    a second NLL per point, and its estimate is the mean over points of |NLL_p − NLL_{p−1}| / d (d: dimensions).
    Above ``max_error`` nats per dimension it refuses (a ConfigError naming the setting) rather than report a
    number that may be far off; ``error_estimate`` holds the last estimate (None for adaptive methods).
    """

    def __init__(self, method="dopri5", rtol=1e-5, atol=1e-5, steps=100, grid="auto", eps=1e-5, divergence="auto",
                 exact_max_dim=64, max_error=0.05, order=4, sigma_floor=0.02):
        check_choice("method", method, ADAPTIVE + FIXED + (EXPONENTIAL,))
        check_tolerances(rtol, atol)
        check_int("steps", steps)
        if check_choice("grid", grid, LIKELIHOOD_GRIDS) == "auto":
            grid = "logsnr_floor" if method == EXPONENTIAL else "time"
        self.max_error = check_number("max_error", max_error, strict=False)
        self.error_estimate = None
        self.method, self.rtol, self.atol, self.steps, self.grid = method, float(rtol), float(atol), steps, grid
        self.order = check_choice("order", order, (1, 2, 3, 4))
        self.sigma_floor = check_number("sigma_floor", sigma_floor, strict=False)
        self.time_grid = FlooredLogSNR(self.sigma_floor) if grid == "logsnr_floor" else as_grid(grid)
        self.eps = float(eps)
        self.divergence = check_choice("divergence", divergence, DIVERGENCES)
        self.exact_max_dim = check_int("exact_max_dim", exact_max_dim, 0)

    def estimator(self, dim):
        if self.divergence == "auto":
            return "exact" if dim <= self.exact_max_dim else "rademacher"
        return self.divergence

    def __call__(self, sde, score_fn, x, generator=None):
        before = generator.get_state() if generator is not None else None
        if self.method == EXPONENTIAL:
            (z, delta_logp, nfe), (z_low, delta_low) = self.integrate(sde, score_fn, x, generator)
            nll = -(sde.prior_logp(z) + delta_logp)
            if self.max_error > 0:
                low = -(sde.prior_logp(z_low) + delta_low)
                self.error_estimate = (nll.double() - low.double()).abs().mean().item() / x[0].numel()
                self.check(self.error_estimate, "the NLL of the same evaluations at order "
                           f"{self.order - 1 if self.order > 1 else 2} differs by")
            return nll, nfe
        z, delta_logp, nfe = self.encode(sde, score_fn, x, generator)
        nll = -(sde.prior_logp(z) + delta_logp)
        if self.method in FIXED and self.steps >= 2 and self.max_error > 0:
            after = generator.get_state() if generator is not None else None
            if generator is not None:
                generator.set_state(before)
            z, delta_logp, coarse_nfe = self.encode(sde, score_fn, x, generator, self.steps // 2)
            if generator is not None:
                generator.set_state(after)
            nfe += coarse_nfe
            diff = (nll.double().mean() - (-(sde.prior_logp(z) + delta_logp)).double().mean()).abs().item()
            self.error_estimate = diff / x[0].numel()
            self.check(self.error_estimate, f"the mean NLL moves from {self.steps // 2} steps by")
        return nll, nfe

    def check(self, estimate, what):
        if not estimate <= self.max_error:
            raise ConfigError(f"steps={self.steps} is too coarse for method={self.method!r} on this model: {what} "
                              f"{estimate:.3g} nats/dim, over max_error={self.max_error:g}; raise steps or use "
                              "method=dopri5", ("steps", "method", "max_error"))

    def divergence_fn(self, x, generator):
        """fn ↦ (fn(x), ∇·fn(x)) by the estimator chosen for x's dimension (its Hutchinson probe drawn once)."""
        kind = self.estimator(x[0].numel())
        if kind == "exact":
            return lambda fn, y: exact_divergence(fn, y)
        v = randn_like(x, generator)
        if kind == "rademacher":
            v = v.sign()
        return lambda fn, y: hutchinson_divergence(fn, y, v)

    @torch.no_grad()
    def encode(self, sde, score_fn, x, generator=None, steps=None):
        """Carries x from eps to T along the ODE (a fixed-step method on ``steps`` intervals, default its own):
        returns x_T, ∫_eps^T ∇·h dt (= log p_eps(x) − log p_T(x_T)) and the NFE."""
        if self.method == EXPONENTIAL:
            return self.integrate(sde, score_fn, x, generator, steps)[0]
        if not 0 <= self.eps < sde.T:
            raise invalid("eps", self.eps, f"0 <= eps < T = {sde.T}")
        score = CountedScore(score_fn)
        divergence = self.divergence_fn(x, generator)

        def dynamics(t, state):
            def velocity(y):
                return sde.ode_drift(y, t, score(y, t))

            with torch.enable_grad():
                return divergence(velocity, state[0])

        if self.method in ADAPTIVE:
            ts = ode_times(sde, self.eps, self.method, steps or self.steps, "time", x, forward=True)
        else:
            ts = self.time_grid(sde, check_int("steps", steps or self.steps), self.eps).flip(0)
            ts = ts.to(device=x.device, dtype=time_dtype(x))
        state = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        from torchdiffeq import odeint

        xs, integrals = odeint(dynamics, state, ts, method=self.method, rtol=self.rtol, atol=self.atol,
                               options=ode_options(self.method, ts))
        return xs[-1], integrals[-1], score.nfe

    @torch.no_grad()
    def integrate(self, sde, score_fn, x, generator=None, steps=None):
        """method='exponential': ((x_T, log p_eps(x) − log p_T(x_T), NFE), (x_T, log-ratio)) of the order-p solve
        and of the order-(p − 1) combination of the same evaluations (order 2 for p = 1), see ODELikelihood. The
        grid's times run up from eps to T; ``step`` is applied once per interval."""
        if not 0 < self.eps < sde.T:
            raise invalid("eps", self.eps, f"0 < eps < T = {sde.T} (log_snr must be finite at eps)")
        times = self.time_grid(sde, check_int("steps", steps or self.steps), self.eps).flip(0)
        state = GridState(sde, CountedScore(score_fn), times, x, generator)
        state.divergence = self.divergence_fn(x, generator)
        self.start(state, x)
        zero = torch.zeros(x.shape[0], dtype=step_time_dtype(x), device=x.device)
        solves = [(x, zero), (x, zero)]
        for i in range(state.steps):
            state.i = i
            solves = self.step(state, solves)
        s = sde.s(times[[0, -1]]).double()
        log_s = x[0].numel() * torch.log(s[1] / s[0]).item()
        (z, m), (z_low, m_low) = solves
        return (z, log_s + m, state.score.nfe), (z_low, log_s + m_low)

    def start(self, state, x):
        """Tables of the exponential step, from the grid in float64: s_{i+1}/s_i, a_{i+1}, and W, Q at the order
        and at the order of the estimate."""
        sde, t64 = state.sde, state.times
        lam, s64, a64 = sde.log_snr(t64).double(), sde.s(t64).double(), sde.a(t64).double()
        kind = dict(device=x.device, dtype=x.dtype)
        state.ratio, state.a, state.a_next = (s64[1:] / s64[:-1]).to(**kind), a64.tolist(), a64[1:].to(**kind)
        state.weights = [(W.to(**kind), Q.to(device=x.device, dtype=step_time_dtype(x))) for W, Q in
                         (adams_weights(lam, k) for k in (self.order, self.order - 1 if self.order > 1 else 2))]

    def step(self, state, solves):
        """One evaluation at node i on the first solve's x: D = x̂₀ and c = a tr(∂D/∂x) (state.divergence), kept in
        the history; each solve (x, ∫ c dλ) then steps to node i + 1 with its own weights (adams_weights)."""
        sde, i, t = state.sde, state.i, state.t[state.i]
        with torch.enable_grad():
            d, trace = state.divergence(lambda y: sde.x0_from_score(y, state.score(y, t), t), solves[0][0])
        state.history = [(d, state.a[i] * trace.to(state.t.dtype))] + state.history[:3]
        out = []
        for (y, m), (W, Q) in zip(solves, state.weights):
            hist = state.history[:W.shape[1]]
            out.append((state.ratio[i] * y + state.a_next[i] * sum(W[i, j] * h[0] for j, h in enumerate(hist)),
                        m + sum(Q[i, j] * h[1] for j, h in enumerate(hist))))
        return out
