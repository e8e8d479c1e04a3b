"""The likelihood point by point: method='exponential' against the exact log-density of the ODE's own start.

The error of a point is (log p_T(x_T) + ∫_eps^T ∇·h dt − log p_eps(x)) / D with the oracle's exact marginals at both
ends, so the prior's mismatch with p_T is not counted: what is left is the ODE solve and its divergence integral."""
import math

import numpy as np
import pytest
import torch

from benchmarks.oracle import MIXTURES
from helpers import ALL_SDES
from models import MixtureScore
from scoresde.data import GaussianMixture
from sde import ConfigError
from solvers import FlooredLogSNR, ODELikelihood, UniformLogSNR
from solvers.exponential import adams_weights

DOCUMENTED = dict(method="exponential", steps=50)  # README, eval.ode: order 4, grid logsnr_floor, sigma_floor 0.02
BOUND = 0.005  # nats per dimension, mean over points of |error|


def start_errors(lik, sde, mixture, x):
    oracle = MixtureScore(sde, mixture)
    z, delta, nfe = lik.encode(sde, oracle, x)
    at = lambda t: torch.full((len(x),), t, dtype=torch.float64)  # noqa: E731
    err = (oracle.log_prob(z.double(), at(sde.T)) + delta - oracle.log_prob(x.double(), at(lik.eps))) / mixture.dim
    return err, nfe


@pytest.mark.parametrize("sde_name, mix_name, num, coarse", [
    ("vp", "2d", 400, dict(steps=25)),
    pytest.param("ve", "2d", 400, dict(steps=25), marks=pytest.mark.slow),
    ("cosine", "2d", 400, dict(order=2)),
    pytest.param("rf", "2d", 400, dict(order=2), marks=pytest.mark.slow),
    pytest.param("vp", "64d", 40, dict(steps=10), marks=pytest.mark.slow),
], ids=["vp-2d", "ve-2d", "cosine-2d", "rf-2d", "vp-64d"])
def test_documented_setting_is_within_the_bound_point_by_point(sde_name, mix_name, num, coarse):
    """The documented setting at 50 NFE: mean |error| <= 0.005 nats/dim over the benchmark's test points (float32,
    exact divergence); a coarser setting of the same method (half the steps, or order 2) fails the same bound."""
    sde, mixture = ALL_SDES[sde_name](), MIXTURES[mix_name]()
    x = mixture.sample(num, torch.Generator().manual_seed(1))
    err, nfe = start_errors(ODELikelihood(**DOCUMENTED), sde, mixture, x)
    assert nfe == 50
    assert err.abs().mean().item() <= BOUND, err.abs().mean()
    coarse_err, _ = start_errors(ODELikelihood(**{**DOCUMENTED, **coarse}), sde, mixture, x)
    assert coarse_err.abs().mean().item() > BOUND, coarse_err.abs().mean()


def test_the_nll_is_the_prior_plus_the_same_integral_and_the_estimate_tracks_the_error():
    """nll = −(log N(x_T; prior) + ∫ div) from one 50-NFE solve; the free order-3 estimate is within a factor 3 of
    the true mean |error|, and a 10-step solve is refused by it."""
    sde, mixture = ALL_SDES["vp"](), MIXTURES["2d"]()
    x = mixture.sample(300, torch.Generator().manual_seed(2), dtype=torch.float64)
    lik = ODELikelihood(**DOCUMENTED)
    nll, nfe = lik(sde, MixtureScore(sde, mixture), x)
    z, delta, _ = lik.encode(sde, MixtureScore(sde, mixture), x)
    assert nfe == 50 and torch.allclose(nll, -(sde.prior_logp(z) + delta))
    err, _ = start_errors(lik, sde, mixture, x)
    true = err.abs().mean().item()
    assert true / 3 < lik.error_estimate < 3 * true, (lik.error_estimate, true)
    with pytest.raises(ConfigError, match=r"steps=10 is too coarse for method='exponential'.*at order 3 differs"):
        ODELikelihood(method="exponential", steps=10, max_error=0.01)(sde, MixtureScore(sde, mixture), x)


