"""Grids fitted to a model: a step above the solvers. A GridRecipe (FitGrid, TuneGrid) describes a fit and is
held by a solver as its grid; ``fit_solver`` runs the fit and gives the solver on the FixedTimes it found, with a
record of what it cost and found; the caller decides where to write it (``save_grid``). Fits are kept in a cache
keyed by what they were fitted to: the model's fingerprint (a digest of its parameters and buffers, or of the
oracle's mixture), the process, the solver with its recipe, the event shape, dtype and device.

FitGrid (teacher against student): a few-step DPM-Solver++ grid fitted to a model (after LD3, Tong et al. 2024, and
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

TuneGrid (greedy search): a fixed-step solver's few nodes λ_1 < ... < λ_{N−1} (λ = log(a/s), ends
held at λ(T) and λ(eps)) are moved one at a time, each to whichever nearby position brings the solver's
result on pilot trajectories closest to a fine solve of the same ODE:

    minimize over the nodes   L = mean over pilots x_T of |Φ_grid(x_T) − Φ_fine(x_T)|² / d.

Any deterministic solver Φ is thereby tuned for its own error, at its own budget, on the model it will
sample (in the spirit of Sabour et al. 2024, "Align Your Steps", by a direct greedy search). The search
starts from the best of the uniform-t, uniform-λ and ρ-spaced grids, so it is never worse than those on the
pilots; the cost is paid once per model and budget.
"""
import hashlib
import json
import time
from pathlib import Path

import torch

from sde.errors import ConfigError, check_int, check_number

from .base import CountedScore, check_eps, step_time_dtype
from .deterministic import DPMSolver
from .grids import FixedTimes, GRIDS, GridRecipe, Karras, check_finite_log_snr, make_grid, times_at_log_snr


def times_of(sde, lam, eps):
    """t(λ) for λ from λ(T) down to λ(eps): by bisection, with dt/dλ = 1/(dλ/dt) = −2 s² / g² at the interior
    nodes for the gradient."""
    t0 = times_at_log_snr(sde, lam.detach(), eps)
    slope = -2 * sde.s(t0) ** 2 / sde.g(t0) ** 2
    inner = torch.zeros_like(lam)
    inner[1:-1] = 1
    return t0 + inner * (lam - lam.detach()) * slope


def student(sde, score, x, lam, eps, order=3, lower_order_final=True):
    """DPM-Solver++(order) (solvers.deterministic.DPMSolver) on the grid λ, differentiable in λ."""
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


def fit_grid(sde, score_fn, steps, eps, shape, device="cpu", dtype=torch.float32, order=3, lower_order_final=True,
             pilots=1000, teacher_steps=200, iterations=150, lr=0.05, delta=1e-2, near=0.05, seed=0,
             starts=("time", "logsnr"), rho=7.0):
    """(times, info): ``steps`` + 1 times from T to eps (float64, CPU) minimising the objective of FitGrid for
    DPM-Solver++(``order``) on ``pilots`` prior draws of event ``shape`` (``dtype``, on ``device``), and what the fit
    found and cost: nfe (model evaluations, each on the batch of pilots), seconds, objective_start (the best
    start grid's), objective, mse_start, mse, gap_start, gap (Δ), start, pilots, teacher_steps, iterations."""
    steps, pilots = check_int("steps", steps), check_int("pilots", pilots)
    teacher_steps, iterations = check_int("teacher_steps", teacher_steps), check_int("iterations", iterations)
    lr, delta, near = check_number("lr", lr), check_number("delta", delta), check_number("near", near)
    check_finite_log_snr(sde, eps, "fit")
    clock = time.perf_counter()
    x_T = pilot_draws(sde, pilots, tuple(shape), int(seed), device, dtype)
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


MOVES = (0.5, 0.25, 0.1)


