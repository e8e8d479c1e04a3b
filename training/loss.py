"""Denoising score matching, written once in score space for every linear SDE."""
import torch

from sde import expand
from sde.errors import check_choice, check_number

WEIGHTINGS = ("eps", "likelihood")
REDUCTIONS = ("mean", "sum")


class DSMLoss:
    """L(θ) = E_{t ~ U(t_min, T), x_0, z} [ λ(t) ‖ s_θ(a x_0 + s z, t) + z / s ‖² ]   (Song et al. 2021, eq. 7).

    weighting 'eps': λ = s², the noise-prediction loss ‖ε_θ − z‖² (Ho et al. 2020's L_simple);
    weighting 'likelihood': λ = g², which bounds the negative log-likelihood (Song et al. 2021b).
    reduction 'mean' averages over dimensions, 'sum' adds them; both average over the batch.
    """

    def __init__(self, weighting="eps", reduction="mean", t_min=1e-5):
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.t_min = check_number("t_min", t_min, strict=False, maximum=1.0, strict_max=True)

    def __call__(self, model, sde, x0, generator=None):
        n = x0.shape[0]
        u = torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
        t = self.t_min + (sde.T - self.t_min) * u
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = expand(sde.s(t), x0)
        x_t = expand(sde.a(t), x0) * x0 + s * z
        score = model(x_t, t)
        weight = s**2 if self.weighting == "eps" else expand(sde.g(t) ** 2, x0)
        per_dim = weight * (score.to(z.dtype) + z / s) ** 2
        per_sample = per_dim.reshape(n, -1)
        per_sample = per_sample.mean(1) if self.reduction == "mean" else per_sample.sum(1)
        return per_sample.mean()

    def __repr__(self):
        return f"DSMLoss(weighting={self.weighting!r}, reduction={self.reduction!r}, t_min={self.t_min})"