def test_fourth_order_on_a_gaussian_image():
    """Gaussian data of shape (1, 2, 2): on the logsnr grid (sigma_floor=0) the largest per-point error falls by
    more than 8 from 100 to 200 steps (fourth order) and ends below 1e-5 nats/dim."""
    mixture = GaussianMixture(torch.zeros(1, 1, 2, 2, dtype=torch.float64), [0.7], [1.0])
    sde = ALL_SDES["ve"]()
    x = mixture.sample(20, torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = [start_errors(ODELikelihood(method="exponential", steps=n, sigma_floor=0), sde, mixture, x)[0]
              .abs().max().item() for n in (100, 200)]
    assert errors[0] / errors[1] > 8 and errors[1] < 1e-5, errors


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_adams_weights_are_exact_for_polynomials(order):
    """Σ_j W[i, j] P(λ_{i−j}) = ∫ e^{λ − λ_{i+1}} P dλ and Σ_j Q[i, j] P(λ_{i−j}) = ∫ P dλ for every polynomial P of
    degree < k (the order of step i), on an uneven decreasing grid; degree k is not exact."""
    lam = torch.tensor([6.0, 5.1, 4.5, 3.2, 2.9, 1.0, -0.5, -0.9], dtype=torch.float64)
    W, Q = adams_weights(lam, order)
    u, w = np.polynomial.legendre.leggauss(40)
    for i in range(len(lam) - 1):
        k = min(order, i + 1)
        nodes = lam[i - torch.arange(k)]
        half = (lam[i + 1] - lam[i]).item() / 2
        at = torch.tensor(lam[i].item() + half * (u + 1))
        for degree in range(k + 1):
            exact_w = (half * torch.tensor(w) * torch.exp(at - lam[i + 1]) * at**degree).sum()
            exact_q = (half * torch.tensor(w) * at**degree).sum()
            got_w, got_q = (W[i, :k] * nodes**degree).sum(), (Q[i, :k] * nodes**degree).sum()
            if degree < k:
                assert torch.isclose(got_w, exact_w, rtol=1e-10, atol=1e-12)
                assert torch.isclose(got_q, exact_q, rtol=1e-10, atol=1e-12)
            elif degree >= 1 and abs(half) > 0.2:
                assert not torch.isclose(got_q, exact_q, rtol=1e-6)


def test_floored_grid():
    """Uniform in −½ log(σ² + σ_f²): the ends exact, decreasing; σ_f = 0 gives the logsnr grid; a floor moves the
    steps from below σ_f to above it."""
    sde = ALL_SDES["vp"]()
    t = FlooredLogSNR(0.02)(sde, 50, 1e-5)
    assert t[0].item() == sde.T and t[-1].item() == 1e-5 and (t[1:] < t[:-1]).all()
    sigma2 = torch.exp(-2 * sde.log_snr(t))
    v = -0.5 * torch.log(sigma2 + 0.02**2)
    assert torch.allclose(v[1:] - v[:-1], (v[1] - v[0]).expand(50), rtol=1e-6)
    assert torch.allclose(FlooredLogSNR(0)(sde, 30, 1e-5), UniformLogSNR()(sde, 30, 1e-5), rtol=1e-9)
    below = lambda ts: (torch.exp(-0.5 * 2 * sde.log_snr(ts)) < 0.02).sum().item()  # noqa: E731
    assert below(t) < below(UniformLogSNR()(sde, 50, 1e-5)) / 3


def test_exponential_options_are_checked():
    with pytest.raises(ConfigError, match="order=5"):
        ODELikelihood(method="exponential", order=5)
    with pytest.raises(ConfigError, match="method='rk5'"):
        ODELikelihood(method="rk5")
    with pytest.raises(ConfigError, match="grid='sigma'"):
        ODELikelihood(method="exponential", grid="sigma")
    sde, mixture = ALL_SDES["vp"](), MIXTURES["2d"]()
    with pytest.raises(ConfigError, match="eps=0"):
        ODELikelihood(method="exponential", eps=0)(sde, MixtureScore(sde, mixture), torch.zeros(3, 2))
    assert ODELikelihood(method="exponential").time_grid.name == "logsnr_floor"
    assert ODELikelihood(method="rk4").time_grid.name == "time"
    assert math.isclose(ODELikelihood(method="exponential", sigma_floor=0.05).time_grid.sigma_floor, 0.05)
