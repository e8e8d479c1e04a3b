"""Time grids from T down to eps, as values. A grid is an object called as ``grid(sde, steps, eps, like=None) ->
times``: steps + 1 times, t_0 = T > t_1 > ... > t_steps = eps, in float64 on the CPU (in ``like``'s dtype and on its
device when given). Uniform in t, uniform in λ = log(a/s), ρ-spaced in σ = s/a, uniform in a floored log-SNR, or a
fixed list (or a file: a fitted grid's artifact among them).

A GridRecipe is the description of a grid still to be fitted to a model (solvers.fitting: FitGrid, TuneGrid); a
solver holds it as its grid, and solvers.fitting.fit_solver turns it into FixedTimes before sampling."""
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
    """t in [lo, hi] with fn(t) = target, for an increasing fn, by up to BISECTIONS halvings (vectorized over
    target), ending early once a halving leaves every bracket as it was: from there on none would change it."""
    lo, hi = torch.full_like(target, lo), torch.full_like(target, hi)
    for _ in range(BISECTIONS):
        mid = 0.5 * (lo + hi)
        below = fn(mid) < target
        new_lo, new_hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        if torch.equal(new_lo, lo) and torch.equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
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
    the ends exact. A subclass states ``times(sde, steps, eps)`` in float64 on the CPU."""

    name = None
    needs_fit = False

    def __call__(self, sde, steps, eps, like=None):
        t = self.times(sde, check_int("steps", steps), float(eps))
        return t if like is None else t.to(device=like.device, dtype=like.dtype)

    def times(self, sde, steps, eps):
        raise NotImplementedError

    def check_steps(self, steps):
        """Refuses a step count the grid cannot give (a fixed list gives only its own)."""

    def check_solver(self, solver):
        """Refuses a solver the grid cannot serve (every fixed grid serves every stepping solver)."""

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


class FlooredLogSNR(Grid):
    """Uniform in v = −½ log(σ² + σ_f²), σ = s/a, σ_f = ``sigma_floor``: uniform in λ = log(a/s) where σ ≫ σ_f,
    with a few long steps below σ_f, where data without structure finer than σ_f leave the ODE and its divergence
    nearly constant. sigma_floor = 0 is the 'logsnr' grid. Needs eps > 0 where s(0) = 0."""

    name = "logsnr_floor"

    def __init__(self, sigma_floor=0.02):
        self.sigma_floor = check_number("sigma_floor", sigma_floor, strict=False)

    def times(self, sde, steps, eps):
        check_finite_log_snr(sde, eps, self.name)
        lam = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
        floor2 = self.sigma_floor**2
        v = -0.5 * torch.logaddexp(-2 * lam, torch.tensor(np.log(floor2) if floor2 > 0 else -np.inf))
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        v = v[0] + u * (v[1] - v[0])
        sigma2 = floor2 * torch.expm1(-2 * v - np.log(floor2)) if floor2 > 0 else torch.exp(-2 * v)
        grid = -0.5 * torch.log(sigma2)
        grid[0], grid[-1] = lam[0], lam[1]
        return times_at_log_snr(sde, grid, eps)


SPACINGS = ("leading", "trailing", "linspace")


def scheduler_timesteps(num_train_timesteps, steps, spacing="leading", steps_offset=0):
    """The integer training timesteps a diffusers scheduler visits in ``steps`` steps, first (noisiest) first:

        leading   i_k = k ⌊N/K⌋ + offset,  k = K−1 … 0
        trailing  i_k = round(N − k N/K) − 1,  k = 0 … K−1
        linspace  i_k = round(k (N − 1)/(K − 1)),  k = K−1 … 0
    """
    n, k = check_int("num_train_timesteps", num_train_timesteps, 2), check_int("steps", steps)
    check_choice("timestep_spacing", spacing, SPACINGS)
    if k > n:
        raise invalid("steps", k, f"at most the model's {n} training timesteps")
    if spacing == "leading":
        idx = (np.arange(k) * (n // k)).round()[::-1] + int(steps_offset)
    elif spacing == "trailing":
        idx = np.round(np.arange(n, 0, -n / k)) - 1
    else:
        idx = np.linspace(0, n - 1, k).round()[::-1]
    return torch.as_tensor(idx.astype(np.int64).copy())


class ModelLevels(Grid):
    """The steps at a discrete model's own training levels, placed as its scheduler places them (scheduler_timesteps:
    ``timestep_spacing``, ``steps_offset``), as times of our process: step k starts at t_k with σ(t_k) = σ_{i_k},
    the model's σ_i = √((1 − ᾱ_i)/ᾱ_i) given as the value ``sigmas``. The first time is the first level's (below T
    where the spacing starts below the top level: the sampler's x_T is taken to be there, as the scheduler takes
    it); a first level above σ(T) is refused (no time of the process holds it). Step k lands (``landings``) at the
    next start, or with ``stride`` (DDIMScheduler) at level i_k − ⌊N/K⌋, which the next start i_{k+1} differs from
    under linspace and trailing spacing where K does not divide N: the state is then taken to t_{k+1} as the
    scheduler takes it, at the same x/√(a² + s²) (its own variable). Below level 0 a step lands at σ = 0, t = 0 with
    ``final_sigma`` = 0 (diffusers' set_alpha_to_one), else at the time of ``final_sigma`` (without ``stride``, the
    solver's eps where that is the last start's own level). The last landing is the grid's last time. A model
    exposes this grid's options as ``model.grid_options()`` (models.pretrained)."""

    name = "model"

    def __init__(self, sigmas, spacing="leading", steps_offset=0, final_sigma=0.0, stride=False):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        self.spacing = check_choice("timestep_spacing", spacing, SPACINGS)
        self.steps_offset = int(steps_offset)
        self.final_sigma = float(final_sigma)
        self.stride = bool(stride)

    def levels(self, steps):
        """The model levels each step starts from and lands at (−1: the final σ), as integer tensors of length
        ``steps``: starts i_k = scheduler_timesteps; landings i_{k+1} (−1 after the last), or i_k − ⌊N/K⌋ with
        ``stride``."""
        n = len(self.sigmas)
        start = scheduler_timesteps(n, steps, self.spacing, self.steps_offset)
        if self.stride:
            land = start - n // steps
        else:
            land = torch.cat([start[1:], torch.tensor([-1])])
        return start, land.clamp_min(-1)

    def level_times(self, sde, levels, last_start, eps):
        """Times of the levels (−1: the final σ's time, 0 for σ = 0; where the final σ is the last start's own
        level, eps without ``stride`` and that level's time with it: DDIMScheduler's step of length zero)."""
        final = torch.tensor([self.final_sigma], dtype=torch.float64)
        if self.final_sigma == 0:
            end = torch.zeros(1, dtype=torch.float64)
        elif self.stride or self.final_sigma < float(self.sigmas[last_start]):
            end = sde.time_at_sigma(final, 1e-9).cpu()
        else:
            end = torch.tensor([eps], dtype=torch.float64)
        t = sde.time_at_sigma(self.sigmas[levels.clamp_min(0)], 1e-9).cpu()
        return torch.where(levels >= 0, t, end)

    def check_top(self, sde, level):
        """The first level must lie within the process: σ_{i_0} <= σ(T) (to float32 rounding)."""
        top = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        sigma = float(self.sigmas[level])
        if sigma > top * (1 + 1e-6):
            raise ConfigError(f"grid=model: the scheduler's first timestep {int(level)} has sigma = {sigma:.6g}, above "
                              f"sigma(T) = {top:.6g} of {sde!r}: sample under a process that reaches it (a larger T) "
                              "or with timestep_spacing='leading'", "grid")

    def times(self, sde, steps, eps):
        start, land = self.levels(steps)
        self.check_top(sde, start[0])
        t = self.level_times(sde, start, start[-1], eps)
        return torch.cat([t, self.level_times(sde, land[-1:], start[-1], eps)])

    def landings(self, sde, times):
        """For a solve on ``times`` (this grid's): the time ℓ_k each step lands at, and the factor
        c_k = √(a² + s²)(t_{k+1}) / √(a² + s²)(ℓ_k) that takes the landed state to the next start at the same
        x/√(a² + s²) (1 under a variance-preserving process, and wherever ℓ_k = t_{k+1})."""
        start, land = self.levels(len(times) - 1)
        ell = self.level_times(sde, land, start[-1], float(times[-1]))
        ell[-1] = times[-1]
        ell = torch.where(land == torch.cat([start[1:], torch.tensor([-1])]), times[1:], ell)

        def scale(t):
            return torch.sqrt(sde.a(t) ** 2 + sde.s(t) ** 2).double()
        return ell, scale(times[1:]) / scale(ell)

    def __repr__(self):
        return (f"ModelLevels(levels={len(self.sigmas)}, spacing={self.spacing!r}, steps_offset={self.steps_offset}, "
                f"final_sigma={self.final_sigma:g}{', stride=True' if self.stride else ''})")


