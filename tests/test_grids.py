"""Time grids as objects, solvers as steps over them, and the kernel quantities the SDE owns: each grid's times
against its definition, every stepping solver on every grid against the exact mixture, and x̂₀, ε̂, the transition
and the posterior against closed forms."""
import json

import numpy as np
import pytest
import torch

from helpers import ALL_SDES, mixture_2d, reference, sample, slow_except
from scoresde.evaluation import mixture_report
from models import MixtureScore
from scoresde.data import GaussianMixture
from sde import ConfigError, config_scope
from solvers import (DDIM, DPMSolver, EulerMaruyama, FixedTimes, Heun, Karras, PredictorCorrector, SteppingSolver,
                     TuneGrid, UniformLogSNR, UniformTime, fit_solver)
from solvers.base import check_eps
from solvers.grids import as_grid


def geometric_times(sde, steps):
    """A list of times of one's own: geometric in t from T down to the process's eps."""
    eps = check_eps(sde, None)
    t = sde.T * (eps / sde.T) ** (torch.arange(steps + 1, dtype=torch.float64) / steps)
    t[0], t[-1] = sde.T, eps
    return t.tolist()


def one_line_error(make, match):
    with pytest.raises(ConfigError, match=match) as caught:
        make()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def under_solver(make):
    """make, built as from the config key solver."""
    def build():
        with config_scope("solver"):
            return make()
    return build


# -- the grids --------------------------------------------------------------------------------------------------

GRIDS = {
    "time": lambda sde, n: UniformTime(),
    "logsnr": lambda sde, n: UniformLogSNR(),
    "karras": lambda sde, n: Karras(rho=5.0),
    "fixed": lambda sde, n: FixedTimes(geometric_times(sde, n)),
}


@pytest.mark.parametrize("kind", sorted(GRIDS))
def test_grid_runs_from_T_down_to_eps(any_sde, kind):
    eps = check_eps(any_sde, None)
    t = GRIDS[kind](any_sde, 20)(any_sde, 20, eps)
    assert t.shape == (21,) and t.dtype == torch.float64
    assert t[0].item() == any_sde.T and t[-1].item() == eps
    assert (t[1:] < t[:-1]).all()
    like = torch.zeros(3, dtype=torch.float32)
    assert GRIDS[kind](any_sde, 20)(any_sde, 20, eps, like=like).dtype == torch.float32


@pytest.mark.parametrize("sde_name", ["vp", "ve", "user_vp"])
def test_each_grid_is_uniform_in_its_own_variable(sde_name):
    """t for UniformTime, λ = log(a/s) for UniformLogSNR, σ^{1/ρ} for Karras (to 1e-8 of the range, a numeric a, s
    table included); a fixed list comes back as given."""
    sde = ALL_SDES[sde_name]()
    eps = check_eps(sde, None)
    for grid, variable in [(UniformTime(), lambda t: t), (UniformLogSNR(), sde.log_snr),
                           (Karras(rho=5.0), lambda t: sde.sigma(t) ** (1 / 5.0))]:
        v = variable(grid(sde, 30, eps))
        steps = v[1:] - v[:-1]
        assert (steps - steps.mean()).abs().max() < 1e-8 * (v[0] - v[-1]).abs(), grid
    times = geometric_times(sde, 7)
    assert FixedTimes(times)(sde, 7, eps).tolist() == times


def test_fixed_times_from_a_list_and_from_files(tmp_path):
    sde = ALL_SDES["vp"]()
    times = [1.0, 0.5, 0.2, 0.05, 0.001]
    (tmp_path / "t.txt").write_text("\n".join(map(str, times)) + "\n")
    (tmp_path / "c.txt").write_text(", ".join(map(str, times)))
    (tmp_path / "t.json").write_text(json.dumps(times))
    np.save(tmp_path / "t.npy", np.array(times))
    grids = [FixedTimes(times), FixedTimes(torch.tensor(times, dtype=torch.float64)), as_grid(times)]
    grids += [FixedTimes(path=tmp_path / name) for name in ("t.txt", "c.txt", "t.json", "t.npy")]
    grids.append(as_grid(str(tmp_path / "t.txt")))
    for grid in grids:
        assert grid(sde, 4, 1e-3).tolist() == times, grid
    assert repr(FixedTimes(times)) == f"FixedTimes(times={times!r})"
    rounded = FixedTimes(torch.tensor(times))(sde, 4, 1e-3)
    assert rounded[0].item() == 1.0 and rounded[-1].item() == 1e-3 and torch.allclose(rounded, torch.tensor(times,
                                                                                                              dtype=torch.float64))


