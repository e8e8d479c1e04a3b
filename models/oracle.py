"""The exact score of a Gaussian mixture carried through a linear SDE: a model that needs no training."""
import torch
from torch import nn

from scoresde.data import GaussianMixture
from sde.errors import ConfigError

from .embedding import check_labels


class MixtureScore(nn.Module):
    """score(x, t) = ∇ log p_t(x),  p_t = Σ_k w_k N(a(t) μ_k, (a(t)² σ_k² + s(t)²) I);  score(x, t, y) the
    class-conditional ∇ log p_t(x | y) (the sum over class y's components), the null label num_classes = p_t."""

    def __init__(self, sde, data):
        super().__init__()
        if not isinstance(data, GaussianMixture):
            raise ConfigError(f"the mixture oracle needs a Gaussian-mixture data set (data=gmm); got {data!r}")
        self.sde = sde
        self.mixture = data
        self.shape = data.shape
        self.num_classes = data.num_classes

    def forward(self, x, t, y=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.mixture.score(x, self.sde.a(t), self.sde.s(t), self._labels(y, x))

    def log_prob(self, x, t, y=None):
        """The exact log p_t(x) (or log p_t(x | y)), for reference."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.mixture.log_prob(x, self.sde.a(t), self.sde.s(t), self._labels(y, x))

    def _labels(self, y, x):
        """Labels for the mixture: the null label becomes −1 (every component)."""
        y = check_labels(y, self.num_classes, x)
        return None if y is None else torch.where(y == self.num_classes, -1, y)