def read_times(path):
    """The times a file lists: .txt (numbers separated by white space or commas), .npy (an array), .json (a list,
    or an object whose "times" is one: the artifact solvers.fitting.save_grid writes)."""
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


class GridRecipe(Grid):
    """A grid to be fitted to the model it will sample, described but not yet computed (solvers.fitting.FitGrid,
    TuneGrid): solvers.fitting.fit_solver fits it and gives the solver on the FixedTimes found; called as a grid
    it refuses. ``fallback`` is the fixed grid it stands for where no fit is wanted (a cheap preview)."""

    needs_fit = True
    fallback = UniformLogSNR()

    def __call__(self, sde, steps, eps, like=None):
        raise ConfigError(f"grid={self!r} is fitted to a model before sampling: use solvers.fitting.fit_solver "
                          "(scoresde.Pipeline.sample does) or solvers.fitting.fallback for its plain grid", "grid")


NAMED = {"time": UniformTime, "logsnr": UniformLogSNR, "karras": Karras, "logsnr_floor": FlooredLogSNR}
RENAMED = {"tuned": "solvers.fitting.TuneGrid", "fit": "solvers.fitting.FitGrid"}


def as_grid(grid):
    """The grid a solver's ``grid`` option names: a Grid as it is; 'time', 'logsnr', 'karras' (ρ = 7),
    'logsnr_floor' (NAMED, each with its defaults); a path ending in .txt, .npy or .json; or a list of times
    (FixedTimes)."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, str) and grid in NAMED:
        return NAMED[grid]()
    if isinstance(grid, str) and grid in RENAMED:
        path = RENAMED[grid]
        raise ConfigError(f"grid={grid!r} is now fitted to the model by {path}: grid={{_target_:{path}}} (in Python "
                          f"{path.rsplit('.', 1)[1]}())", "grid")
    if isinstance(grid, str) and grid.endswith(FILE_TYPES):
        return _fixed_times("path", grid)
    if isinstance(grid, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(grid, (str, bytes)):
        return _fixed_times("times", grid)
    raise ConfigError(f"grid={grid!r} is unknown: choose one of karras, logsnr, time, logsnr_floor, a list of times "
                      f"or a file of them ({', '.join(FILE_TYPES)}), or a grid fitted to the model "
                      "(solvers.fitting.FitGrid, TuneGrid)", "grid")


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
    grid = Karras(rho) if kind == "karras" else NAMED[kind]()
    return grid(sde, steps, eps, like=like)
