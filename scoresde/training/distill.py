"""Distillation: losses with a teacher. A teacher is any score function teacher(x, t) under the student's process
(a trained network, the exact mixture score); the student is trained by the ordinary Trainer, so EMA, checkpoints,
resume and DDP are those of any run.

In the scaled variable y = x/a against σ = s/a the probability-flow ODE is dy/dσ = (y − x̂₀(y, σ))/σ = ε̂, and a
DDIM step from σ to σ' is its exact Euler step, y' = x̂₀ + (σ'/σ)(y − x̂₀)."""
import copy
import math

import torch

from models.guidance import GuidedScore
from sde import expand
from sde.errors import CheckpointError, ConfigError, check_choice, check_int, check_number, invalid
from solvers.base import Solver
from solvers.deterministic import DPMSolver
from solvers.grids import as_grid

METHODS = ("consistency", "progressive", "reflow")
TEACHER_STEPS = ("euler", "heun")
DISTANCES = ("l2", "pseudo_huber")
WEIGHTINGS = ("output", "inverse", "uniform")


def denoised(score_fn, sde, x, t):
    """x̂₀(x, t) = (x + s² score(x, t)) / a of a score function."""
    return sde.x0_from_score(x, score_fn(x, t).to(x.dtype), t)


def ode_step(score_fn, sde, x, t, t_next, method="euler"):
    """One step of the probability-flow ODE from t to t_next (per-sample times, shape (N,)) in y = x/a and σ = s/a:

        'euler' (DDIM):  d = ε̂(x, t),  y' = y + (σ' − σ) d,  i.e.  x' = a' x̂₀ + s' ε̂;
        'heun':          the same, then  d ← ½ (d + ε̂(x', t')) and the step taken again with it (EDM's trapezoid);
                         where σ' = 0 the step stays Euler.
    """
    e = sde.eps_from_score(score_fn(x, t).to(x.dtype), t)
    x_next = sde.marginal_sample(sde.x0_from_eps(x, e, t), t_next, e)
    if method == "heun":
        e2 = sde.eps_from_score(score_fn(x_next, t_next).to(x.dtype), t_next)
        corrected = sde.marginal_sample(sde.x0_from_eps(x, 0.5 * (e + e2), t), t_next, 0.5 * (e + e2))
        x_next = torch.where(expand(sde.s(t_next), x) > 0, corrected, x_next)
    return x_next


def labelled_teacher(teacher, student, guidance=0.0):
    """The teacher as a loss calls it on a batch. For an unconditional student, teacher(x, t); for a student
    given the batch's labels y (the trainer's WithLabels; the null label where cond_drop dropped one), the teacher's
    score of the same labels, guided at scale w (models.GuidedScore):

        s_w(x, t) = (1 + w) s(x, t, y) − w s(x, t, ∅),

    so that the student learns the teacher's map for each class, with guidance w baked in (w = 0: the plain
    class-conditional map, guidance then applied to the student as to any conditional model)."""
    labels = getattr(student, "labels", None)
    if labels is None:
        if guidance:
            raise ConfigError(f"guidance={guidance:g} bakes classifier-free guidance into a conditional student: "
                              "train a conditional student (labelled data)", "guidance")
        return teacher
    if getattr(teacher, "num_classes", None) is None:
        raise ConfigError("a conditional student needs a conditional teacher (one that takes labels): the teacher "
                          f"{type(teacher).__name__} has no classes", "teacher")
    return GuidedScore(teacher, labels, guidance)


def _guided(w):
    return f", guidance={w:g}" if w else ""


def _reduce(per_dim, n):
    return per_dim.reshape(n, -1).mean(1)


class _Grid:
    """The times of a distillation grid (``intervals`` + 1 of them, T down to eps, float64 on the CPU), once per
    process and device."""

    def __init__(self, grid, eps):
        self.grid = as_grid(grid)
        if self.grid.needs_fit:
            raise invalid("grid", grid, "a fixed grid (karras, logsnr, time, a list of times)")
        self.eps = None if eps is None else check_number("eps", eps, strict=False)
        self._cache = {}

    def times(self, sde, intervals, device):
        key = (id(sde), intervals, str(device))
        if key not in self._cache:
            eps = sde.sampling_eps if self.eps is None else self.eps
            if not 0 <= eps < sde.T:
                raise invalid("eps", eps, f"0 <= eps < T = {sde.T}")
            self._cache[key] = self.grid(sde, intervals, eps).to(device)
        return self._cache[key]


