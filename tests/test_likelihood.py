"""The probability-flow likelihood against the exact mixture log-density, point by point."""
import math

import pytest
import torch

from helpers import ALL_SDES, mixture_16d, mixture_2d
from models import MixtureScore
from scoresde.data import DataSpec, GaussianMixture
from sde import ConfigError
from solvers import ODELikelihood
from solvers.likelihood import exact_divergence, hutchinson_divergence


def points(mixture, n, seed=0, dtype=torch.float64):
    return mixture.sample(n, torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("mixture, sde_name", [
    pytest.param(mixture, name, marks=() if mixture is mixture_2d or name == "vp" else pytest.mark.slow,
                 id=f"{name}-{'2d' if mixture is mixture_2d else '16d'}")
    for mixture in (mixture_2d, mixture_16d) for name in sorted(ALL_SDES)])
def test_ode_transport_is_exact_for_every_sde(sde_name, mixture):
    """log p_eps(x) = log p_T(x_T) + ∫ div: with the exact log p_T at the end, the solver and the exact
    divergence leave under 1e-3 nats per dimension (the prior's own mismatch taken out); the fast tier: every
    process in 2-D, VP in 16-D."""
    any_sde = ALL_SDES[sde_name]()
    mix = mixture()
    oracle = MixtureScore(any_sde, mix)
    x = points(mix, 100)
    z, delta, nfe = ODELikelihood(rtol=1e-6, atol=1e-6, divergence="exact").encode(any_sde, oracle, x)
    T = torch.full((len(x),), any_sde.T, dtype=x.dtype)
    log_p = oracle.log_prob(z, T) + delta
    err = (log_p - mix.log_prob(x)).abs() / mix.dim
    assert err.max().item() < 1e-3, err.max()
    assert nfe > 10


@pytest.mark.parametrize("mixture, tol", [(mixture_2d, 0.01), (mixture_16d, 0.005)], ids=["2d", "16d"])
def test_nll_matches_exact_log_density_per_point(mixture, tol):
    """End to end with the default settings (VP, prior N(0, I), dopri5 at 1e-5, exact divergence, float32)."""
    mix = mixture()
    sde = ALL_SDES["vp"]()
    x = points(mix, 200, dtype=torch.float32)
    nll, nfe = ODELikelihood()(sde, MixtureScore(sde, mix), x)
    err = (nll.double() + mix.log_prob(x.double())) / mix.dim
    assert err.abs().max().item() < tol, err.abs().max()
    assert abs(err.mean().item()) < tol / 5


def test_user_subclass_likelihood_matches_builtin():
    mix = mixture_2d()
    x = points(mix, 50)
    nll_user, _ = ODELikelihood()(ALL_SDES["user_vp"](), MixtureScore(ALL_SDES["user_vp"](), mix), x)
    nll_vp, _ = ODELikelihood()(ALL_SDES["vp"](), MixtureScore(ALL_SDES["vp"](), mix), x)
    assert torch.allclose(nll_user, nll_vp, atol=1e-5)
    assert (nll_user + mix.log_prob(x)).abs().max() / 2 < 0.01


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(kind):
    """Each of 3 points repeated 3000 times: the mean estimate sits within 4 standard errors of the exact NLL,
    and the single estimates do vary (the estimator is stochastic)."""
    mix = mixture_2d()
    sde = ALL_SDES["vp"]()
    x = points(mix, 3).repeat_interleave(3000, 0)
    nll, _ = ODELikelihood(divergence=kind)(sde, MixtureScore(sde, mix), x, torch.Generator().manual_seed(1))
    exact = -mix.log_prob(x[::3000])
    nll = nll.reshape(3, 3000)
    se = nll.std(1) / math.sqrt(3000)
    assert (nll.std(1) > 0.05).all()
    assert ((nll.mean(1) - exact).abs() < 4 * se + 0.01).all(), (nll.mean(1), exact, se)


def test_auto_divergence_choice():
    lik = ODELikelihood(exact_max_dim=16)
    assert lik.estimator(16) == "exact" and lik.estimator(17) == "rademacher"
    assert ODELikelihood(divergence="gaussian").estimator(2) == "gaussian"


def test_exact_divergence_matches_the_jacobian_trace_in_any_chunking():
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=torch.float64)

    def fn(y):
        flat = y.reshape(y.shape[0], -1)
        return torch.tanh(flat @ w).reshape(y.shape) * flat.reshape(y.shape) ** 2

    x = torch.randn(5, 1, 2, 3, dtype=torch.float64)
    expected = torch.stack([torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], x[i]).reshape(6, 6).trace()
                            for i in range(5)])
    for max_rows in (5, 10, 65536):
        h, div = exact_divergence(fn, x, max_rows=max_rows)
        assert torch.allclose(div, expected) and torch.allclose(h, fn(x))
    v = torch.randn_like(x)
    _, est = hutchinson_divergence(fn, x, v)
    jv = torch.stack([torch.autograd.functional.jacobian(lambda u: fn(u[None])[0], x[i]).reshape(6, 6).T
                      @ v[i].reshape(6) for i in range(5)])
    assert torch.allclose(est, (jv * v.reshape(5, 6)).sum(1))


