"""Fitting a few-step DPM-Solver++ grid to a model, teacher against student (after LD3, Tong et al. 2024, and
Align Your Steps, Sabour et al. 2024): ``pilots`` prior draws x_T (quasi-random: pilot_draws) are carried to eps
by a fine DPM-Solver++(3M) solve (the teacher, x̄_0) and by the few-step solver on the grid being fitted (the
student, x_0(θ)); the grid's interior nodes in λ = log(a/s) are moved by gradient descent (Adam) through the
student's steps.

The grid: λ_i = λ(T) + (λ(eps) − λ(T)) Σ_{j<i} softmax(θ)_j, ordered with its ends fixed; t_i = t(λ_i) by
bisection, with dt/dλ = −2 s² / g² for the gradient.

The objective compares the end points as a distribution, not only as paths:

    L = mean_n δ log(1 + e_n / δ)  +  Δ²,    e_n = |x_0(θ)_n − x̄_0,n|² / d,
    Δ = mean_n w_n [log p(x_0(θ)_n) − log p(x̄_0,n)] / d,   w_n = exp(−e_n / c)  (held constant),

with δ = ``delta`` and c = ``near``.

The first term is a robust distance of paths: the few pilots that the student sends to another mode cost
about δ log(e/δ) rather than e, so they do not buy path accuracy at the expense of the many. Δ is the difference
of the mean log-density per dimension that the samples reach, the quantity a too wide or too narrow mode shows
in; it needs no density: log p(y) − log p(x) = ∫_0^1 (y − x) · ∇log p(x + u (y − x)) du, by the trapezoid rule
on the model's own score at eps, exact for a Gaussian mode, and w_n drops the pairs far apart, where it is not.
Adam runs from each grid in ``starts``; the fit with the lowest objective wins (least squares in MSE alone
traded the distribution for the paths at 10 steps: benchmarks/results/fast.md, grid=tuned).
"""
import time

import torch

from sde.errors import check_int, check_number

from .common import CountedScore, step_time_dtype
from .fast import DPMSolver
from .grids import check_finite_log_snr, make_grid, times_at_log_snr


def times_of(sde, lam, eps):
    """t(λ) for λ from λ(T) down to λ(eps): by bisection, with dt/dλ = 1/(dλ/dt) = −2 s² / g² at the interior
    nodes for the gradient."""
    t0 = times_at_log_snr(sde, lam.detach(), eps)
    slope = -2 * sde.s(t0) ** 2 / sde.g(t0) ** 2
    inner = torch.zeros_like(lam)
    inner[1:-1] = 1
    return t0 + inner * (lam - lam.detach()) * slope


def student(sde, score, x, lam, eps, order=3, lower_order_final=True):
    """DPM-Solver++(order) (solvers.fast.DPMSolver) on the grid λ, differentiable in λ."""
    solver = DPMSolver(len(lam) - 1, order=order, lower_order_final=lower_order_final)
    return solver.integrate(sde, score, x, times_of(sde, lam, eps))


def logp_gap(score, y, x, t, weight=None):
    """mean_n weight_n [log p_t(y_n) − log p_t(x_n)] / d, by the trapezoid rule on the score:
    ½ (y − x) · (∇log p_t(x) + ∇log p_t(y))."""
    d = (y - x).flatten(1)
    delta = 0.5 * (d * (score(x, t) + score(y, t)).flatten(1)).sum(1)
    return (delta if weight is None else weight * delta).mean() / d.shape[1]


def adam(theta, grad, moment, square, k, lr, betas=(0.9, 0.999), eps=1e-8):
    """Adam's k-th step (Kingma and Ba 2015), its moments updated in place:
    m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²,  θ − lr m/(1 − β₁^k) / (√(v/(1 − β₂^k)) + eps)."""
    moment.mul_(betas[0]).add_((1 - betas[0]) * grad)
    square.mul_(betas[1]).add_((1 - betas[1]) * grad**2)
    return theta - lr * moment / (1 - betas[0] ** k) / ((square / (1 - betas[1] ** k)).sqrt() + eps)


