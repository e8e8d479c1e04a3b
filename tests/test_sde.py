"""Every process's kernel against the closed forms of docs/theory.md, its own f and g, and a simulation."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from helpers import ALL_SDES, UserFlow, UserVE, UserVP
from sde import SDE, CosineVPSDE, RectifiedFlow, SubVPSDE, VESDE, VPSDE

TIMES = [1e-5, 1e-3, 0.05, 0.3, 0.5, 0.8, 0.95]


def closed_form(name, t):
    """a(t), s(t) straight from the table in docs/theory.md (default parameters)."""
    if name in ("vp", "subvp", "user_vp"):
        a = math.exp(-0.5 * (0.1 * t + 0.5 * t * t * 19.9))
        return a, (math.sqrt(1 - a * a) if name != "subvp" else 1 - a * a)
    if name == "ve":
        return 1.0, math.sqrt((0.01 * 5000**t) ** 2 - 0.01**2)
    if name == "cosine":
        k = 0.008
        abar = math.cos((t + k) / (1 + k) * math.pi / 2) ** 2 / math.cos(k / (1 + k) * math.pi / 2) ** 2
        return math.sqrt(abar), math.sqrt(1 - abar)
    if name == "rf":
        return 1 - t, t
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_marginal_matches_theory_table(name):
    sde = ALL_SDES[name]()
    t = torch.tensor(TIMES, dtype=torch.float64)
    for ti, a, s in zip(TIMES, sde.a(t), sde.s(t)):
        a_ref, s_ref = closed_form(name, ti)
        assert a.item() == pytest.approx(a_ref, rel=1e-9)
        assert s.item() == pytest.approx(s_ref, rel=1e-7)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_path_agrees_with_coefficients(name):
    """a = exp(∫f) and s² = a² ∫ g²/a², integrated by quadrature from the process's own f and g."""
    sde = ALL_SDES[name]()

    def f(u):
        return sde.f(torch.tensor(u, dtype=torch.float64)).item()

    def g2(u):
        return sde.g(torch.tensor(u, dtype=torch.float64)).item() ** 2

    for t in TIMES:
        log_a = quad(f, 0, t, epsabs=1e-13, epsrel=1e-12)[0]
        s2 = math.exp(2 * log_a) * quad(lambda u: g2(u) * math.exp(-2 * quad(f, 0, u, epsabs=1e-13)[0]), 0, t,
                                        epsabs=1e-15, epsrel=1e-10, limit=200)[0]
        tt = torch.tensor(t, dtype=torch.float64)
        assert sde.a(tt).item() == pytest.approx(math.exp(log_a), rel=1e-8)
        assert sde.s(tt).item() == pytest.approx(math.sqrt(s2), rel=1e-6)


@pytest.mark.parametrize("user, builtin", [(UserVP, VPSDE), (UserVE, VESDE), (UserFlow, RectifiedFlow)])
def test_user_subclass_gets_the_builtin_marginal_and_coefficients(user, builtin):
    """A subclass giving only (f, g) gets a, s numerically; one giving only (a, s) gets f, g by autodiff."""
    mine, ref = user(), builtin()
    t = torch.cat([torch.tensor([0.0, 1e-6, 1e-4]), torch.linspace(1e-3, 0.99, 301)]).double()
    assert torch.allclose(mine.a(t), ref.a(t), rtol=1e-9, atol=1e-12)
    assert torch.allclose(mine.s(t), ref.s(t), rtol=1e-8, atol=1e-12)
    assert torch.allclose(mine.f(t), ref.f(t), rtol=1e-9)
    assert torch.allclose(mine.g(t), ref.g(t), rtol=1e-9)


def test_numeric_marginal_keeps_dtype_and_device_and_shape():
    sde = UserVP()
    t = torch.rand(3, 4)
    assert sde.a(t).shape == (3, 4) and sde.a(t).dtype == torch.float32
    assert sde.s(t.double()).dtype == torch.float64


def test_a_subclass_must_state_a_process():
    class Nothing(SDE):
        pass

    with pytest.raises(TypeError, match="f\\(t\\) and g\\(t\\), or a\\(t\\) and s\\(t\\)"):
        Nothing()


@pytest.mark.parametrize("name", ["vp"] + [pytest.param(name, marks=pytest.mark.slow)
                                          for name in ["ve", "subvp", "cosine", "rf", "user_vp"]])