@pytest.mark.parametrize("make, match", [
    (lambda: FixedTimes([1.0]), r"^times=\[1.0\] is invalid: expected a flat list of at least two"),
    (lambda: FixedTimes([1.0, 0.5, 0.6, 1e-3]), r"^times=.* is invalid: expected times strictly decreasing"),
    (lambda: FixedTimes([1.0, 0.5, 0.0]), r"^times=.* is invalid: expected times inside \(0, T\]; the last is 0"),
    (lambda: FixedTimes([1.0, -0.5]), r"inside \(0, T\]"),
    (lambda: FixedTimes([1.0, float("nan"), 1e-3]), "at least two finite times"),
    (lambda: FixedTimes([[1.0, 0.5]]), "a flat list"),
    (lambda: FixedTimes(["a", "b"]), r"^times=\['a', 'b'\] is invalid: expected a list of times"),
    (lambda: FixedTimes(), "either times=.* or path=FILE"),
    (lambda: FixedTimes([1.0, 0.1], path="t.txt"), "not both or neither"),
    (lambda: FixedTimes(path="missing.json"), r"^path='missing.json' is not a file"),
    (lambda: FixedTimes(path="times.csv"), r"^path='times.csv' is invalid: expected a file of times ending in .txt"),
    (lambda: as_grid("cosine"), "^grid='cosine' is unknown: choose one of karras, logsnr, time, logsnr_floor, a list of times"),
    (lambda: as_grid(3), "^grid=3 is unknown"),
    (lambda: as_grid([1.0, 2.0]), r"^grid=\[1.0, 2.0\] is invalid: expected times strictly decreasing"),
    (lambda: as_grid("missing.npy"), "^grid='missing.npy' is not a file"),
])
def test_bad_lists_of_times_are_refused_in_one_line(make, match):
    one_line_error(make, match)


def test_bad_files_of_times_are_refused_in_one_line(tmp_path):
    (tmp_path / "words.txt").write_text("1.0 then 0.5\n")
    (tmp_path / "up.json").write_text("[0.001, 0.5, 1.0]")
    (tmp_path / "broken.json").write_text("[1.0, 0.5")
    one_line_error(lambda: FixedTimes(path=tmp_path / "words.txt"), "words.txt' cannot be read as a list of times")
    one_line_error(lambda: FixedTimes(path=tmp_path / "up.json"), "up.json' is invalid: expected times strictly")
    one_line_error(lambda: FixedTimes(path=tmp_path / "broken.json"), "broken.json' cannot be read")


def test_a_fixed_list_must_fit_the_process_and_the_solver():
    vp, ve = ALL_SDES["vp"](), ALL_SDES["ve"]()
    times = [1.0, 0.3, 0.001]
    one_line_error(lambda: FixedTimes(times)(ve, 2, check_eps(ve, None)),
                   "run from 1 to 0.001; they must run from T = 1 to the solver's end time eps = 1e-05")
    one_line_error(lambda: FixedTimes([0.9, 0.001])(vp, 1, 1e-3), "must run from T = 1")
    one_line_error(lambda: FixedTimes(times)(vp, 5, 1e-3), "3 times give 2 steps, not the 5 asked for")
    one_line_error(under_solver(lambda: DDIM(steps=5, grid=times)),
                   r"^solver.steps=5 is invalid: expected 2, the number of intervals of the grid's 3 times")
    one_line_error(under_solver(lambda: DDIM(steps=2, grid=[1.0, 0.3, 0.3])), "^solver.grid=.* strictly decreasing")
    one_line_error(under_solver(lambda: EulerMaruyama(steps=5, grid=TuneGrid())),
                   r"^solver.grid=TuneGrid\(.*\) fits the paths of a deterministic solver")
    one_line_error(under_solver(lambda: DDIM(steps=5, grid="tuned")),
                   r"^solver.grid='tuned' is now fitted to the model by solvers.fitting.TuneGrid: "
                   r"solver.grid={_target_:solvers.fitting.TuneGrid}")
    x, nfe = sample(vp, DDIM(steps=2, grid=times), mixture_2d(), 10)
    assert nfe == 2 and torch.isfinite(x).all()


