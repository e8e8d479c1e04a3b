"""With the exact oracle score, every solver recovers the mixture: weights, means and stds."""
import pytest
import torch

from helpers import ALL_SDES, UserVP, assert_recovers, mixture_16d, mixture_2d, sample, slow_except
from scoresde.evaluation import mixture_report
from sde import VPSDE, ConfigError, config_scope
from models import MixtureScore
from solvers import EulerMaruyama, Heun, PredictorCorrector, ProbabilityFlowODE, TuneGrid
from solvers.adaptive import AdaptiveSDE
from solvers.fitting import fit_solver

# 500 steps: the discretization error a solver must keep under the tolerances below is that of half the usual
# 1000 steps (measured at under a third of each tolerance, but for Langevin's widening on VP at 0.038 of 0.065).
SOLVERS = {
    "em": lambda steps=500: EulerMaruyama(steps=steps),
    "pc": lambda steps=500: PredictorCorrector(steps=steps),
    "pc_em_langevin": lambda steps=500: PredictorCorrector(steps=steps, predictor="euler_maruyama"),
    "pc_ancestral": lambda steps=500: PredictorCorrector(steps=steps, predictor="ancestral", corrector="none"),
    "ode": lambda: ProbabilityFlowODE(),
    "ode_rk4": lambda: ProbabilityFlowODE(method="rk4", steps=50),
}
# Langevin at snr = 0.16 (the usual default) widens narrow low-dimensional components by about 3 %.
STD_TOLERANCE = {"pc": 0.065, "pc_em_langevin": 0.065}


# The fast tier (-m "not slow") keeps the ODE on every process. The user's hand-written VP is VP itself: its
# stochastic solvers are held equal to VP's below, the ODEs recover the mixture here.
RECOVERY_2D = [p for p in slow_except({(name, "ode") for name in ALL_SDES}, sorted(ALL_SDES), sorted(SOLVERS))
               if p.values[0] != "user_vp" or p.values[1].startswith("ode")]


# With a corrector, 250 steps (500 evaluations) keep the 2-D errors of 10,000 samples under half of each tolerance
# on every process (std at most 0.030 of 0.065); em and pc_ancestral keep 500 (at 250, ancestral's std on cosine
# reaches 0.040).
CORRECTED_2D_STEPS = {"pc": 250, "pc_em_langevin": 250}


@pytest.mark.parametrize("sde_name, solver_name", RECOVERY_2D)
def test_recovers_2d_mixture(sde_name, solver_name):
    steps = CORRECTED_2D_STEPS.get(solver_name)
    solver = SOLVERS[solver_name](steps) if steps else SOLVERS[solver_name]()
    assert_recovers(ALL_SDES[sde_name](), solver, mixture_2d(), 10000,
                    tv=0.025, mean=0.1, std=STD_TOLERANCE.get(solver_name, 0.04))


@pytest.mark.parametrize("solver_name", ["em"] + [pytest.param(name, marks=pytest.mark.slow)
                                         for name in ["pc", "pc_em_langevin", "pc_ancestral"]])
def test_a_users_hand_written_vp_samples_as_vp(solver_name):
    """UserVP states only f and g, and every coefficient the solvers ask for is derived from them (a and s
    through the SDE's tabulated integrals), so the same prior draws and noise give VP's samples (to 1.5e-6 at
    1000 steps; coarser steps amplify the tables' error, to 6e-5 at 500)."""
    mix = mixture_2d()
    x, nfe = sample(VPSDE(), SOLVERS[solver_name](steps=1000), mix, 200, seed=3)
    y, nfe_user = sample(UserVP(), SOLVERS[solver_name](steps=1000), mix, 200, seed=3)
    assert nfe_user == nfe and torch.allclose(y, x, atol=1e-5), (y - x).abs().max()


# In 16-D the fast tier keeps em and the ODE on VP.
FAST_16D = {("vp", "em"), ("vp", "ode")}


@pytest.mark.parametrize("sde_name, solver_name", slow_except(FAST_16D, ["vp", "ve"], sorted(SOLVERS)))
def test_recovers_16d_mixture(sde_name, solver_name):
    assert_recovers(ALL_SDES[sde_name](), SOLVERS[solver_name](), mixture_16d(), 4000,
                    tv=0.04, mean=0.2, std=STD_TOLERANCE.get(solver_name, 0.04))


