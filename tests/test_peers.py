"""The mapping that lets discrete-time VP peers (diffusers, the official DPM-Solver++) integrate our continuous
processes exactly (benchmarks.peers): the discrete schedule against closed forms, the VP variable's noise prediction
against the oracle of that VP process, and, where the peers are installed, a peer's samples against ours on the
same grid with the same formula."""
import os

import pytest
import torch

from benchmarks.peers import (DPM_SOLVER_ENV, DiffusersPeer, OfficialPeer, OfficialSchedule, alphas_cumprod,
                              betas_from_alphas_cumprod, load_official, time_at_vp_sigma, train_times, vp_eps,
                              vp_scale)
from helpers import mixture_2d
from models import MixtureScore
from sde import SDE, CosineVPSDE, RectifiedFlow, VESDE, VPSDE
from solvers import DDIM, DPMSolver, FixedTimes
from solvers.base import check_eps

PROCESSES = [VPSDE, VESDE, CosineVPSDE, RectifiedFlow]


class VPOf(SDE):
    """The VP process of x / c(t) for a process of ours: a = √ᾱ, s = √(1 − ᾱ), ᾱ = 1 / (1 + σ²)."""

    def __init__(self, base):
        self.base, self.T = base, base.T
        super().__init__()

    def a(self, t):
        return 1 / torch.sqrt(1 + self.base.sigma(t) ** 2)

    def s(self, t):
        return self.base.sigma(t) / torch.sqrt(1 + self.base.sigma(t) ** 2)


def test_the_discrete_schedule_is_the_continuous_vp_at_its_times():
    sde, eps, n = VPSDE(), 1e-3, 1200
    t = train_times(sde, eps, n)
    assert t[0] == eps and abs(t[-1] - sde.T) < 1e-15 and torch.allclose(t[1:] - t[:-1], t[1:2] - t[:1])
    abar = alphas_cumprod(sde, t)
    torch.testing.assert_close(abar, torch.exp(-(0.1 * t + 0.5 * t**2 * 19.9)), rtol=1e-14, atol=0)
    betas = betas_from_alphas_cumprod(abar)
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), abar, rtol=1e-12, atol=0)
    k = torch.tensor([1, 7, 600, 1199])
    increment = sde.int_beta(t[k]) - sde.int_beta(t[k - 1])
    torch.testing.assert_close(betas[k], -torch.expm1(-increment), rtol=1e-9, atol=0)
    assert abs(betas[0] - (-torch.expm1(-sde.int_beta(torch.tensor(eps, dtype=torch.float64))))) < 1e-15


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.__name__)
def test_every_process_maps_to_a_vp_schedule_and_back(process):
    sde = process()
    eps = check_eps(sde, None)
    t = torch.tensor([eps, 0.01, 0.3, 0.77, sde.T], dtype=torch.float64)
    abar, c = alphas_cumprod(sde, t), vp_scale(sde, t)
    torch.testing.assert_close(abar, 1 / (1 + sde.sigma(t) ** 2), rtol=1e-12, atol=0)
    torch.testing.assert_close((sde.a(t) / c) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close((sde.s(t) / c) ** 2, 1 - abar, rtol=1e-9, atol=1e-15)
    if process in (VPSDE, CosineVPSDE):
        torch.testing.assert_close(c, torch.ones_like(c), rtol=1e-12, atol=0)
    sigma = ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(time_at_vp_sigma(sde, sigma, eps), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.__name__)
def test_the_noise_prediction_of_the_vp_variable_is_the_vp_oracles(process):
    sde, mixture = process(), mixture_2d()
    vp = VPOf(sde)
    gen = torch.Generator().manual_seed(0)
    for t in (0.05, 0.5, 0.9):
        t = torch.tensor(t, dtype=torch.float64)
        x_vp = vp.a(t) * mixture.sample(500, gen) + vp.s(t) * torch.randn(500, 2, generator=gen, dtype=torch.float64)
        ours = vp_eps(sde, MixtureScore(sde, mixture), x_vp, t)
        theirs = vp.eps_from_score(MixtureScore(vp, mixture)(x_vp, t), t)
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.__name__)
def test_the_official_schedule_interface_is_our_process(process):
    sde = process()
    eps = check_eps(sde, None)
    ns = OfficialSchedule(sde, eps)
    t = torch.tensor([eps, 0.2, 0.6, sde.T], dtype=torch.float64)
    torch.testing.assert_close(ns.marginal_alpha(t) ** 2 + ns.marginal_std(t) ** 2, torch.ones_like(t), rtol=1e-12,
                               atol=0)
    torch.testing.assert_close(ns.marginal_lambda(t), torch.log(ns.marginal_alpha(t) / ns.marginal_std(t)),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ns.inverse_lambda(ns.marginal_lambda(t)), t, rtol=1e-9, atol=1e-12)
    if process is VPSDE:
        torch.testing.assert_close(ns.marginal_log_mean_coeff(t), -0.25 * t**2 * 19.9 - 0.5 * t * 0.1, rtol=1e-12,
                                   atol=0)