def test_names_map_to_grid_objects():
    assert type(as_grid("time")) is UniformTime and type(as_grid("logsnr")) is UniformLogSNR
    assert as_grid("karras").rho == 7.0 and as_grid(Karras(rho=3.0)).rho == 3.0
    tuned = as_grid(TuneGrid(rho=5.0, pilots=8, reference_steps=20, seed=1))
    assert (tuned.pilots, tuned.reference_steps, tuned.seed, tuned.rho) == (8, 20, 1, 5.0)
    grid = Karras(rho=2.0)
    assert as_grid(grid) is grid and DPMSolver(grid=grid).grid is grid


def test_solver_configs_build_their_default_grids_and_take_names():
    """The solver table (the defaults of conf/solver/*.yaml) gives each solver the grid it always had; a name or a
    grid object replaces it."""
    from scoresde.pipeline import solver_from_name

    defaults = {"em": UniformTime, "pc": UniformTime, "ddim": Karras, "heun": Karras, "dpm": UniformLogSNR}
    for name, kind in defaults.items():
        assert type(solver_from_name(name).grid) is kind, name
    assert solver_from_name("ddim", grid=Karras(rho=5.0)).grid.rho == 5.0
    assert type(solver_from_name("heun", grid="logsnr").grid) is UniformLogSNR
    assert type(solver_from_name("dpm", grid=TuneGrid(pilots=8)).grid) is TuneGrid
    assert solver_from_name("dpm", grid=TuneGrid(pilots=8)).grid.pilots == 8


# -- solvers as steps -------------------------------------------------------------------------------------------

def test_orders_are_declared_on_the_classes():
    assert (EulerMaruyama.order, PredictorCorrector.order, DDIM.order, Heun.order) == (1, 1, 1, 2)
    assert [DPMSolver(order=k).order for k in (1, 2, 3)] == [1, 2, 3]
    assert not EulerMaruyama.deterministic and DDIM.deterministic


def test_a_new_solver_is_one_step():
    """Exponential Euler in the data prediction, written in three lines, is DDIM (and DPM-Solver++ of order 1) on
    any grid, with one evaluation per step."""

    class ExponentialEuler(SteppingSolver):
        def step(self, state, x, t, t_next):
            sde, score = state.sde, state.score(x, t)
            return sde.marginal_sample(sde.x0_from_score(x, score, t), t_next, sde.eps_from_score(score, t))

    sde = ALL_SDES["vp"]()
    for grid in ("karras", "logsnr", geometric_times(sde, 8)):
        x, nfe = sample(sde, ExponentialEuler(steps=8, grid=grid), mixture_2d(), 50, dtype=torch.float64)
        ddim, _ = sample(sde, DDIM(steps=8, grid=grid), mixture_2d(), 50, dtype=torch.float64)
        dpm1, _ = sample(sde, DPMSolver(steps=8, order=1, grid=grid), mixture_2d(), 50, dtype=torch.float64)
        assert nfe == 8
        assert torch.allclose(x, ddim, rtol=1e-10, atol=1e-10) and torch.allclose(x, dpm1, rtol=1e-9, atol=1e-9)


def test_heun_and_ddim_fit_a_tuned_grid_too():
    sde, mixture = ALL_SDES["vp"](), mixture_2d()
    for solver in (Heun(steps=3, grid=TuneGrid(pilots=8, reference_steps=20)),
                   DDIM(steps=4, grid=TuneGrid(pilots=8, reference_steps=20))):
        solver, info = fit_solver(solver, sde, MixtureScore(sde, mixture), mixture.shape)
        x, nfe = sample(sde, solver, mixture, 20)
        assert nfe == (2 if isinstance(solver, Heun) else 1) * solver.steps
        assert info["loss"] <= info["loss_start"] and info["times"][0] == sde.T and torch.isfinite(x).all()


