"""What the tests share: users' own processes, the mixtures, sampling with the oracle and the recovery check."""
import itertools

import pytest
import torch

from scoresde.evaluation import mixture_report
from models import MixtureScore
from sde import SDE, CosineVPSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE
from solvers.base import check_eps
from solvers.fitting import fit_solver
from scoresde.data import GaussianMixture, RandomMixture

from conftest import SDE_NAMES


class UserVP(SDE):
    """A user's process that states only f(t) and g(t): the VP SDE written out by hand."""

    def __init__(self, beta_min=0.1, beta_max=20.0):
        self.beta_min, self.beta_max = beta_min, beta_max
        super().__init__()

    def f(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def g(self, t):
        return torch.sqrt(self.beta_min + t * (self.beta_max - self.beta_min))


class UserVE(SDE):
    """A user's process that states only f(t) and g(t): the VE SDE written out by hand."""

    sampling_eps = 1e-5

    def f(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return 0.01 * 5000.0**t * (2 * torch.log(torch.tensor(5000.0, dtype=t.dtype))) ** 0.5


class UserFlow(SDE):
    """A user's process that states only the path a(t), s(t): rectified flow, coefficients derived."""

    T = 0.999

    def a(self, t):
        return 1 - t

    def s(self, t):
        return t


ALL_SDES = {
    "vp": VPSDE,
    "ve": VESDE,
    "subvp": SubVPSDE,
    "cosine": CosineVPSDE,
    "rf": RectifiedFlow,
    "user_vp": UserVP,
}
assert sorted(ALL_SDES) == list(SDE_NAMES)


def slow_except(fast, *axes):
    """Every combination of the axes as a parameter set, marked slow unless it is in ``fast``."""
    return [pytest.param(*combo, marks=() if combo in fast else pytest.mark.slow) for combo in itertools.product(*axes)]


def mixture_2d():
    """Three components of unequal weight and width."""
    return GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2])


def mixture_16d():
    return RandomMixture(components=4, dim=16, spread=1.5, std_min=0.3, std_max=0.8, seed=3)


def sample(sde, solver, mixture, n, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, *mixture.shape), generator=gen, dtype=dtype)
    score = MixtureScore(sde, mixture)
    solver, _ = fit_solver(solver, sde, score, mixture.shape, dtype=dtype)
    return solver(sde, score, x_T, gen)


def reference(sde, solver, mixture):
    """The exact law at the solver's end time eps: the mixture perturbed to p_eps."""
    eps = torch.tensor(check_eps(sde, solver.eps), dtype=torch.float64)
    return mixture.perturbed(sde.a(eps).item(), sde.s(eps).item())


def assert_recovers(sde, solver, mixture, n, tv, mean, std):
    """Samples n points with the oracle and asserts the mixture's weights (TV < tv), component means
    (mean_error < mean) and stds (std_ratio_error < std) at the solver's end time; returns the NFE."""
    x, nfe = sample(sde, solver, mixture, n)
    assert x.shape == (n, *mixture.shape) and torch.isfinite(x).all()
    report = mixture_report(reference(sde, solver, mixture), x)
    assert report["weights_tv"] < tv, report
    assert report["mean_error"] < mean, report
    assert report["std_ratio_error"] < std, report
    return nfe