class ConsistencyDistillation:
    """Consistency distillation (Song et al. 2023, Algorithm 2). On the grid T = t_0 > t_1 > ... > t_N = t_min
    (``intervals`` = N, ρ-spaced in σ by default), the student's consistency function f_θ(x, t) = x̂₀_θ(x, t) (with
    the 'consistency' parameterization of models.ScoreModel, f_θ(x, t_min) = x / a(t_min) exactly) is trained on

        L(θ) = E_{n, x_0, z} [ λ_n d( f_θ(x_{t_n}, t_n),  f_{θ⁻}(x̂_{t_{n+1}}, t_{n+1}) ) ],
        x_{t_n} = a(t_n) x_0 + s(t_n) z,   x̂_{t_{n+1}} = one teacher ODE step (ode_step: 'euler' or 'heun') t_n → t_{n+1},

    n uniform on {0, ..., N − 1}; d = ‖·‖² averaged over dimensions ('l2') or the pseudo-Huber distance
    √(‖·‖² + c²) − c with c = 0.00054 √D ('pseudo_huber', Song & Dhariwal 2023).
    Weighting: with f_θ = c_skip y + c_out F_θ (c_out = (σ − σ_min)/√(σ² + 1) for σ_data = 1, σ_min = σ(t_N)), 'output'
    takes d on (f_θ − f_θ⁻)/c_out(σ_n), the gap in units of the network output F; 'inverse' is λ_n = 1/(σ_n − σ_{n+1})
    (improved consistency training's); 'uniform' λ_n = 1 (the paper's). Under 'uniform' the small-σ links, where
    c_out → 0, pass almost no gradient to F: f_θ is left wrong there by ~c_out·|F|, far more than the ODE moves, and
    every larger σ inherits the error through its target; 'inverse' repairs the small σ but starves the large
    (1/Δσ ≈ 1/20 at σ = 150), 'output' gives every link an F-gradient of order one.
    θ⁻ = stop-gradient(θ) (``target_ema`` = 0, improved consistency training) or the paper's target network,
    θ⁻ ← μ θ⁻ + (1 − μ) θ after every optimizer step (μ = ``target_ema``, θ⁻ = θ at the start; ``before_step``, kept in
    the checkpoint by ``state_dict``); the run's EMA is what is sampled.
    The student samples by multistep consistency sampling (solvers.distilled.ConsistencySampler).
    """

    method = "consistency"

    def __init__(self, teacher, intervals=40, teacher_step="heun", distance="pseudo_huber", weighting="output",
                 grid="karras", eps=None, target_ema=0.95, guidance=0.0):
        self.teacher = teacher
        self.guidance = check_number("guidance", guidance, strict=False)
        self.intervals = check_int("intervals", intervals)
        self.teacher_step = check_choice("teacher_step", teacher_step, TEACHER_STEPS)
        self.distance = check_choice("distance", distance, DISTANCES)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.target_ema = check_number("target_ema", target_ema, strict=False, maximum=1.0, strict_max=True)
        self._grid = _Grid(grid, eps)
        self._target = None

    @torch.no_grad()
    def before_step(self, model):
        """θ⁻ brought up to the weights θ of ``model`` before an optimizer step: θ⁻ = θ at the first,
        θ⁻ ← μ θ⁻ + (1 − μ) θ after; nothing with target_ema = 0 (θ⁻ = θ)."""
        if not self.target_ema:
            return
        if self._target is None:
            self._target = copy.deepcopy(model).requires_grad_(False)
            return
        mine = self._target.state_dict()
        pairs = [(mine[k], v.detach()) for k, v in model.state_dict().items() if mine[k].is_floating_point()]
        torch._foreach_lerp_([p for p, _ in pairs], [v.to(p) for p, v in pairs], 1.0 - self.target_ema)

    def state_dict(self):
        """The target network's weights θ⁻ (None before the first step or with target_ema = 0)."""
        return {"target": None if self._target is None else copy.deepcopy(self._target.state_dict())}

    def load_state_dict(self, state, model, path="?"):
        """θ⁻ from ``state_dict`` (of the checkpoint ``path``) into a copy of ``model``."""
        weights = (state or {}).get("target")
        if weights is None:
            if self.target_ema:
                raise CheckpointError(f"ckpt={str(path)!r} holds no consistency target network: it cannot resume "
                                      f"distillation with target_ema={self.target_ema}", "ckpt")
            self._target = None
            return
        self._target = copy.deepcopy(model).requires_grad_(False)
        self._target.load_state_dict(weights)

    def target_model(self, model):
        """f_θ⁻: the target network (its labels those of ``model``, a conditional batch's), or ``model``."""
        if self._target is None:
            return model
        labels = getattr(model, "labels", None)
        return self._target if labels is None else type(model)(self._target, labels)

    def times(self, sde, device):
        return self._grid.times(sde, self.intervals, device)

    def __call__(self, model, sde, x0, generator=None):
        return self.per_sample(model, sde, x0, generator).mean()

    @torch.no_grad()
    def target(self, model, sde, x_t, t, t_next, teacher=None):
        """f_{θ⁻}(x̂_{t_{n+1}}, t_{n+1}), x̂ one step of ``teacher`` (default: the teacher) from (x_t, t)."""
        teacher = self.teacher if teacher is None else teacher
        return denoised(self.target_model(model), sde, ode_step(teacher, sde, x_t, t, t_next, self.teacher_step),
                        t_next)

    def per_sample(self, model, sde, x0, generator=None):
        n = x0.shape[0]
        times = self.times(sde, x0.device)
        idx = torch.randint(self.intervals, (n,), generator=generator, device=x0.device)
        t, t_next = times[idx].to(x0.dtype), times[idx + 1].to(x0.dtype)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = sde.marginal_sample(x0, t, z)
        teacher = labelled_teacher(self.teacher, model, self.guidance)
        diff = (denoised(model, sde, x_t, t) - self.target(model, sde, x_t, t, t_next, teacher)).reshape(n, -1)
        sigma = sde.sigma(times.double())
        if self.weighting == "output":
            c_out = (sigma - sigma[-1]) * torch.rsqrt(sigma**2 + 1)
            diff = diff / c_out[idx].to(diff.dtype)[:, None]
        if self.distance == "l2":
            loss = diff.pow(2).mean(1)
        else:
            c = 0.00054 * math.sqrt(diff.shape[1])
            loss = torch.sqrt(diff.pow(2).sum(1) + c * c) - c
        if self.weighting == "inverse":
            loss = loss / (sigma[idx] - sigma[idx + 1]).to(loss.dtype)
        return loss

    def __repr__(self):
        return (f"ConsistencyDistillation(intervals={self.intervals}, teacher_step={self.teacher_step!r}, "
                f"distance={self.distance!r}, weighting={self.weighting!r}, grid={self._grid.grid!r}, "
                f"target_ema={self.target_ema}{_guided(self.guidance)})")


