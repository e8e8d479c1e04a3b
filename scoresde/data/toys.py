"""Two-dimensional toy distributions, generated in code (no files, no downloads). Fresh draws are i.i.d.,
so the test set is held out by construction."""
import math

import torch

from sde.errors import check_number

from .base import DataSet
from .mixture import GaussianMixture


class ToyData(DataSet):
    """A 2-D distribution given by ``points(n, generator) -> (n, 2)`` float64 points."""

    shape = (2,)

    def draw(self, n, generator):
        return self.points(n, generator), None

    def points(self, n, generator):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def _rand(n, generator, *shape):
    return torch.rand((n, *shape), generator=generator, dtype=torch.float64)


def _randn(n, generator, *shape):
    return torch.randn((n, *shape), generator=generator, dtype=torch.float64)


class Checkerboard(ToyData):
    """Uniform on the 8 dark squares of a 4 × 4 board over [−2, 2]²: density 1/8 there, entropy log 8."""

    def log_prob(self, x):
        x = x.reshape(x.shape[0], 2)
        inside = (x.abs() <= 2).all(1)
        dark = ((torch.floor(x[:, 0] + 2) + torch.floor(x[:, 1] + 2)) % 2 == 0) | (x.abs() == 2).any(1)
        log_density = torch.full_like(x[:, 0], -math.log(8.0))
        return torch.where(inside & dark, log_density, -math.inf)

    def points(self, n, generator):
        u = _rand(n, generator, 2) * 4 - 2
        x, y = u[:, 0], u[:, 1]
        cell = (torch.floor(x + 2) + torch.floor(y + 2)) % 2
        x = x + torch.where(cell == 1, torch.where(x < 1, 1.0, -3.0), 0.0).to(x)
        return torch.stack([x, y], 1)


class SwissRoll(ToyData):
    """The 2-D Swiss roll: θ ~ 1.5π (1 + 2u), (θ cos θ, θ sin θ) / 5 plus N(0, noise²)."""

    def __init__(self, noise=0.05):
        self.noise = check_number("noise", noise, strict=False)

    def points(self, n, generator):
        theta = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
        pts = torch.stack([theta * theta.cos(), theta * theta.sin()], 1) / 5
        return pts + self.noise * _randn(n, generator, 2)


class Moons(ToyData):
    """Two interleaved half circles, centred and scaled to unit spread, plus N(0, noise²)."""

    def __init__(self, noise=0.05):
        self.noise = check_number("noise", noise, strict=False)

    def points(self, n, generator):
        theta = math.pi * _rand(n, generator)
        upper = _rand(n, generator) < 0.5
        x = torch.where(upper, theta.cos(), 1 - theta.cos())
        y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
        return pts + self.noise * _randn(n, generator, 2)


class Rings(ToyData):
    """Four concentric circles of radii 0.5, 1, 1.5, 2, points in proportion to length, plus N(0, noise²)."""

    def __init__(self, noise=0.04):
        self.noise = check_number("noise", noise, strict=False)

    def points(self, n, generator):
        radii = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
        r = radii[torch.multinomial(radii, n, replacement=True, generator=generator)]
        theta = 2 * math.pi * _rand(n, generator)
        return torch.stack([r * theta.cos(), r * theta.sin()], 1) + self.noise * _randn(n, generator, 2)


class EightGaussians(GaussianMixture):
    """Eight equal Gaussians of std ``std`` on a circle of radius ``radius``: a GaussianMixture, so its
    density and entropy are exact and the oracle applies."""

    def __init__(self, radius=2.0, std=0.1):
        angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        radius = check_number("radius", radius)
        super().__init__(radius * torch.stack([angle.cos(), angle.sin()], 1), [check_number("std", std)] * 8)