def test_report_detects_a_wrong_distribution():
    """The checks above can fail: samples with the wrong weights, or too wide, are caught."""
    mix = mixture_2d()
    wrong_weights = type(mix)(mix.means, mix.stds, [1, 1, 1])
    report = mixture_report(mix, wrong_weights.sample(20000, torch.Generator().manual_seed(0)))
    assert report["weights_tv"] > 0.1
    too_wide = type(mix)(mix.means, mix.stds * 1.1, mix.weights)
    report = mixture_report(mix, too_wide.sample(20000, torch.Generator().manual_seed(0)))
    assert report["std_ratio_error"] > 0.07 and report["weights_tv"] < 0.025


@pytest.mark.parametrize("solver_name, expected", [
    ("em", 500), ("pc", 1000), pytest.param("pc_ancestral", 500, marks=pytest.mark.slow), ("ode_rk4", 200),
])
def test_nfe_is_counted(solver_name, expected):
    _, nfe = sample(ALL_SDES["vp"](), SOLVERS[solver_name](), mixture_2d(), 10)
    assert nfe == expected


PLANNED = [  # (solver name, options): the shipped solvers at short step counts, and what changes a count
    ("em", {"steps": 7}), ("pc", {"steps": 5}), ("pc", {"steps": 4, "corrector_steps": 3, "denoise": True}),
    ("pc", {"steps": 6, "predictor": "ancestral", "corrector": "none"}), ("ddim", {"steps": 6}),
    ("heun", {"steps": 5}), ("dpm", {"steps": 6, "denoise": True}),
    ("sde_dpm", {"steps": 6}), ("dpm", {"steps": 4, "grid": TuneGrid(pilots=8, reference_steps=20)}),
    ("ode", {"method": "rk4", "steps": 5}),
    ("ode", {"method": "heun3", "steps": 4}), ("ode", {"method": "midpoint", "steps": 4, "denoise": True}),
]


