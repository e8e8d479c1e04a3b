"""Fitting a grid to a model (solvers.fitting: FitGrid, fit_solver): the differentiable student is DPM-Solver++
itself, its time derivative is right, the fit improves the distribution an oracle case samples over its start
grid, a fitted grid written to a file and loaded by path gives the same samples bit for bit (in a new run.py
process too, with the fit's cost in metrics.json), a bad grid file or a solver that cannot be fitted gets one
line, and a fit is keyed by the model it was fitted to (a guided run fits once)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ALL_SDES
from test_run import run_main
from scoresde.evaluation import mixture_report
from models import MixtureScore
from sde import ConfigError, RectifiedFlow, VPSDE, config_scope
from scoresde.data import GaussianMixture
from solvers import DDIM, DPMSolver, FitGrid, FixedTimes, Heun, fit_solver, save_grid
from solvers.base import CountedScore, check_eps
from solvers.fitting import fit_grid, logp_gap, student, times_of
from solvers.grids import make_grid, times_at_log_snr

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(pilots=64, teacher_steps=40, iterations=4)


def eight_modes():
    """The benchmark's 2-D mixture (benchmarks/oracle.py): 8 narrow modes on a circle of radius 4."""
    angles = torch.arange(8, dtype=torch.float64) * (torch.pi / 4)
    means = 4 * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(means, [0.3, 0.4, 0.5, 0.3, 0.4, 0.5, 0.3, 0.4], list(range(1, 9)))