def _solve(sde, solver, n=2000):
    x_T = sde.prior_sample((n, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    return solver(sde, MixtureScore(sde, mixture_2d()), x_T)


@pytest.mark.parametrize("process", [VPSDE, VESDE], ids=lambda p: p.__name__)
@pytest.mark.parametrize("peer, ours", [("DPMSolverMultistepScheduler", lambda g: DPMSolver(10, order=2, grid=g)),
                                        ("DDIMScheduler", lambda g: DDIM(10, grid=g))], ids=["dpm++2m", "ddim"])
def test_a_diffusers_scheduler_and_ours_give_the_same_samples_on_its_grid(process, peer, ours):
    diffusers = pytest.importorskip("diffusers")
    sde = process()
    eps = check_eps(sde, None)
    config = (dict(solver_order=2, final_sigmas_type="sigma_min") if peer.startswith("DPM") else
              dict(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"))
    solver = DiffusersPeer(diffusers, peer, 10, **config)
    times = time_at_vp_sigma(sde, solver.sigmas(solver.scheduler(sde, eps)), eps)
    times[0], times[-1] = sde.T, eps
    x, nfe = _solve(sde, solver)
    y, _ = _solve(sde, ours(FixedTimes(times=times.tolist())))
    assert nfe == 10
    torch.testing.assert_close(x, y, rtol=0, atol=2e-5 * sde.prior_std())


@pytest.mark.skipif(not os.environ.get(DPM_SOLVER_ENV), reason=f"no official dpm_solver_pytorch (${DPM_SOLVER_ENV})")
@pytest.mark.parametrize("process", [VPSDE, VESDE], ids=lambda p: p.__name__)
def test_the_official_dpm_solver_and_ours_give_the_same_samples_on_the_logsnr_grid(process):
    sde = process()
    x, nfe = _solve(sde, OfficialPeer(load_official(os.environ[DPM_SOLVER_ENV]), 8, order=2, skip_type="logSNR",
                                      method="multistep"))
    y, _ = _solve(sde, DPMSolver(8, order=2, grid="logsnr"))
    assert nfe == 8
    torch.testing.assert_close(x, y, rtol=0, atol=1e-5 * sde.prior_std())


def test_a_missing_peer_is_named_and_skipped(monkeypatch):
    from benchmarks import peers

    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    found, missing = peers.peers(None)
    assert found == {}
    assert "diffusers is not installed" in missing[0] and "diffusers dpm++3m karras" in missing[0]
    assert DPM_SOLVER_ENV in missing[1] and "official dpm++3m logsnr" in missing[1]


@pytest.mark.parametrize("config", [dict(use_karras_sigmas=True), dict(use_lu_lambdas=True)], ids=["karras", "lu"])
def test_a_schedule_that_ends_on_sigma_min_twice_spends_its_nfe_from_T_to_eps(config):
    diffusers = pytest.importorskip("diffusers")
    sde = VPSDE()
    solver = DiffusersPeer(diffusers, "DPMSolverMultistepScheduler", 5, solver_order=3, final_sigmas_type="sigma_min",
                           **config)
    sigmas = solver.sigmas(solver.scheduler(sde, 1e-3))
    times = time_at_vp_sigma(sde, sigmas, 1e-3)
    intervals = int((sigmas[1:] != sigmas[:-1]).sum())
    assert len(sigmas) == 7 and sigmas[-1] == sigmas[-2]
    assert intervals == 5 and abs(times[0] - sde.T) < 1e-6 and abs(times[intervals] - 1e-3) < 1e-9
    assert _solve(sde, solver, n=10)[1] == 5