# Step counts at which each solver meets the tolerances on every grid; DPM-Solver++ on the uniform-t grid needs more:
# near eps that grid takes λ-steps of ½ log(1 + Δt/eps) (DPM-3 at 80 steps: log-density gap +0.09 nats/dim).
STEPPERS = {
    "em": (lambda grid, n: EulerMaruyama(steps=n, grid=grid), 400),
    "pc": (lambda grid, n: PredictorCorrector(steps=n, grid=grid), 200),
    "ancestral": (lambda grid, n: PredictorCorrector(steps=n, predictor="ancestral", corrector="none", grid=grid), 400),
    "ddim": (lambda grid, n: DDIM(steps=n, grid=grid), 150),
    "heun": (lambda grid, n: Heun(steps=n, grid=grid), 40),
    "dpm1": (lambda grid, n: DPMSolver(steps=n, order=1, grid=grid), 150),
    "dpm2": (lambda grid, n: DPMSolver(steps=n, order=2, grid=grid), 100),
    "dpm3": (lambda grid, n: DPMSolver(steps=n, order=3, grid=grid), 80),
}
ON_UNIFORM_TIME = {"dpm3": 200}
OURS = {"sde", "solvers", "models", "scoresde"}


# The fast tier: each stepper on one grid, each grid under two steppers.
GRIDS_FAST = {("em", "time"), ("pc", "karras"), ("ancestral", "logsnr"), ("ddim", "fixed"), ("heun", "time"),
              ("dpm1", "logsnr"), ("dpm2", "karras"), ("dpm3", "fixed")}


@pytest.mark.parametrize("solver_name, grid", slow_except(GRIDS_FAST, sorted(STEPPERS), ["time", "logsnr", "karras",
                                                                                           "fixed"]))
def test_every_stepping_solver_recovers_the_mixture_on_every_grid(solver_name, grid):
    """VP, the 2-D three-component mixture, 6000 samples: weights TV ≤ 0.03 and |log-density gap| ≤ 0.04 nats/dim
    (measured: TV 0.002–0.015, gaps up to 0.03 in size; exact samples give TV ≈ 0.01 at this size)."""
    make, steps = STEPPERS[solver_name]
    steps = ON_UNIFORM_TIME.get(solver_name, steps) if grid == "time" else steps
    sde, mixture = ALL_SDES["vp"](), mixture_2d()
    solver = make(geometric_times(sde, steps) if grid == "fixed" else grid, steps)
    x, nfe = sample(sde, solver, mixture, 6000, seed=1)
    report = mixture_report(reference(sde, solver, mixture), x)
    assert nfe == steps * (2 if solver_name in ("pc", "heun") else 1)
    assert report["weights_tv"] <= 0.03 and abs(report["logp_gap_per_dim"]) <= 0.04, report


# -- what the SDE derives from its kernel ------------------------------------------------------------------------

def single_gaussian(mu, std):
    return GaussianMixture(mu[None], [std], [1.0])