class ProgressiveDistillation:
    """One round of progressive distillation (Salimans & Ho 2022, Algorithm 2). On the student's grid of ``steps``
    intervals t_i and the teacher's grid of steps·substeps intervals, which holds every substeps-th point of the
    student's (the grids are uniform in t, λ or σ^{1/ρ}, so they nest), the teacher takes ``substeps`` DDIM steps
    (2 in the paper; ``teacher_step='heun'``: Heun steps, for a first round from an exact teacher) from (x_t, t)
    to y'' = x''/a at t'' = the student's next time, and the student x̂₀ is regressed on
    the x̃₀ from which one DDIM step lands on y'':

        x̃₀ = (y'' − (σ''/σ) y) / (1 − σ''/σ),   y = x_t / a(t),
        L(θ) = E_{i, x_0, z} [ max(SNR, 1) ‖x̂₀_θ(x_t, t) − x̃₀‖² ],   SNR = a²/s² = 1/σ²  (truncated-SNR weighting),

    averaged over dimensions, i uniform on the student's intervals. The student samples with DDIM at ``steps`` on the
    same grid; as the next round's teacher (substeps = 2), it gives a student of steps/2.
    """

    method = "progressive"

    def __init__(self, teacher, steps=4, substeps=2, grid="karras", eps=None, teacher_step="euler", guidance=0.0):
        self.teacher = teacher
        self.guidance = check_number("guidance", guidance, strict=False)
        self.steps = check_int("steps", steps)
        self.substeps = check_int("substeps", substeps)
        self.teacher_step = check_choice("teacher_step", teacher_step, TEACHER_STEPS)
        self._grid = _Grid(grid, eps)

    def grids(self, sde, device):
        """The student's times and the teacher's, checked to nest."""
        student = self._grid.times(sde, self.steps, device)
        teacher = self._grid.times(sde, self.steps * self.substeps, device)
        if not torch.allclose(teacher[:: self.substeps], student, rtol=1e-9, atol=1e-12):
            raise ConfigError(f"grid={self._grid.grid!r} of {self.steps * self.substeps} steps does not hold the "
                              f"{self.steps}-step grid: choose a grid uniform in t, log-SNR or sigma^(1/rho) (time, "
                              "logsnr, karras)", "grid")
        return student, teacher

    def __call__(self, model, sde, x0, generator=None):
        return self.per_sample(model, sde, x0, generator).mean()

    @torch.no_grad()
    def target(self, sde, x_t, idx, teacher_times, teacher=None):
        """x̃₀ from ``substeps`` steps of ``teacher`` (default: the teacher) from student interval ``idx``'s start."""
        k, teacher = self.substeps, self.teacher if teacher is None else teacher
        x = x_t
        for j in range(k):
            x = ode_step(teacher, sde, x, teacher_times[idx * k + j].to(x.dtype),
                         teacher_times[idx * k + j + 1].to(x.dtype), self.teacher_step)
        t, t_end = teacher_times[idx * k], teacher_times[(idx + 1) * k]
        sigma, sigma_end = sde.sigma(t), sde.sigma(t_end)
        ratio = expand(sigma_end / sigma, x_t)
        y, y_end = x_t / expand(sde.a(t), x_t), x / expand(sde.a(t_end), x_t)
        return ((y_end - ratio * y) / (1 - ratio)).to(x_t.dtype)

    def per_sample(self, model, sde, x0, generator=None):
        n = x0.shape[0]
        student, teacher = self.grids(sde, x0.device)
        idx = torch.randint(self.steps, (n,), generator=generator, device=x0.device)
        t = student[idx].to(x0.dtype)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = sde.marginal_sample(x0, t, z)
        target = self.target(sde, x_t, idx, teacher, labelled_teacher(self.teacher, model, self.guidance))
        weight = expand(torch.clamp(sde.sigma(student[idx]) ** -2, min=1.0).to(x0.dtype), x0)
        return _reduce(weight * (denoised(model, sde, x_t, t) - target) ** 2, n)

    def __repr__(self):
        return (f"ProgressiveDistillation(steps={self.steps}, substeps={self.substeps}, "
                f"teacher_step={self.teacher_step!r}, grid={self._grid.grid!r}{_guided(self.guidance)})")