@pytest.mark.parametrize("sde_name", ["vp", pytest.param("ve", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name, options", PLANNED, ids=[f"{n}-{'-'.join(str(v)[:8] for v in o.values())}" for n, o in PLANNED])
def test_a_solver_plans_the_evaluations_it_takes(sde_name, name, options):
    """planned_nfe, which a progress bar takes as its total, is the count a solve then takes (Heun's last step at
    a zero σ is Euler's; a grid fitted to the model keeps the count); a solver that chooses its steps as it goes
    plans none."""
    from scoresde.pipeline import as_solver

    sde = ALL_SDES[sde_name]()
    solver = as_solver(name, dict(options))
    fitted, _ = fit_solver(solver, sde, MixtureScore(sde, mixture_2d()), (2,))
    _, nfe = sample(sde, fitted, mixture_2d(), 10)
    assert fitted.planned_nfe(sde) == nfe
    assert ProbabilityFlowODE().planned_nfe(sde) is None and AdaptiveSDE().planned_nfe(sde) is None


def test_heun_plans_an_euler_last_step_where_sigma_ends_at_zero():
    """Under VE, σ(0) = 0: at eps = 0 Heun's last step is Euler's, and its plan counts one evaluation less."""
    sde, mix = ALL_SDES["ve"](), mixture_2d()
    for eps, planned in ((None, 10), (0.0, 9)):
        solver = Heun(steps=5, eps=eps)
        _, nfe = sample(sde, solver, mix, 10)
        assert solver.planned_nfe(sde) == nfe == planned


def test_inpainting_plans_each_step_once_per_jump():
    from solvers.inpaint import Inpainter
    from solvers.observe import Observation

    sde, mix = ALL_SDES["vp"](), mixture_2d()
    x = mix.sample(6, torch.Generator().manual_seed(0))
    for method, jumps in (("replace", 1), ("resample", 3)):
        inpainter = Inpainter(PredictorCorrector(steps=5, denoise=True), method, jumps)
        _, nfe = inpainter(sde, MixtureScore(sde, mix), sde.prior_sample((6, 2), torch.Generator().manual_seed(1)),
                           Observation(x, torch.tensor([True, False])), torch.Generator().manual_seed(2))
        assert inpainter.planned_nfe(sde) == nfe == 5 * 2 * jumps + 1


def test_the_sampling_bar_shows_its_total(capsys):
    """A progress bar of pipe.sample counts the evaluations out of the solver's plan for every batch."""
    from scoresde.pipeline import Pipeline

    sde, mix = ALL_SDES["vp"](), mixture_2d()
    Pipeline(sde, MixtureScore(sde, mix), mix).sample(30, "ddim", steps=8, batch=10, progress=True)
    assert "24/24" in capsys.readouterr().err


def test_corrector_steps_and_denoise_add_evaluations():
    sde, mix = ALL_SDES["vp"](), mixture_2d()
    _, nfe = sample(sde, PredictorCorrector(steps=10, corrector_steps=3, denoise=True), mix, 10)
    assert nfe == 10 * 4 + 1


@pytest.mark.parametrize("solver_name", slow_except({("em",), ("ode",), ("ode_rk4",)}, sorted(SOLVERS)))
def test_seeded_runs_are_reproducible(solver_name):
    sde, mix = ALL_SDES["vp"](), mixture_2d()
    a, _ = sample(sde, SOLVERS[solver_name](), mix, 50, seed=7)
    b, _ = sample(sde, SOLVERS[solver_name](), mix, 50, seed=7)
    c, _ = sample(sde, SOLVERS[solver_name](), mix, 50, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_denoising_step_is_tweedie():
    """At eps, denoising maps each well-separated component N(aμ, a²σ² + s²) to std a σ² / sqrt(a²σ² + s²)."""
    sde, mix = ALL_SDES["vp"](), mixture_2d()
    solver = ProbabilityFlowODE(eps=0.05, denoise=True)
    x, nfe = sample(sde, solver, mix, 20000, dtype=torch.float64)
    eps = torch.tensor(0.05, dtype=torch.float64)
    a, s = sde.a(eps).item(), sde.s(eps).item()
    labels = mix.assign(x)
    for k in range(3):
        sigma = mix.stds[k].item()
        expected = a * sigma**2 / (a**2 * sigma**2 + s**2) ** 0.5
        assert x[labels == k].std(0).mean().item() == pytest.approx(expected, rel=0.03)
        assert expected < 0.95 * sigma


def test_images_keep_their_shape():
    means = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 2
    mix = type(mixture_2d())(means, [0.3, 0.4], [1, 2])
    for solver in (EulerMaruyama(steps=10), PredictorCorrector(steps=10),
                   PredictorCorrector(steps=10, predictor="euler_maruyama"),
                   PredictorCorrector(steps=10, predictor="ancestral", corrector="none"), ProbabilityFlowODE(),
                   ProbabilityFlowODE(method="rk4", steps=10)):
        x, _ = sample(ALL_SDES["vp"](), solver, mix, 6)
        assert x.shape == (6, 1, 4, 4)


@pytest.mark.parametrize("make, message", [
    (lambda: EulerMaruyama(steps=0), "solver.steps=0"),
    (lambda: PredictorCorrector(predictor="heun"), "solver.predictor='heun' is unknown: choose one of ancestral"),
    (lambda: PredictorCorrector(corrector="annealed"), "solver.corrector='annealed'"),
    (lambda: PredictorCorrector(snr=-1), "solver.snr=-1"),
    (lambda: ProbabilityFlowODE(method="dopri6"), "solver.method='dopri6' is unknown"),
    (lambda: ProbabilityFlowODE(rtol=0), "solver.rtol=0"),
])
def test_bad_solver_options_are_named(make, message):
    """A ConfigError names the option; built under the key solver, the key is put in front."""
    with pytest.raises(ConfigError, match=message.replace("(", "\\(")):
        with config_scope("solver"):
            make()


def test_bad_end_time_is_named():
    with pytest.raises(ValueError, match="eps=2.0"):
        sample(ALL_SDES["vp"](), EulerMaruyama(steps=2, eps=2.0), mixture_2d(), 3)
