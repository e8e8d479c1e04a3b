"""Time grids from T down to eps. A grid is an object called as ``grid(sde, steps, eps, like=None) -> times``:
steps + 1 times, t_0 = T > t_1 > ... > t_steps = eps, in float64 on the CPU (in ``like``'s dtype and on its device
when given). Uniform in t, uniform in λ = log(a/s), ρ-spaced in σ = s/a, a fixed list (or a file: a fitted grid's
artifact among them), tuned to a model, or fitted to it (Fitted)."""
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sde.errors import ConfigError, check_choice, check_int, check_number, invalid

GRIDS = ("time", "logsnr", "karras")
BISECTIONS = 100
FILE_TYPES = (".txt", ".npy", ".json")


def _bisect(fn, target, lo, hi):
    """t in [lo, hi] with fn(t) = target, for an increasing fn, by BISECTIONS halvings (vectorized over target)."""
    lo, hi = torch.full_like(target, lo), torch.full_like(target, hi)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        below = fn(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def check_finite_log_snr(sde, eps, grid):
    """A grid placed in λ needs λ = log_snr finite at T and at eps (eps = 0 makes it infinite)."""
    lam = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ConfigError(f"grid={grid!r} needs a finite log_snr at both ends; log_snr(eps={eps}) = "
                          f"{lam[1].item()}: choose eps > 0", "grid")


def times_at_log_snr(sde, lam, eps):
    """The times in [eps, T] where log_snr(t) = lam (float64, CPU), by bisection; the ends are set exactly."""
    t = _bisect(lambda t: -sde.log_snr(t), -lam.double(), eps, sde.T)
    t[0], t[-1] = sde.T, eps
    return t


class Grid:
    """``grid(sde, steps, eps, like=None) -> times``: steps + 1 times from sde.T down to eps, strictly decreasing,
    the ends exact. A subclass states ``times(sde, steps, eps)`` in float64 on the CPU. ``solver``, ``score_fn``
    and ``x`` (a batch like the ones to be sampled; default ``like``) are what a grid fitted to a model needs (see
    Tuned); the others ignore them."""

    name = None

    def __call__(self, sde, steps, eps, like=None, solver=None, score_fn=None, x=None):
        t = self.times(sde, check_int("steps", steps), float(eps))
        return t if like is None else t.to(device=like.device, dtype=like.dtype)

    def times(self, sde, steps, eps):
        raise NotImplementedError

    def check_steps(self, steps):
        """Refuses a step count the grid cannot give (a fixed list gives only its own)."""

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class UniformTime(Grid):
    """t_i = T + i/steps · (eps − T)."""

    name = "time"

    def times(self, sde, steps, eps):
        return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


class UniformLogSNR(Grid):
    """Uniform in λ = log(a/s):  λ_i = λ(T) + i/steps · (λ(eps) − λ(T)),  inverted by bisection on the monotone λ(t)
    (so for any process, one with a numeric a, s table included). Needs eps > 0 where s(0) = 0."""

    name = "logsnr"

    def times(self, sde, steps, eps):
        check_finite_log_snr(sde, eps, self.name)
        ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        return times_at_log_snr(sde, ends[0] + u * (ends[1] - ends[0]), eps)


class Karras(Grid):
    """ρ-spaced in σ = s/a (Karras et al. 2022):  σ_i = (σ(T)^{1/ρ} + i/steps · (σ(eps)^{1/ρ} − σ(T)^{1/ρ}))^ρ,
    inverted by bisection on the monotone σ(t); eps = 0 (σ = 0) is allowed."""

    name = "karras"

    def __init__(self, rho=7.0):
        self.rho = check_number("rho", rho)

    def times(self, sde, steps, eps):
        log_sigma = -sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
        if not torch.isfinite(log_sigma[0]):
            raise ConfigError(f"grid='karras' needs a finite sigma(T) = s/a; got {log_sigma[0].exp().item()}", "grid")
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        root = torch.exp(log_sigma / self.rho)
        return times_at_log_snr(sde, -self.rho * torch.log(root[0] + u * (root[1] - root[0])), eps)


def read_times(path):
    """The times a file lists: .txt (numbers separated by white space or commas), .npy (an array), .json (a list,
    or an object whose "times" is one: the artifact a Fitted grid writes)."""
    path = Path(path)
    if path.suffix not in FILE_TYPES:
        raise invalid("path", str(path), f"a file of times ending in {', '.join(FILE_TYPES)}")
    if not path.is_file():
        raise ConfigError(f"path={str(path)!r} is not a file: give a {'/'.join(FILE_TYPES)} list of times", "path")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".json":
            values = json.loads(path.read_text())
            return values["times"] if isinstance(values, dict) and "times" in values else values
        return np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except (ValueError, OSError) as e:
        raise ConfigError(f"path={str(path)!r} cannot be read as a list of times: {e}".splitlines()[0], "path") from None


def _close(value, target, rtol=1e-6):
    """Equal up to the rounding of a float32 copy."""
    return abs(value - target) <= rtol * abs(target)


class FixedTimes(Grid):
    """A given list of times t_0 = T > t_1 > ... > t_N = eps, from ``times`` or from the file ``path`` (.txt, .npy,
    .json). It fixes the step count at N; the list is checked when built (at least two finite times, strictly
    decreasing, all > 0) and against the process when called (t_0 = T and t_N = eps, to a relative 1e-6, then set
    exactly)."""

    def __init__(self, times=None, path=None):
        if (times is None) == (path is None):
            raise ConfigError("a FixedTimes grid takes either times=[T, ..., eps] or path=FILE, not both or neither",
                              ("times", "path"))
        self.path = None if path is None else str(path)
        values = read_times(path) if path is not None else times
        name, shown = ("times", values) if path is None else ("path", self.path)
        try:
            t = torch.as_tensor(np.asarray(list(values) if not hasattr(values, "shape") else values, dtype=np.float64))
        except (TypeError, ValueError):
            raise invalid(name, shown, "a list of times from T down to eps") from None
        if t.ndim != 1 or len(t) < 2 or not torch.isfinite(t).all():
            raise invalid(name, shown, "a flat list of at least two finite times from T down to eps")
        if not (t[1:] < t[:-1]).all():
            raise invalid(name, shown, "times strictly decreasing from T down to eps")
        if not t[-1] > 0:
            raise invalid(name, shown, f"times inside (0, T]; the last is {t[-1].item():g}")
        self.fixed = t

    @property
    def steps(self):
        return len(self.fixed) - 1

    def check_steps(self, steps):
        if steps != self.steps:
            raise invalid("steps", steps, f"{self.steps}, the number of intervals of the grid's {self.steps + 1} times")

    def times(self, sde, steps, eps):
        t = self.fixed.clone()
        if steps != self.steps:
            raise ConfigError(f"the grid's {self.steps + 1} times give {self.steps} steps, not the {steps} asked for")
        if not (_close(t[0].item(), sde.T) and _close(t[-1].item(), eps)):
            raise ConfigError(f"the grid's times run from {t[0].item():g} to {t[-1].item():g}; they must run from "
                              f"T = {sde.T:g} to the solver's end time eps = {eps:g} (set eps to the last time, or "
                              "end the list at eps)")
        t[0], t[-1] = sde.T, eps
        return t

    def __repr__(self):
        given = f"path={self.path!r}" if self.path else f"times={self.fixed.tolist()!r}"
        return f"FixedTimes({given})"


class FittedToModel(Grid):
    """A grid fitted to the solver that steps on it and to the model it samples: ``fit(sde, steps, eps, solver,
    score_fn, x) -> (times, info)``, once per solver, model, process, event shape, dtype, device and end time, then
    reused (a model trained further needs a new grid); ``last_fit`` is the info of the last one used. ``fits``
    says which solvers a subclass can be fitted to."""

    fits = object
    fits_what = "a solver"

    def __init__(self):
        self._fits = {}
        self._last = None

    @property
    def last_fit(self):
        return self._fits[self._last][1] if self._last is not None else None

    def __call__(self, sde, steps, eps, like=None, solver=None, score_fn=None, x=None):
        x = like if x is None else x
        if solver is None or not isinstance(solver, self.fits) or score_fn is None or x is None:
            raise TypeError(f"a {type(self).__name__} grid is fitted to {self.fits_what}, a score and a batch: call it "
                            "with solver=, score_fn=, x=")
        check_int("steps", steps)
        key = (id(solver), id(sde), id(score_fn), steps, tuple(x.shape[1:]), x.dtype, str(x.device), float(eps))
        if key not in self._fits:
            self._fits[key] = self.fit(sde, steps, float(eps), solver, score_fn, x)
        self._last = key
        t = self._fits[key][0]
        return t if like is None else t.to(device=like.device, dtype=like.dtype)

    def fit(self, sde, steps, eps, solver, score_fn, x):
        raise NotImplementedError


class Tuned(FittedToModel):
    """A grid fitted to the solver that steps on it and to the model it samples, by ``solvers.schedule.tune_grid``:
    on ``pilots`` prior draws (seeded by ``seed``) against a ``reference_steps`` DPM-Solver++(3M) solve, starting
    from the best of the three fixed grids (Karras with ``rho``). Fitted once per solver, model, process, event
    shape, dtype, device and end time, then reused (a model trained further needs a new grid); ``tuning`` says what
    the last fit found and cost: times, start, loss_start, loss, solves, nfe (per pilot), pilots. Only deterministic
    solvers can be fitted: the objective compares paths."""

    name = "tuned"

    def __init__(self, pilots=256, reference_steps=500, seed=0, rho=7.0):
        self.pilots = check_int("pilots", pilots)
        self.reference_steps = check_int("reference_steps", reference_steps)
        self.seed = int(seed)
        self.rho = check_number("rho", rho)
        super().__init__()

    @property
    def tuning(self):
        return self.last_fit

    def fit(self, sde, steps, eps, solver, score_fn, like):
        """(times, info) fitted for the integrate method of ``solver`` on pilots shaped and typed like ``like``."""
        from .common import CountedScore
        from .fast import DPMSolver
        from .schedule import tune_grid

        gen = torch.Generator(like.device).manual_seed(self.seed)
        pilots = sde.prior_sample((self.pilots, *like.shape[1:]), gen, like.device, like.dtype)
        score = CountedScore(score_fn)
        fine = DPMSolver(self.reference_steps, order=3, grid="logsnr")
        t, info = tune_grid(lambda t, x: solver.integrate(sde, score, x, t),
                            lambda x: fine.integrate(sde, score, x, fine.times(sde, score_fn, x, eps)),
                            sde, pilots, steps, eps, rho=self.rho)
        return t, dict(info, times=t, nfe=score.nfe, pilots=self.pilots)

    def __repr__(self):
        return (f"Tuned(pilots={self.pilots}, reference_steps={self.reference_steps}, seed={self.seed}, "
                f"rho={self.rho})")


class Fitted(FittedToModel):
    """A grid fitted to the model it samples by ``solvers.fit.fit_grid``, for DPM-Solver++ of the solver's order:
    ``pilots`` quasi-random prior draws (seed ``seed``) against a ``teacher_steps`` DPM-Solver++(3M) solve,
    ``iterations`` Adam steps of rate ``lr`` from each start grid, on a robust path distance plus the squared gap
    of mean log-density.
    Fitted once per solver, model, process, event shape, dtype, device and end time; the last fit is written to
    ``save`` (a .json file: {"times": [...], "fit": what it cost and found}), which any later run loads by path
    (grid=FILE.json, a FixedTimes grid), and ``fitting`` holds what it cost and found: nfe (each on the batch
    of pilots), seconds, objective_start, objective, mse, gap, start, pilots, path."""

    name = "fit"

    def __init__(self, pilots=1000, teacher_steps=200, iterations=150, lr=0.05, seed=0, save=None):
        self.pilots = check_int("pilots", pilots)
        self.teacher_steps = check_int("teacher_steps", teacher_steps)
        self.iterations = check_int("iterations", iterations)
        self.lr = check_number("lr", lr)
        self.seed = int(seed)
        self.save = None if save is None else str(save)
        super().__init__()

    @property
    def fits(self):
        from .fast import DPMSolver

        return DPMSolver

    fits_what = "a DPMSolver"

    @property
    def fitting(self):
        return self.last_fit

    def fit(self, sde, steps, eps, solver, score_fn, x):
        """(times, info) of solvers.fit.fit_grid for the solver's order, the artifact written to ``save``."""
        from .fit import fit_grid

        t, info = fit_grid(sde, score_fn, steps, eps, x, order=solver.order, lower_order_final=solver.lower_order_final,
                           pilots=self.pilots, teacher_steps=self.teacher_steps, iterations=self.iterations,
                           lr=self.lr, seed=self.seed)
        if self.save is not None:
            info["path"] = self.save
            self.write(self.save, t, info, sde, solver)
        return t, info

    @staticmethod
    def write(path, times, info, sde, solver):
        """The artifact: the times (exact float64 round trip) and what the fit cost and found, as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"times": times.tolist(), "process": repr(sde), "solver": repr(solver),
                                    "fit": info}, indent=1) + "\n")


NAMED = {"time": UniformTime, "logsnr": UniformLogSNR, "karras": Karras, "tuned": Tuned, "fit": Fitted}


def as_grid(grid, rho=7.0, **tuning):
    """The grid a solver's ``grid`` option names: a Grid as it is; 'time', 'logsnr', 'karras' (with ``rho``) or
    'tuned' (with ``rho`` and ``tuning``: pilots, reference_steps, seed), 'fit' (Fitted, with ``tuning``'s
    seed); a path ending in .txt, .npy or .json; or a list of times (FixedTimes)."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, str) and grid in NAMED:
        kind = NAMED[grid]
        if kind is Fitted:
            return Fitted(seed=tuning.get("seed", 0))
        return kind(rho=rho) if kind is Karras else kind(rho=rho, **tuning) if kind is Tuned else kind()
    if isinstance(grid, str) and grid.endswith(FILE_TYPES):
        return _fixed_times("path", grid)
    if isinstance(grid, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(grid, (str, bytes)):
        return _fixed_times("times", grid)
    raise ConfigError(f"grid={grid!r} is unknown: choose one of karras, logsnr, time, tuned, a list of times or a "
                      f"file of them ({', '.join(FILE_TYPES)}), or fit (fitted to the model)", "grid")


def _fixed_times(name, value):
    """FixedTimes(name=value), its errors naming the value as the grid option's."""
    try:
        return FixedTimes(**{name: value})
    except ConfigError as e:
        raise ConfigError(re.sub(rf"^{name}=", "grid=", str(e)), "grid") from None


def make_grid(sde, steps, eps, kind="time", rho=7.0, like=None):
    """steps + 1 times from sde.T down to eps: uniform in t ('time'), uniform in λ = log(a/s) ('logsnr'),
    or ρ-spaced in σ = s/a ('karras'): σ_i = (σ_max^{1/ρ} + i/steps (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.

    λ and σ are inverted by vectorized bisection on the monotone σ(t), in float64 on the CPU, once per solve
    (no device synchronization); the result has ``like``'s dtype and device (float64 on the CPU without it).
    """
    check_choice("grid", kind, GRIDS)
    check_int("steps", steps)
    return as_grid(kind, check_number("rho", rho))(sde, steps, eps, like=like)