def check_rectified_flow(sde):
    """Refuses a process whose path is not a = 1 − t, s = t (reflow's straight coupling)."""
    t = torch.linspace(0.01, 0.99 * sde.T, 17, dtype=torch.float64)
    if not (torch.allclose(sde.a(t), 1 - t, atol=1e-6) and torch.allclose(sde.s(t), t, atol=1e-6)):
        raise ConfigError(f"reflow trains a rectified flow (a = 1 - t, s = t); the student's process is {sde!r}: "
                          "use sde=rf", "sde")


def reflow_pairs(teacher, teacher_sde, solver, num, shape, seed=0, batch=10000, device="cpu"):
    """``num`` pairs (z, x̂₀): x_T = teacher_sde.prior_sample(...) drawn in batches of ``batch`` from one generator
    seeded with ``seed`` on ``device``, x̂₀ = solver(teacher_sde, teacher, x_T, generator) (the teacher's own ODE end
    point, as its sampler gives it), z = x_T / prior_std (a unit normal draw)."""
    generator = torch.Generator(device).manual_seed(int(seed))
    noise, ends = [], []
    for lo in range(0, num, batch):
        x_T = teacher_sde.prior_sample((min(batch, num - lo), *shape), generator=generator, device=device)
        x0, _ = solver(teacher_sde, teacher, x_T, generator)
        noise.append(x_T / teacher_sde.prior_std())
        ends.append(x0)
    return torch.cat(noise), torch.cat(ends)