def draw(sde, mixture, solver, num, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((num, *mixture.shape), gen)
    oracle = MixtureScore(sde, mixture)
    solver, _ = fit_solver(solver, sde, oracle, mixture.shape)
    return solver(sde, oracle, x_T, gen)


def quality(sde, mixture, x, eps):
    e = torch.tensor(eps, dtype=torch.float64)
    report = mixture_report(mixture.perturbed(sde.a(e).item(), sde.s(e).item()), x)
    return report["weights_tv"], report["logp_gap_per_dim"]


@pytest.mark.parametrize("name", ["vp", "ve", "cosine", "rf", "user_vp"])
def test_the_student_is_dpm_solver_on_the_grid_and_its_gradient_in_lambda_matches_finite_differences(name):
    sde = ALL_SDES[name]()
    eps = check_eps(sde, None)
    times = make_grid(sde, 7, eps, "logsnr")
    lam = sde.log_snr(times).double().requires_grad_(True)
    x = sde.prior_sample((50, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    score = CountedScore(MixtureScore(sde, eight_modes()))
    solver = DPMSolver(7, order=3, grid=FixedTimes(times=times))
    out = student(sde, score, x, lam, eps, 3)
    assert torch.allclose(out, solver.integrate(sde, score, x, times), rtol=1e-9, atol=1e-9)
    grad, = torch.autograd.grad(out.pow(2).mean(), lam)
    assert grad[0] == 0 and grad[-1] == 0
    h = 1e-5
    for j in (2, 5):
        bumped = [lam.detach().clone() for _ in range(2)]
        bumped[0][j] += h
        bumped[1][j] -= h
        ends = [solver.integrate(sde, score, x, times_at_log_snr(sde, b, eps)).pow(2).mean() for b in bumped]
        assert grad[j].item() == pytest.approx(((ends[0] - ends[1]) / (2 * h)).item(), rel=1e-4, abs=1e-7)
    t = times_of(sde, lam, eps)
    assert torch.allclose(t.detach(), times_at_log_snr(sde, lam.detach(), eps), rtol=1e-12, atol=0)


def test_the_log_density_gap_is_exact_for_a_gaussian_mode():
    sde = VPSDE()
    mixture = GaussianMixture(torch.zeros(1, 3, dtype=torch.float64), [0.5], [1.0])
    t = torch.tensor(0.1, dtype=torch.float64)
    score = MixtureScore(sde, mixture)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=gen, dtype=torch.float64), torch.randn(200, 3, generator=gen,
                                                                                  dtype=torch.float64)
    exact = (score.log_prob(y, t) - score.log_prob(x, t)).mean() / 3
    assert logp_gap(score, y, x, t).item() == pytest.approx(exact.item(), rel=1e-10)


@pytest.mark.slow
def test_the_fit_brings_the_log_density_gap_and_weights_to_the_targets_where_its_start_grid_misses():
    sde, mixture = RectifiedFlow(), eight_modes()
    eps = check_eps(sde, None)
    oracle = MixtureScore(sde, mixture)
    times, info = fit_grid(sde, oracle, 10, eps, (2,), pilots=1000, iterations=100, starts=("logsnr",))
    start = DPMSolver(10, order=3, grid="logsnr")
    start_tv, start_gap = quality(sde, mixture, draw(sde, mixture, start, 20000)[0], eps)
    x, nfe = draw(sde, mixture, DPMSolver(10, order=3, grid=FixedTimes(times=times)), 20000)
    tv, gap = quality(sde, mixture, x, eps)
    assert nfe == 10
    assert abs(start_gap) > 0.1
    assert abs(gap) < 0.01 and tv < 0.015, (tv, gap, start_tv, start_gap)
    assert info["objective"] < 0.2 * info["objective_start"]
    assert info["nfe"] == 200 + 101 * (10 + 2)  # the teacher; 101 objectives: the student's steps, Δ's scores


def test_a_fitted_grid_is_written_with_its_cost_and_loaded_by_path_gives_identical_samples(tmp_path):
    sde, mixture = VPSDE(), eight_modes()
    path = tmp_path / "grid.json"
    solver, record = fit_solver(DPMSolver(6, order=3, grid=FitGrid(**TINY)), sde, MixtureScore(sde, mixture), (2,))
    x, nfe = draw(sde, mixture, solver, 500)
    assert nfe == 6
    fit = save_grid(path, record)
    saved = json.loads(path.read_text())
    assert len(saved["times"]) == 7 and saved["fit"]["pilots"] == 64 and saved["fit"]["path"] == str(path)
    for key in ("nfe", "seconds", "objective_start", "objective", "mse", "gap", "start"):
        assert key in saved["fit"] and key in record and fit[key] == record[key]
    loaded = DPMSolver(6, order=3, grid=str(path))
    assert isinstance(loaded.grid, FixedTimes)
    assert torch.equal(draw(sde, mixture, loaded, 500)[0], x)


def run(out, *overrides):
    return run_main(out, "model=oracle", "data=gmm", "sample.num=400", "sample.plot=false", *overrides)


@pytest.mark.slow
def test_solver_fast_in_run_py_writes_the_grid_and_its_cost_and_a_later_run_loads_it_by_path(tmp_path):
    fit = [f"solver.grid.{k}={v}" for k, v in TINY.items()]
    first = run(tmp_path / "fit", "solver=fast", *fit)
    assert first.returncode == 0, first.stderr
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert metrics["nfe_sample"] == 10
    assert metrics["grid_fit"]["path"] == str(tmp_path / "fit" / "grid.json")
    assert metrics["grid_fit"]["nfe"] > 0 and metrics["grid_fit"]["seconds"] > 0
    later = run(tmp_path / "load", "solver=fast", f"solver.grid={tmp_path / 'fit' / 'grid.json'}")
    assert later.returncode == 0, later.stderr
    assert "grid_fit" not in json.loads((tmp_path / "load" / "metrics.json").read_text())
    samples = [np.load(tmp_path / name / "samples.npz")["x"] for name in ("fit", "load")]
    assert np.array_equal(*samples)


def one_line(make, match):
    with pytest.raises(ConfigError, match=match) as caught:
        with config_scope("solver"):
            make()
    assert "\n" not in str(caught.value)


def test_a_bad_grid_file_or_a_solver_that_cannot_be_fitted_gets_one_line(tmp_path):
    sde, mixture = VPSDE(), eight_modes()
    one_line(lambda: DPMSolver(10, grid=str(tmp_path / "none.json")), r"^solver.grid='.*none.json' is not a file")
    (tmp_path / "broken.json").write_text('{"times": [1.0, 0.5,')
    one_line(lambda: DPMSolver(10, grid=str(tmp_path / "broken.json")), r"^solver.grid=.*cannot be read")
    (tmp_path / "up.json").write_text(json.dumps({"times": [0.001, 0.5, 1.0]}))
    one_line(lambda: DPMSolver(2, grid=str(tmp_path / "up.json")), r"^solver.grid=.*strictly decreasing")
    (tmp_path / "short.json").write_text(json.dumps({"times": [1.0, 0.5, 0.001]}))
    one_line(lambda: DPMSolver(10, grid=str(tmp_path / "short.json")), r"^solver.steps=10 is invalid")
    (tmp_path / "ends.json").write_text(json.dumps({"times": [1.0, 0.5, 0.01]}))
    with pytest.raises(ConfigError, match="must run from T = 1 to the solver's end time"):
        draw(sde, mixture, DPMSolver(2, grid=str(tmp_path / "ends.json")), 10)
    one_line(lambda: DDIM(10, grid=FitGrid()), r"^solver.grid=FitGrid\(.*\) fits DPM-Solver\+\+ .*not DDIM")
    one_line(lambda: Heun(5, grid=FitGrid()), r"^solver.grid=FitGrid\(.*\) fits DPM-Solver\+\+ .*not Heun")
    one_line(lambda: FitGrid(pilots=0), r"^solver.pilots=0 is invalid")
    one_line(lambda: DDIM(10, grid="fit"), r"^solver.grid='fit' is now fitted to the model by "
                                           r"solvers.fitting.FitGrid: solver.grid={_target_:solvers.fitting.FitGrid}")


# -- fits keyed by what they were fitted to ----------------------------------------------------------------------

def tiny_mlp(sde, data, seed):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    node = OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/mlp.yaml"),
                           {"net": {"hidden": 16, "depth": 1, "embed_dim": 8}})
    model = instantiate(node, sde=sde, data=data).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.3 * torch.randn_like(weight))
    return model


