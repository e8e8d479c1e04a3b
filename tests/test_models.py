"""The oracle's score is the exact gradient of the perturbed mixture's log-density."""
import math

import pytest
import torch

from helpers import mixture_2d
from models import MixtureScore
from scoresde.data import GaussianMixture


def test_oracle_score_is_the_gradient_of_the_exact_log_density(any_sde):
    mix = mixture_2d()
    oracle = MixtureScore(any_sde, mix)
    x = (3 * torch.randn(64, 2, dtype=torch.float64)).requires_grad_(True)
    t = torch.rand(64, dtype=torch.float64) * any_sde.T
    (grad,) = torch.autograd.grad(oracle.log_prob(x, t).sum(), x)
    assert torch.allclose(oracle(x, t), grad, rtol=1e-10, atol=1e-12)


def test_perturbed_mixture_is_the_convolution():
    """log p_t by numerical integration of p_0(x0) N(x; a x0, s²) over a grid, in 1-D."""
    mix = GaussianMixture([[-1.0], [2.0]], [0.3, 0.6], [0.3, 0.7])
    a, s = 0.8, 0.5
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    p0 = mix.log_prob(grid[:, None]).exp()
    for x in [-2.0, 0.0, 1.3]:
        kernel = torch.exp(-0.5 * (x - a * grid) ** 2 / s**2) / math.sqrt(2 * math.pi * s**2)
        p = torch.trapezoid(p0 * kernel, grid)
        assert mix.log_prob(torch.tensor([[x]], dtype=torch.float64), a, s).item() == pytest.approx(p.log().item(), abs=1e-8)


def test_oracle_on_images_any_batch_shape():
    means = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    mix = GaussianMixture(means, [0.2, 0.3, 0.4], [1, 1, 2])
    from sde import VPSDE

    oracle = MixtureScore(VPSDE(), mix)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    score = oracle(x, t)
    assert score.shape == x.shape
    (grad,) = torch.autograd.grad(oracle.log_prob(x, t).sum(), x)
    assert torch.allclose(score, grad)
    assert mix.sample(7).shape == (7, 1, 4, 4)


def test_mixture_sampling_statistics():
    mix = mixture_2d()
    x, labels = mix.sample(40000, torch.Generator().manual_seed(0), dtype=torch.float64, labels=True)
    freq = torch.bincount(labels, minlength=3).double() / len(labels)
    assert torch.allclose(freq, mix.weights, atol=0.01)
    for k in range(3):
        pts = x[labels == k]
        assert torch.allclose(pts.mean(0), mix.means[k], atol=0.02)
        assert pts.std(0).mean().item() == pytest.approx(mix.stds[k].item(), rel=0.03)


@pytest.mark.parametrize("kwargs, message", [
    (dict(means=[[0, 0], [1, 1]], stds=[0.1, 0.2, 0.3]), "stds has 3 entries but means has 2 components"),
    (dict(means=[[0, 0], [1, 1]], stds=[0.1, 0.2], weights=[1]), "weights has 1 entries"),
    (dict(means=[[0, 0], [1, 1]], stds=[0.1, -0.2]), "stds contains -0.2"),
    (dict(means=[[0, 0], [1]], stds=[0.1, 0.2]), "means=.* equal-length rows"),
    (dict(means=[0, 1], stds=[0.1, 0.2]), "means=.* one row per component"),
    (dict(means=[[0, 0]], stds=[0.1], weights=[-1]), "weights=.* must be >= 0"),
])
def test_bad_mixture_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_oracle_rejects_other_data():
    from sde import VPSDE

    with pytest.raises(ValueError, match="the mixture oracle needs a Gaussian-mixture"):
        MixtureScore(VPSDE(), object())