class Reflow:
    """Reflow (Liu et al. 2022): ``pairs`` couples (z, x̂₀ = ODE_teacher(σ_T z)) drawn once (reflow_pairs, with the
    teacher's ``solver``, seeded with ``seed``, so a resumed run draws the same), and a new flow on the straight
    coupling x_t = (1 − t) x̂₀ + t z (the student's process must be the rectified flow a = 1 − t, s = t):

        L(θ) = E_{t ~ U(t_min, T), (z, x̂₀)} ‖ v_θ(x_t, t) − (z − x̂₀) ‖²,   v_θ = f x − ½ g² s_θ (the student's
        probability-flow velocity), averaged over dimensions.

    Its paths are straighter than the teacher's, so a few Euler steps in t sample it (DDIM on the uniform-time grid).
    ``teacher_sde`` is the teacher's process (default: the student's)."""

    method = "reflow"

    def __init__(self, teacher, pairs=20000, solver=None, teacher_sde=None, seed=0, t_min=1e-3, batch=10000):
        self.teacher = teacher
        self.num_pairs = check_int("pairs", pairs)
        self.solver = DPMSolver(steps=50, order=3, grid="logsnr") if solver is None else solver
        if not isinstance(self.solver, Solver):
            raise invalid("solver", solver, "a solver (solvers.Solver)")
        self.teacher_sde = teacher_sde
        self.seed = int(seed)
        self.t_min = check_number("t_min", t_min, strict=False, maximum=1.0, strict_max=True)
        self.batch = check_int("batch", batch)
        self._pairs = None

    def pairs(self, sde, shape, device):
        if self._pairs is None or self._pairs[0].device != torch.device(device):
            teacher_sde = sde if self.teacher_sde is None else self.teacher_sde
            self._pairs = reflow_pairs(self.teacher, teacher_sde, self.solver, self.num_pairs, shape, self.seed,
                                       self.batch, device)
        return self._pairs

    def __call__(self, model, sde, x0, generator=None):
        return self.per_sample(model, sde, x0, generator).mean()

    def per_sample(self, model, sde, x0, generator=None):
        check_rectified_flow(sde)
        if getattr(model, "labels", None) is not None:
            raise ConfigError("reflow trains an unconditional flow on its pairs: a conditional student is "
                              "distilled by consistency or progressive", "method")
        n = x0.shape[0]
        noise, ends = self.pairs(sde, tuple(x0.shape[1:]), x0.device)
        idx = torch.randint(self.num_pairs, (n,), generator=generator, device=x0.device)
        t = self.t_min + (sde.T - self.t_min) * torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
        z, end = noise[idx].to(x0.dtype), ends[idx].to(x0.dtype)
        x_t = expand(1 - t, x0) * end + expand(t, x0) * z
        velocity = sde.ode_drift(x_t, t, model(x_t, t).to(x0.dtype))
        return _reduce((velocity - (z - end)) ** 2, n)

    def __repr__(self):
        return f"Reflow(pairs={self.num_pairs}, solver={self.solver!r}, seed={self.seed}, t_min={self.t_min})"


def distillation(method, teacher, steps, intervals=40, teacher_step="heun", distance="pseudo_huber",
                 weighting="output", substeps=2, pairs=20000, teacher_solver=None, teacher_sde=None, grid="karras",
                 seed=0, target_ema=0.95, guidance=0.0):
    """The loss of ``method`` ('consistency', 'progressive', 'reflow') with its own options (the others are
    ignored): consistency takes intervals, teacher_step, distance, weighting, grid, target_ema, guidance;
    progressive steps, substeps, teacher_step, grid, guidance; reflow pairs, teacher_solver, teacher_sde, seed.
    ``guidance`` is the classifier-free guidance baked into a conditional student (labelled_teacher). ``steps`` is
    the student's step count: for
    consistency it must not exceed ``intervals``."""
    check_choice("method", method, METHODS)
    steps = check_int("steps", steps)
    if method == "consistency":
        if steps > check_int("intervals", intervals):
            raise ConfigError(f"steps={steps} is invalid for consistency distillation on intervals={intervals}: "
                              f"multistep sampling visits at most one time per interval (give steps <= {intervals})",
                              ("steps", "intervals"))
        return ConsistencyDistillation(teacher, intervals, teacher_step, distance, weighting, grid,
                                       target_ema=target_ema, guidance=guidance)
    if method == "progressive":
        return ProgressiveDistillation(teacher, steps, substeps, grid, teacher_step=teacher_step, guidance=guidance)
    return Reflow(teacher, pairs, teacher_solver, teacher_sde, seed)
