"""What every solver shares: the score-call counter, checks, the final denoising step, and the loop of a solver
that steps over a time grid."""
import copy

import torch

from sde.errors import check_int, invalid

from .grids import as_grid


class CountedScore:
    """Wraps score_fn(x, t) to count its evaluations (NFE) and give it per-sample times of shape (N,)."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x, t):
        self.nfe += 1
        t = torch.as_tensor(t, dtype=time_dtype(x), device=x.device)
        return self.score_fn(x, t.expand(x.shape[0]) if t.ndim == 0 else t)


def time_dtype(x):
    """Times are held in x's dtype, but never below float32 (bfloat16 would round T = 0.999 to 1)."""
    return torch.promote_types(x.dtype, torch.float32)


def step_time_dtype(x):
    """The dtype of the times a step is handed: float64, so that a(t), s(t) and their ratios are exact to float64,
    except on a device without float64 (MPS), where x's time dtype."""
    return torch.float64 if x.device.type in ("cpu", "cuda") else time_dtype(x)


def tweedie_denoise(sde, score, x, t):
    """E[x_0 | x_t] = (x_t + s(t)² ∇log p_t(x_t)) / a(t)  (SDE.x0_from_score)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return sde.x0_from_score(x, score(x, t), t)


def check_eps(sde, eps):
    """The end time of sampling: eps if given, else the SDE's own sampling_eps."""
    eps = sde.sampling_eps if eps is None else float(eps)
    if not 0 <= eps < sde.T:
        raise invalid("eps", eps, f"0 <= eps < T = {sde.T}")
    return eps


class Solver:
    """A sampler: ``solver(sde, score_fn, x_T, generator) -> (x_0, nfe)``, x_T drawn from the prior.

    ``eps`` is the time sampling stops at (default: the SDE's ``sampling_eps``); ``denoise`` adds a
    last Tweedie step x_0 = (x + s² score) / a at eps (one more evaluation).
    """

    def __init__(self, eps=None, denoise=False):
        self.eps = eps
        self.denoise = bool(denoise)

    @torch.no_grad()
    def __call__(self, sde, score_fn, x, generator=None):
        score = CountedScore(score_fn)
        eps = check_eps(sde, self.eps)
        x = self.solve(sde, score, x, eps, generator)
        if self.denoise:
            x = tweedie_denoise(sde, score, x, eps)
        return x, score.nfe

    def solve(self, sde, score, x, eps, generator):
        raise NotImplementedError

    def planned_nfe(self, sde):
        """The network evaluations one solve under ``sde`` takes, where they are known before it starts (None: the
        solver chooses its steps as it goes)."""
        return None

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def randn_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class GridState:
    """A solve on a time grid in progress, as each step sees it: the process ``sde``, the counted ``score``, the
    ``generator`` of its noise; the grid as ``times`` (float64 on the CPU, for a solver's tables of coefficients)
    and ``t`` (on x's device, in step_time_dtype: the times each step is handed); the index ``i`` of the step under way; and
    ``history``, a multistep solver's memory. A solver may keep tables of its own on it (see ``start``)."""

    def __init__(self, sde, score, times, x, generator=None):
        self.sde, self.score, self.generator = sde, score, generator
        self.times = times
        self.t = times.to(dtype=step_time_dtype(x)).to(x.device)
        self.steps = len(times) - 1
        self.i = 0
        self.history = []

    @property
    def last(self):
        """Whether the step under way ends the grid."""
        return self.i == self.steps - 1


class SteppingSolver(Solver):
    """A solver that is its step: ``step(state, x, t, t_next) -> x`` carries x from t to t_next < t, and the loop
    over the intervals of a time grid, from T down to eps, is written here once. ``order`` is the solver's order of
    convergence (weak order for a stochastic one); ``deterministic`` says whether its path is a function of x_T;
    ``fits_grid`` whether solvers.fitting.FitGrid can fit a grid to it (it needs a differentiable step).

    ``grid`` is a Grid (solvers.grids: a value), a name ('time', 'logsnr', 'karras', 'logsnr_floor'), a list of
    times or a file of them (see grids.as_grid), or a GridRecipe (solvers.fitting.FitGrid, TuneGrid) that
    solvers.fitting.fit_solver replaces by the times it fits; the grid is built for each call with ``steps``
    intervals. A multistep solver keeps its history on the state; ``start(state, x)`` may prepare tables of
    coefficients once per solve.
    """

    order = 1
    deterministic = True
    fits_grid = False
    evaluations_per_step = 1

    def __init__(self, steps, grid="time", eps=None, denoise=False):
        super().__init__(eps, denoise)
        self.steps = check_int("steps", steps)
        self.grid = as_grid(grid)
        self.grid.check_steps(self.steps)
        self.grid.check_solver(self)

    def with_grid(self, grid):
        """A copy of this solver stepping on ``grid`` (anything ``grid`` accepts), its other options kept."""
        solver = copy.copy(self)
        solver.grid = as_grid(grid)
        solver.grid.check_steps(solver.steps)
        solver.grid.check_solver(solver)
        return solver

    def solve(self, sde, score, x, eps, generator):
        return self.integrate(sde, score, x, self.times(sde, eps), generator)

    def planned_nfe(self, sde):
        """steps · evaluations_per_step, and one more with ``denoise``."""
        return self.steps * self.evaluations_per_step + int(self.denoise)

    def times(self, sde, eps):
        """The grid of a solve: steps + 1 times from T to eps, float64 on the CPU."""
        return self.grid(sde, self.steps, eps)

    def integrate(self, sde, score, x, times, generator=None):
        """x carried along ``times`` (float64, CPU, from T down) by one ``step`` per interval."""
        state = GridState(sde, score, times, x, generator)
        self.start(state, x)
        for i in range(state.steps):
            state.i = i
            x = self.step(state, x, state.t[i], state.t[i + 1])
        return x

    def start(self, state, x):
        """Prepares what the steps need before the first (nothing, unless a solver says otherwise)."""

    def step(self, state, x, t, t_next):
        raise NotImplementedError