def test_fixed_grid_likelihood_converges():
    mix, sde = mixture_2d(), ALL_SDES["vp"]()
    x = points(mix, 50)
    exact = -mix.log_prob(x)
    errors = [(ODELikelihood(method="rk4", steps=n, max_error=0)(sde, MixtureScore(sde, mix), x)[0] - exact).abs().max().item()
              for n in (5, 20, 80)]
    assert errors[2] < errors[0] and errors[2] < 0.02


def test_bits_per_dim():
    assert DataSpec((10,)).bits_per_dim(math.log(2) * 10) == pytest.approx(1.0)
    assert DataSpec((3, 32, 32), levels=256, value_range=(-1, 1)).bits_per_dim(0.0) == pytest.approx(7.0)
    assert DataSpec((3, 32, 32), levels=256, value_range=(0, 1)).bits_per_dim(0.0) == pytest.approx(8.0)


def test_dequantization_stays_within_the_bin_and_matches_uniform_bpd():
    """Data uniform over 256 bin centres in [-1, 1], dequantized, has density 1/2 per dim: 8 bits/dim."""
    spec = DataSpec((1,), levels=256, value_range=(-1, 1))
    k = torch.randint(0, 256, (100000, 1), generator=torch.Generator().manual_seed(0))
    x = -1 + (k + 0.5) * 2 / 256
    y = spec.dequantize(x.double(), torch.Generator().manual_seed(1))
    assert ((y - x).abs() <= 2 / 256 / 2 + 1e-12).all()
    assert y.min() >= -1 and y.max() <= 1
    assert spec.bits_per_dim(math.log(2.0)) == pytest.approx(8.0)
    assert torch.equal(DataSpec((1,)).dequantize(x), x)
    counts = torch.histc(y.float(), bins=512, min=-1, max=1)
    assert (counts.std() / counts.mean()).item() < 0.08


def test_bad_likelihood_options_are_named():
    with pytest.raises(ValueError, match="divergence='hutch' is unknown"):
        ODELikelihood(divergence="hutch")
    with pytest.raises(ValueError, match="eps=1.5"):
        ODELikelihood(eps=1.5)(ALL_SDES["vp"](), MixtureScore(ALL_SDES["vp"](), mixture_2d()), torch.zeros(2, 2))


def test_images_likelihood_any_shape():
    means = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    mix = GaussianMixture(means, [0.3, 0.5], [1, 2])
    sde = ALL_SDES["vp"]()
    x = mix.sample(8, torch.Generator().manual_seed(0), dtype=torch.float64)
    nll, _ = ODELikelihood()(sde, MixtureScore(sde, mix), x)
    assert nll.shape == (8,)
    assert ((nll + mix.log_prob(x)).abs() / 9).max() < 0.01


def test_a_fixed_step_likelihood_refuses_when_its_own_error_estimate_is_too_large():
    """On the 2-D mixture, rk4 with 2 steps errs by 0.1 nats/dim; the re-solve with 1 step sees it and refuses.
    With enough steps the estimate is small and bounds the true error of the mean, and it passes."""
    sde, mix = ALL_SDES["vp"](), mixture_2d()
    x = mix.sample(300, torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"steps=2 is too coarse for method='rk4'.*raise steps or use method=dopri5"):
        ODELikelihood(method="rk4", steps=2)(sde, MixtureScore(sde, mix), x)
    lik = ODELikelihood(method="rk4", steps=40)
    nll, nfe = lik(sde, MixtureScore(sde, mix), x)
    exact = -mix.log_prob(x)
    assert nfe == 4 * 40 + 4 * 20
    true_error = (nll.mean() - exact.mean()).abs().item() / 2
    assert lik.error_estimate < 0.01 and true_error < 0.01
    unchecked = ODELikelihood(method="rk4", steps=40, max_error=0)
    assert torch.equal(unchecked(sde, MixtureScore(sde, mix), x)[0], nll) and unchecked.error_estimate is None