def pilot_draws(sde, num, shape, seed, device, dtype):
    """``num`` prior draws prior_std · Φ⁻¹(u), u scrambled Sobol points (randomised quasi-Monte Carlo: the pilots'
    means, the objective's, vary less than with independent draws); independent draws beyond Sobol's 21201
    dimensions."""
    dim = int(torch.Size(shape).numel())
    if dim > torch.quasirandom.SobolEngine.MAXDIM:
        return sde.prior_sample((num, *shape), torch.Generator(device).manual_seed(seed), device, dtype)
    u = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(num, dtype=torch.float64)
    z = torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12))
    return (sde.prior_std() * z).reshape(num, *shape).to(device=device, dtype=dtype)


def fit_grid(sde, score_fn, steps, eps, like, order=3, lower_order_final=True, pilots=1000, teacher_steps=200,
             iterations=150, lr=0.05, delta=1e-2, near=0.05, seed=0, starts=("time", "logsnr"), rho=7.0):
    """(times, info): ``steps`` + 1 times from T to eps (float64, CPU) minimising the objective above for
    DPM-Solver++(``order``) on ``pilots`` prior draws shaped, typed and placed like ``like``, and what the fit
    found and cost: nfe (model evaluations, each on the batch of pilots), seconds, objective_start (the best
    start grid's), objective, mse_start, mse, gap_start, gap (Δ), start, pilots, teacher_steps, iterations."""
    steps, pilots = check_int("steps", steps), check_int("pilots", pilots)
    teacher_steps, iterations = check_int("teacher_steps", teacher_steps), check_int("iterations", iterations)
    lr, delta, near = check_number("lr", lr), check_number("delta", delta), check_number("near", near)
    check_finite_log_snr(sde, eps, "fit")
    clock = time.perf_counter()
    x_T = pilot_draws(sde, pilots, like.shape[1:], int(seed), like.device, like.dtype)
    score = CountedScore(score_fn)
    teacher = DPMSolver(teacher_steps, order=3, grid="logsnr")
    with torch.no_grad():
        target = teacher.integrate(sde, score, x_T, teacher.grid(sde, teacher_steps, eps))
    t_eps = torch.tensor(eps, dtype=step_time_dtype(x_T))

    def objective(lam):
        x = student(sde, score, x_T, lam, eps, order, lower_order_final)
        err = (x - target).flatten(1).pow(2).mean(1)
        gap = logp_gap(score, x, target, t_eps, torch.exp(-err.detach() / near))
        return (delta * torch.log1p(err / delta)).mean() + gap**2, err.mean(), gap

    def descend(start):
        lam0 = sde.log_snr(make_grid(sde, steps, eps, start, rho)).double()
        ends = lam0[[0, -1]]
        theta = torch.log(torch.diff(lam0) / (ends[1] - ends[0])).requires_grad_(True)

        def grid(theta):
            inner = ends[0] + (ends[1] - ends[0]) * torch.cumsum(torch.softmax(theta, 0), 0)[:-1]
            return torch.cat([ends[:1], inner, ends[1:]])

        first, best = None, None
        moment, square = torch.zeros_like(theta), torch.zeros_like(theta)
        for k in range(iterations + 1):
            value, mse, gap = objective(grid(theta))
            now = (value.item(), grid(theta).detach(), mse.item(), gap.item())
            first = first or now
            best = now if best is None or now[0] < best[0] else best
            if k < iterations:
                grad, = torch.autograd.grad(value, theta)
                theta = adam(theta.detach(), grad, moment, square, k + 1, lr).requires_grad_(True)
        return first, best, start

    with torch.enable_grad():
        runs = [descend(start) for start in starts]
    first, best, start = min(runs, key=lambda run: run[1][0])
    info = dict(nfe=score.nfe, seconds=time.perf_counter() - clock, objective_start=first[0], objective=best[0],
                mse_start=first[2], mse=best[2], gap_start=first[3], gap=best[3], start=start, pilots=pilots,
                teacher_steps=teacher_steps, iterations=iterations)
    return times_at_log_snr(sde, best[1], eps), info