def tune_grid(integrate, reference, sde, x_T, steps, eps, sweeps=5, min_gain=0.01, rho=7.0):
    """Fit ``steps`` + 1 times from T to eps for ``integrate(t, x_T) -> x_0`` against ``reference(x_T)``.

    A sweep tries, for each interior node, a move toward either neighbour by each fraction in MOVES of
    the gap to it, keeping the first that lowers L; it stops after ``sweeps`` sweeps or when one gains less
    than ``min_gain`` (relative). Returns (t, info): t in float64 on the CPU, and info = {start, loss_start,
    loss, solves} (``solves`` runs of ``integrate`` on the pilots, each costing ``steps`` evaluations).
    """
    check_finite_log_snr(sde, eps, "TuneGrid")
    target = reference(x_T)

    def loss(t):
        return (integrate(t, x_T) - target).double().pow(2).mean().item()

    starts = {kind: make_grid(sde, steps, eps, kind, rho) for kind in GRIDS}
    losses = {kind: loss(t) for kind, t in starts.items()}
    start = min(losses, key=losses.get)
    lam, best, solves = sde.log_snr(starts[start]).double(), losses[start], len(starts)
    for _ in range(sweeps if steps > 1 else 0):
        before = best
        for fraction in MOVES:
            for j in range(1, steps):
                for side in (-1, 1):
                    trial = lam.clone()
                    trial[j] = lam[j] + fraction * (lam[j + side] - lam[j])
                    value = loss(times_at_log_snr(sde, trial, eps))
                    solves += 1
                    if value < best:
                        lam, best = trial, value
                        break
        if before - best < min_gain * before:
            break
    info = {"start": start, "loss_start": losses[start], "loss": best, "solves": solves}
    return times_at_log_snr(sde, lam, eps), info


class TuneGrid(GridRecipe):
    """A grid tuned for the deterministic solver that steps on it by ``tune_grid``: on ``pilots`` prior draws
    (seeded by ``seed``) against a ``reference_steps`` DPM-Solver++(3M) solve, starting from the best of the
    three fixed grids (Karras with ``rho``). The record: times, start, loss_start, loss, solves, nfe (per pilot),
    pilots, seconds. Only deterministic solvers can be tuned: the objective compares paths."""

    def __init__(self, pilots=256, reference_steps=500, seed=0, rho=7.0):
        self.pilots = check_int("pilots", pilots)
        self.reference_steps = check_int("reference_steps", reference_steps)
        self.seed = int(seed)
        self.rho = check_number("rho", rho)

    @property
    def fallback(self):
        return Karras(self.rho)

    def check_solver(self, solver):
        if not solver.deterministic:
            raise ConfigError(f"grid={self!r} fits the paths of a deterministic solver, and {type(solver).__name__} "
                              "is stochastic: choose time, logsnr, karras or a list of times", "grid")

    def fit(self, sde, solver, score_fn, eps, shape, device, dtype):
        """(times, info) tuned for the integrate method of ``solver`` on pilots of event ``shape``."""
        gen = torch.Generator(device).manual_seed(self.seed)
        pilots = sde.prior_sample((self.pilots, *shape), gen, device, dtype)
        score = CountedScore(score_fn)
        fine = DPMSolver(self.reference_steps, order=3, grid="logsnr")
        t, info = tune_grid(lambda t, x: solver.integrate(sde, score, x, t),
                            lambda x: fine.integrate(sde, score, x, fine.times(sde, eps)),
                            sde, pilots, solver.steps, eps, rho=self.rho)
        return t, dict(info, nfe=score.nfe, pilots=self.pilots)


class FitGrid(GridRecipe):
    """A grid fitted by ``fit_grid`` to the model for DPM-Solver++ of the solver's order: ``pilots`` quasi-random
    prior draws (seed ``seed``) against a ``teacher_steps`` DPM-Solver++(3M) solve, ``iterations`` Adam steps of
    rate ``lr`` from each start grid, on a robust path distance plus the squared gap of mean log-density. The
    record: nfe (each on the batch of pilots), seconds, objective_start, objective, mse_start, mse, gap_start,
    gap, start, pilots, teacher_steps, iterations. Fits a solver that declares ``fits_grid`` (DPMSolver)."""

    def __init__(self, pilots=1000, teacher_steps=200, iterations=150, lr=0.05, seed=0):
        self.pilots = check_int("pilots", pilots)
        self.teacher_steps = check_int("teacher_steps", teacher_steps)
        self.iterations = check_int("iterations", iterations)
        self.lr = check_number("lr", lr)
        self.seed = int(seed)

    def check_solver(self, solver):
        if not solver.fits_grid:
            raise ConfigError(f"grid={self!r} fits DPM-Solver++ (solver=dpm or fast), not {type(solver).__name__}: "
                              "choose time, logsnr, karras, TuneGrid or a grid file", "grid")

    def fit(self, sde, solver, score_fn, eps, shape, device, dtype):
        """(times, info) of fit_grid for the solver's order and lower_order_final."""
        return fit_grid(sde, score_fn, solver.steps, eps, shape, device, dtype, order=solver.order,
                        lower_order_final=solver.lower_order_final, pilots=self.pilots,
                        teacher_steps=self.teacher_steps, iterations=self.iterations, lr=self.lr, seed=self.seed)


