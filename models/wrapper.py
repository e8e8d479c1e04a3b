"""Turns a network's raw output into a score, for any SDE and any of four parameterizations."""
import torch
from torch import nn

from sde import expand
from sde.errors import ConfigError, check_choice, check_number, config_scope

from .embedding import batch_times

PARAMETERIZATIONS = ("eps", "score", "v", "x0", "consistency")


class ScoreModel(nn.Module):
    """score(x, t) = ∇log p_t(x) from a network F:  raw = F(c_in x, t),  c_in = 1 / √(a² σ_data² + s²).

    With x_t = a x_0 + s ε, the preconditioning gives the network unit-scale input whenever the data have
    scale σ_data, for every process (VE's s reaches 50). The raw output is read as

        'eps'    ε̂ = raw                               score = −ε̂ / s
        'x0'     x̂_0 = c_skip x/a + c_out raw, in σ = s/a:   c_skip = σ_d² / (σ² + σ_d²),
                 c_out = σ σ_d / √(σ² + σ_d²)   (Karras et al. 2022's denoiser; a bare x̂_0 = raw would
                 have to reproduce x to within s at low noise)    score = (a x̂_0 − x) / s²
        'consistency'  x̂_0 as for 'x0' with c_skip = σ_d² / ((σ − σ_min)² + σ_d²), c_out = (σ − σ_min) σ_d /
                 √(σ² + σ_d²), σ_min = σ(sde.sampling_eps): a consistency function (Song et al. 2023, appendix C)
                 that meets its boundary condition x̂_0(x, t_min) = x / a exactly
        'v'      v̂ = raw, v = α ε − σ̄ x_0,  with α = a/r, σ̄ = s/r, r = √(a² + s²), x̃ = x/r:
                 x̂_0 = α x̃ − σ̄ v̂,  ε̂ = σ̄ x̃ + α v̂       score = −ε̂ / s
        'score'  score = raw / s  (the net predicts s · score = −ε, as score_sde's scale_by_sigma;
                 the unscaled score grows like 1/s near t = 0 and is badly conditioned)

    and every one is converted exactly into the others: x̂_0 = (x − s ε̂)/a = (x + s² score)/a.
    ``net`` is a module net(x, t), or a callable net(shape=...) (a Hydra partial) built with the event shape
    of ``data`` (a scoresde.data.DataSet, or the DataSpec a checkpoint keeps). ``conditional=True`` builds it with
    the data's ``num_classes`` (net(x, t, y): score(x, t, y) = ∇log p_t(x | y), the null label num_classes
    giving the unconditional score).
    """

    def __init__(self, net, sde, parameterization="eps", sigma_data=1.0, data=None, conditional=False):
        super().__init__()
        check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        sigma_data = check_number("sigma_data", sigma_data)
        if not isinstance(net, nn.Module):
            if data is None:
                raise ConfigError("net is not a network: give an nn.Module, or a partial and the data set", "net")
            classes = {}
            if conditional:
                if data.num_classes is None:
                    raise ConfigError(f"conditional=true needs labelled data; {data!r} has no labels", "conditional")
                classes = {"num_classes": int(data.num_classes)}
            with config_scope("net"):
                net = net(shape=tuple(data.shape), **classes)
        elif conditional and getattr(net, "num_classes", None) is None:
            raise ConfigError("conditional=true needs a network built with num_classes", "conditional")
        self.net = net
        self.num_classes = getattr(net, "num_classes", None)
        self.shape = tuple(getattr(net, "shape", ())) or (tuple(data.shape) if data is not None else ())
        self.sde = sde
        self.parameterization = parameterization
        self.sigma_data = sigma_data

    def coefficients(self, x, t):
        """a(t), s(t) and c_in(t), shaped to broadcast against x."""
        a, s = expand(self.sde.a(t), x), expand(self.sde.s(t), x)
        return a, s, torch.rsqrt(a**2 * self.sigma_data**2 + s**2)

    def _predict(self, x, t, y=None):
        t = batch_times(t, x)
        a, s, c_in = self.coefficients(x, t)
        raw = self.net(x * c_in, t) if y is None else self.net(x * c_in, t, y)
        if self.parameterization == "eps":
            return raw, (x - s * raw) / a, s
        if self.parameterization == "score":
            return -raw, (x + s * raw) / a, s
        if self.parameterization in ("x0", "consistency"):
            sigma2 = (s / a) ** 2
            shift = torch.sqrt(sigma2)
            if self.parameterization == "consistency":
                shift = shift - self.sde.sigma(torch.as_tensor(self.sde.sampling_eps, dtype=torch.float64)).item()
            c_skip = self.sigma_data**2 / (shift**2 + self.sigma_data**2)
            c_out = shift * self.sigma_data * torch.rsqrt(sigma2 + self.sigma_data**2)
            x0 = c_skip * x / a + c_out * raw
            return (x - a * x0) / s, x0, s
        r = torch.sqrt(a**2 + s**2)
        alpha, sigma, xt = a / r, s / r, x / r
        return sigma * xt + alpha * raw, alpha * xt - sigma * raw, s

    def predict(self, x, t, y=None):
        """(ε̂, x̂_0) from one network evaluation."""
        return self._predict(x, t, y)[:2]

    def forward(self, x, t, y=None):
        """score = −ε̂ / s (of p_t(x | y) for labels y; y = None or the null label: of p_t(x))."""
        eps, _, s = self._predict(x, t, y)
        return -eps / s

    def denoise(self, x, t, y=None):
        """x̂_0 = E[x_0 | x_t] = (x + s² score) / a."""
        return self._predict(x, t, y)[1]

    def eps(self, x, t, y=None):
        """ε̂ = −s · score."""
        return self._predict(x, t, y)[0]

    def extra_repr(self):
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, sigma_data={self.sigma_data}"
