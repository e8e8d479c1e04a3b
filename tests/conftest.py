import pytest
import torch

from sde import SDE, CosineVPSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE
from training.data import GaussianMixture, random_mixture


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


@pytest.fixture(params=sorted(ALL_SDES))
def any_sde(request):
    return ALL_SDES[request.param]()


def mixture_2d():
    """Three components of unequal weight and width."""
    return GaussianMixture([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [0.3, 0.5, 0.2], [0.5, 0.3, 0.2])


def mixture_16d():
    return random_mixture(components=4, dim=16, spread=1.5, std_min=0.3, std_max=0.8, seed=3)