_FITS = {}


def fingerprint(score_fn):
    """A digest of what a score computes, or None where it cannot be told (a plain function): for a module, its
    class, parameters, buffers and the values it holds (an oracle's mixture and process); for a wrapper with a
    ``model`` (models.GuidedScore), that model's with the wrapper's labels and scale."""
    digest = hashlib.sha256()
    if not isinstance(score_fn, torch.nn.Module):
        if not isinstance(getattr(score_fn, "model", None), torch.nn.Module):
            return None
        _feed(digest, {k: v for k, v in vars(score_fn).items() if k != "model"}, 2)
        score_fn = score_fn.model
    digest.update(type(score_fn).__qualname__.encode())
    for name, value in score_fn.state_dict().items():
        digest.update(name.encode())
        _feed(digest, value, 0)
    _feed(digest, {k: v for k, v in vars(score_fn).items() if not k.startswith("_")}, 3)
    return digest.hexdigest()


def _feed(digest, value, depth):
    """Adds ``value`` to ``digest``: tensors by dtype, shape and bytes; numbers and strings by repr; containers
    and plain objects (to ``depth`` levels) by their items."""
    if torch.is_tensor(value):
        value = value.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
    elif isinstance(value, dict) and depth > 0:
        for k in sorted(value, key=str):
            digest.update(str(k).encode())
            _feed(digest, value[k], depth - 1)
    elif isinstance(value, (list, tuple)) and depth > 0:
        for v in value:
            _feed(digest, v, depth - 1)
    elif isinstance(value, torch.nn.Module):
        digest.update(type(value).__qualname__.encode())
        for name, v in value.state_dict().items():
            digest.update(name.encode())
            _feed(digest, v, 0)
    elif hasattr(value, "__dict__") and depth > 0:
        digest.update(type(value).__qualname__.encode())
        _feed(digest, vars(value), depth - 1)
    else:
        digest.update(type(value).__qualname__.encode())


def fit_solver(solver, sde, score_fn, shape, device="cpu", dtype=torch.float32):
    """(solver, record): a solver whose grid is a GridRecipe on the FixedTimes fitted to ``score_fn`` for events of
    ``shape`` (pilots in ``dtype`` on ``device``), and the record: what the recipe found, seconds, nfe, times,
    process and solver (reprs), and ``reused`` (True when the fit came from the cache: fitted before to the same
    model fingerprint, process, solver, shape, dtype and device). Any other solver comes back as it is, with
    record None. A score without a fingerprint (a plain function) is fitted on every call."""
    recipe = getattr(solver, "grid", None)
    if not getattr(recipe, "needs_fit", False):
        return solver, None
    print_ = fingerprint(score_fn)
    key = None if print_ is None else (print_, repr(sde), repr(solver), tuple(shape), str(dtype),
                                       str(torch.device(device)))
    if key is not None and key in _FITS:
        times, record = _FITS[key]
        return solver.with_grid(FixedTimes(times=times)), dict(record, reused=True)
    clock = time.perf_counter()
    times, info = recipe.fit(sde, solver, score_fn, check_eps(sde, solver.eps), tuple(shape), torch.device(device),
                             dtype)
    record = dict(info, seconds=time.perf_counter() - clock, times=times.tolist(), process=repr(sde),
                  solver=repr(solver), reused=False)
    if key is not None:
        _FITS[key] = (times, record)
    return solver.with_grid(FixedTimes(times=times)), record


def fallback(solver):
    """The solver on its grid recipe's plain grid (for previews that should not fit); any other solver as it is."""
    recipe = getattr(solver, "grid", None)
    return solver.with_grid(recipe.fallback) if getattr(recipe, "needs_fit", False) else solver


def save_grid(path, record):
    """Writes a fit's record to ``path`` (.json): {"times": [...] (an exact float64 round trip), "process",
    "solver", "fit": what it cost and found, with "path"}, which a later run loads as grid=PATH (FixedTimes).
    Returns the "fit" part (for a run's metrics)."""
    path = Path(path)
    fit = {k: v for k, v in record.items() if k not in ("times", "process", "solver", "reused")}
    fit["path"] = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"times": record["times"], "process": record["process"], "solver": record["solver"],
                                "fit": fit}, indent=1) + "\n")
    return fit
