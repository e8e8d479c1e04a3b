"""The exact score of a Gaussian mixture carried through a linear SDE: a model that needs no training."""
import torch
from torch import nn

from scoredata import GaussianMixture
from sde.errors import ConfigError


class MixtureScore(nn.Module):
    """score(x, t) = ∇ log p_t(x),  p_t = Σ_k w_k N(a(t) μ_k, (a(t)² σ_k² + s(t)²) I)."""

    def __init__(self, sde, data):
        super().__init__()
        if not isinstance(data, GaussianMixture):
            raise ConfigError(f"the mixture oracle needs a Gaussian-mixture data set (data=gmm); got {data!r}")
        self.sde = sde
        self.mixture = data
        self.shape = data.shape

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.mixture.score(x, self.sde.a(t), self.sde.s(t))

    def log_prob(self, x, t):
        """The exact log p_t(x), for reference."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.mixture.log_prob(x, self.sde.a(t), self.sde.s(t))