def test_a_second_model_never_gets_the_first_models_grid():
    """The cache is keyed by the model's fingerprint: another network (or the same one trained further) is fitted
    anew, the same weights in a new object reuse the fit."""
    sde, mixture = VPSDE(), eight_modes()
    recipe = FitGrid(pilots=32, teacher_steps=10, iterations=1)
    solver = DPMSolver(4, order=3, grid=recipe)
    first, second = tiny_mlp(sde, mixture, 0), tiny_mlp(sde, mixture, 1)
    _, a = fit_solver(solver, sde, first, (2,))
    _, b = fit_solver(solver, sde, second, (2,))
    assert not a["reused"] and not b["reused"] and a["objective_start"] != b["objective_start"]
    copy = tiny_mlp(sde, mixture, 0)
    _, again = fit_solver(solver, sde, copy, (2,))
    assert again["reused"] and again["times"] == a["times"] and again["objective"] == a["objective"]
    with torch.no_grad():
        next(copy.parameters()).add_(0.1)
    _, trained = fit_solver(solver, sde, copy, (2,))
    assert not trained["reused"] and trained["objective_start"] != a["objective_start"]
    _, other_solver = fit_solver(DPMSolver(4, order=2, grid=recipe), sde, first, (2,))
    assert not other_solver["reused"]


def test_a_guided_run_fits_once_for_any_batch_size_and_class_list():
    """Pipeline.sample fits the grid on the unguided score, once for the model: a guided batch of 2000 (the
    issue's command) samples, and other batch sizes and classes reuse the fit; the sampling seconds leave the fit
    out."""
    from scoresde.pipeline import Pipeline

    sde, mixture = VPSDE(), GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2])
    pipe = Pipeline(sde, MixtureScore(sde, mixture), mixture)
    solver = DPMSolver(10, order=3, grid=FitGrid(**TINY, seed=3))
    x, stats = pipe.sample(2000, solver, batch=2000, classes="all", info=True)
    assert x.shape == (2000, 2) and torch.isfinite(x).all() and stats["nfe"] == 10
    fit = stats["grid_fit"]
    assert fit["nfe"] > 0 and fit["seconds"] > 0 and not fit["reused"] and len(fit["times"]) == 11
    for num, batch, classes, guidance in [(300, 128, [0, 2], 1.5), (200, 200, None, 0.0), (64, 7, "all", 0.5)]:
        y, again = pipe.sample(num, solver, batch=batch, classes=classes, guidance=guidance, info=True)
        assert "grid_fit" not in again and y.shape == (num, 2) and torch.isfinite(y).all()
    unconditional = Pipeline(sde, MixtureScore(sde, mixture), mixture).sample(2000, solver, batch=2000)
    fitted, _ = fit_solver(solver, sde, MixtureScore(sde, mixture), (2,))
    assert torch.equal(unconditional, pipe.sample(2000, fitted, batch=2000))


def test_the_solver_table_agrees_with_conf_solver():
    """Every conf/solver/NAME.yaml instantiates to the solver the front door's table names NAME."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from scoresde.pipeline import SOLVERS, solver_from_name

    files = sorted((ROOT / "conf" / "solver").glob("*.yaml"))
    assert sorted(p.stem for p in files) == sorted(SOLVERS)
    for path in files:
        assert repr(instantiate(OmegaConf.load(path))) == repr(solver_from_name(path.stem)), path.stem


def test_a_preview_takes_the_recipes_plain_grid():
    from scoresde.pipeline import solver_from_name
    from solvers import UniformLogSNR, fallback

    fast = solver_from_name("fast")
    preview = fallback(fast)
    assert type(preview.grid) is UniformLogSNR and (preview.steps, preview.order) == (fast.steps, fast.order)
    assert type(fast.grid) is FitGrid and fallback(preview) is preview
    with pytest.raises(ConfigError, match="fitted to a model before sampling"):
        draw_unfitted = fast(VPSDE(), MixtureScore(VPSDE(), eight_modes()), torch.zeros(4, 2))
        assert draw_unfitted is None