def test_marginal_matches_simulated_forward_sde(name):
    """Euler–Maruyama on dx = f x dt + g dw (midpoint coefficients, 1000 steps) from a fixed x0: at a quarter, half
    and all of the way the errors of 20,000 paths are at most half of each tolerance on every process (as at 2000
    steps)."""
    sde = ALL_SDES[name]()
    gen = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 1000, 0.9
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    ts = torch.linspace(0, t_end, steps + 1, dtype=torch.float64)
    checkpoints = {250: None, 500: None, 1000: None}
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        mid = 0.5 * (ts[i] + ts[i + 1])
        x = x + sde.f(mid) * x * dt + sde.g(mid) * dt.sqrt() * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if i + 1 in checkpoints:
            t = ts[i + 1]
            mean, std = sde.marginal(x0[None], t)
            emp_mean, emp_std = x.mean(0), x.std(0)
            se = std.item() / math.sqrt(n)
            assert torch.allclose(emp_mean, mean[0], atol=5 * se + 2e-3 * std.item()), (t, emp_mean, mean)
            assert torch.allclose(emp_std, std.expand(2), rtol=0.03), (t, emp_std, std)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_probability_flow_of_a_gaussian(name):
    """For data N(0, c² I): p_t = N(0, v(t) I), v = a² c² + s², and the flow is x_t ∝ sqrt(v(t)), so
    dx/dt = ½ v'(t)/v(t) x, with v' by central differences of the closed-form path."""
    sde = ALL_SDES[name]()
    c2 = 0.7
    x = torch.randn(5, 3, dtype=torch.float64)
    for t in [0.1, 0.4, 0.8]:
        t = torch.tensor(t, dtype=torch.float64)
        v = lambda u: sde.a(u) ** 2 * c2 + sde.s(u) ** 2  # noqa: E731
        h = 1e-5
        dv = (v(t + h) - v(t - h)) / (2 * h)
        score = -x / v(t)
        expected = 0.5 * dv / v(t) * x
        assert torch.allclose(sde.ode_drift(x, t, score), expected, rtol=1e-6)
        assert torch.allclose(sde.reverse_drift(x, t, score), 2 * sde.ode_drift(x, t, score) - sde.drift(x, t))


def test_marginal_broadcasts_over_images_with_per_sample_times():
    sde = VPSDE()
    x0 = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.1, 0.2, 0.5, 0.9])
    mean, std = sde.marginal(x0, t)
    assert mean.shape == (4, 3, 8, 8) and std.shape == (4, 1, 1, 1)
    assert torch.allclose(mean[2], sde.a(t[2]) * x0[2])
    z = torch.randn_like(x0)
    assert torch.allclose(sde.marginal_sample(x0, t, z), mean + std * z)


@pytest.mark.parametrize("name", sorted(ALL_SDES))
def test_prior(name):
    sde = ALL_SDES[name]()
    expected_std = {"ve": 50.0}.get(name, 1.0)
    assert sde.prior_std() == pytest.approx(expected_std, rel=2e-3)
    assert sde.prior_std() == pytest.approx(sde.s(torch.tensor(sde.T, dtype=torch.float64)).item())
    z = sde.prior_sample((20000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert z.std().item() == pytest.approx(sde.prior_std(), rel=0.02)
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z[:10]).sum(1)
    assert torch.allclose(sde.prior_logp(z[:10]), ref)
    img = sde.prior_sample((3, 1, 4, 4))
    assert sde.prior_logp(img).shape == (3,)


@pytest.mark.parametrize("make, message", [
    (lambda: VPSDE(beta_min=-1.0), "beta_min=-1.0"),
    (lambda: VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_max=0.5"),
    (lambda: CosineVPSDE(T=1.0), "T=1.0"),
    (lambda: RectifiedFlow(T=1.5), "T=1.5"),
    (lambda: SubVPSDE(beta_max=float("nan")), "beta_max=nan"),
])
def test_bad_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        make()


def test_log_snr_and_sigma():
    sde = VPSDE()
    t = torch.linspace(0.01, 1, 11, dtype=torch.float64)
    assert torch.allclose(sde.sigma(t), sde.s(t) / sde.a(t))
    assert torch.allclose(sde.log_snr(t), torch.log(sde.a(t) / sde.s(t)))
    assert np.all(np.diff(sde.log_snr(t).numpy()) < 0)