@pytest.mark.parametrize("shape", [(5, 2), (5, 1, 2, 2)])
def test_x0_and_eps_of_the_exact_score_of_a_gaussian(any_sde, shape):
    """For x_0 ~ N(μ, v I): p_t = N(a μ, (a² v + s²) I), E[x_0 | x_t] = μ + a v (x_t − a μ)/(a² v + s²), and
    E[z | x_t] = (x_t − a E[x_0 | x_t]) / s; per-sample times and image-shaped batches alike."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(shape[1:], generator=gen, dtype=torch.float64)
    v = 0.7**2
    oracle = MixtureScore(any_sde, single_gaussian(mu, 0.7))
    t = torch.linspace(0.05, any_sde.T, shape[0], dtype=torch.float64)
    a, s = (q.reshape(-1, *[1] * (len(shape) - 1)) for q in (any_sde.a(t), any_sde.s(t)))
    x = a * mu + torch.sqrt(a**2 * v + s**2) * torch.randn(shape, generator=gen, dtype=torch.float64)
    score = oracle(x, t)
    assert torch.allclose(score, -(x - a * mu) / (a**2 * v + s**2), rtol=1e-8, atol=1e-10)
    x0 = mu + a * v * (x - a * mu) / (a**2 * v + s**2)
    assert torch.allclose(any_sde.x0_from_score(x, score, t), x0, rtol=1e-8, atol=1e-8)
    eps = any_sde.eps_from_score(score, t)
    assert torch.allclose(eps, (x - a * x0) / s, rtol=1e-8, atol=1e-8)
    assert torch.allclose(any_sde.x0_from_eps(x, eps, t), x0, rtol=1e-8, atol=1e-8)
    assert torch.allclose(any_sde.score_from_eps(eps, t), score, rtol=1e-8, atol=1e-10)
    assert torch.allclose(any_sde.score_from_x0(x, x0, t), score, rtol=1e-6, atol=1e-8)
    scalar = torch.tensor(0.3, dtype=torch.float64)
    assert torch.allclose(any_sde.x0_from_score(x, score, scalar),
                          any_sde.x0_from_score(x, score, scalar.expand(shape[0])))


def test_transition_composes_with_the_marginal(any_sde):
    """x_u = a(u) x_0 + s(u) z' and x_t = α x_u + σ z give x_t = a(t) x_0 + s(t) z:  α a(u) = a(t) and
    α² s(u)² + σ² = s(t)², for scalar and per-sample times; and a simulated x_t has the marginal's moments."""
    t = torch.tensor([0.9, 0.5, 0.2, 0.05], dtype=torch.float64) * any_sde.T
    u = torch.tensor([0.4, 0.1, 0.19, 0.001], dtype=torch.float64) * any_sde.T
    alpha, std = any_sde.transition(t, u)
    assert alpha.shape == std.shape == (4,)
    assert torch.allclose(alpha * any_sde.a(u), any_sde.a(t), rtol=1e-10)
    assert torch.allclose(alpha**2 * any_sde.s(u) ** 2 + std**2, any_sde.s(t) ** 2, rtol=1e-8)
    scalar = any_sde.transition(t[1], u[1])
    assert torch.allclose(scalar[0], alpha[1]) and torch.allclose(scalar[1], std[1])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 1.5, dtype=torch.float64)
    x_u = any_sde.marginal_sample(x0, u[0], torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    x_t = alpha[0] * x_u + std[0] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    mean, sd = any_sde.marginal(x0[:1], t[0])
    assert x_t.mean().item() == pytest.approx(mean.item(), abs=5e-3 * max(1.0, sd.item()))
    assert x_t.std().item() == pytest.approx(sd.item(), rel=5e-3)


def test_posterior_is_the_gaussian_conditional(any_sde):
    """q(x_u | x_t, x_0) from conditioning the joint Gaussian of (x_u, x_t) given x_0:
    mean = a(u) x_0 + α s(u)²/s(t)² (x_t − a(t) x_0),  var = s(u)² − α² s(u)⁴ / s(t)²."""
    t, u = torch.tensor(0.6 * any_sde.T, dtype=torch.float64), torch.tensor(0.25 * any_sde.T, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(6, 3, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)
    mean, std = any_sde.posterior(x, x0, t, u)
    alpha = any_sde.a(t) / any_sde.a(u)
    s2_t, s2_u = any_sde.s(t) ** 2, any_sde.s(u) ** 2
    assert torch.allclose(mean, any_sde.a(u) * x0 + alpha * s2_u / s2_t * (x - any_sde.a(t) * x0), rtol=1e-9, atol=1e-10)
    assert torch.allclose(std**2, s2_u - alpha**2 * s2_u**2 / s2_t, rtol=1e-8)
    per_sample = any_sde.posterior(x, x0, t.expand(6), u.expand(6))
    assert torch.allclose(per_sample[0], mean) and torch.allclose(per_sample[1].reshape(-1), std.expand(6))


def test_the_solvers_package_imports_as_a_dag_without_imports_inside_functions():
    """grids ← base ← the solvers ← fitting: no module of solvers/ imports one that imports it back, and none
    imports a module of ours inside a function to dodge a circle (a dependency may be loaded where it is used)."""
    import ast
    from pathlib import Path

    import solvers

    def ours(node):
        if isinstance(node, ast.ImportFrom):
            return node.level > 0 or node.module.split(".")[0] in OURS
        return any(alias.name.split(".")[0] in OURS for alias in node.names)

    root = Path(solvers.__file__).parent
    graph = {}
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {node.module.split(".")[0] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        inner = [node.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom)) and ours(node)]
        assert not inner, f"solvers/{path.name} imports a module of ours inside a function at lines {inner}"
    done, visiting = set(), []

    def visit(name):
        assert name not in visiting, f"import circle: {' -> '.join(visiting + [name])}"
        if name in done:
            return
        visiting.append(name)
        for child in graph.get(name, ()):
            visit(child)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)
    assert graph["grids"] == set() and graph["base"] == {"grids"}
