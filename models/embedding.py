"""Time embeddings shared by the networks: t of shape (N,) → features of shape (N, dim)."""
import math

import torch
from torch import nn

from sde.errors import ConfigError, check_choice


def batch_times(t, x):
    """Times as a float tensor of shape (N,) in x's dtype and device; a 0-dim or 1-element t is repeated N times."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
    return t.expand(x.shape[0]) if t.numel() == 1 else t


def _even(dim):
    dim = int(dim)
    if dim < 2 or dim % 2:
        raise ConfigError(f"time embedding size {dim!r} is invalid: a sin/cos embedding needs an even size >= 2 "
                          f"(embed_dim for the MLP, channels for the U-Net)")
    return dim


class FourierEmbedding(nn.Module):
    """Random Fourier features [sin(2π t w), cos(2π t w)], w ~ N(0, scale²) of size dim/2, drawn once.

    The frequencies are a registered buffer, so they are saved and restored with the state dict.
    """

    def __init__(self, dim, scale=16.0):
        super().__init__()
        self.dim = _even(dim)
        self.register_buffer("freqs", torch.randn(self.dim // 2) * float(scale))

    def forward(self, t):
        args = 2 * math.pi * t.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style [cos(c t ω_k), sin(c t ω_k)], ω_k = max_period^(−k/(dim/2)), k < dim/2, c = time_scale.

    time_scale = 1000 spreads t ∈ [0, 1] over the range DDPM's integer steps cover.
    """

    def __init__(self, dim, max_period=10000.0, time_scale=1000.0):
        super().__init__()
        self.dim = _even(dim)
        self.time_scale = float(time_scale)
        half = self.dim // 2
        freqs = torch.exp(-math.log(float(max_period)) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t):
        args = self.time_scale * t.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=1)


EMBEDDINGS = {"fourier": FourierEmbedding, "sinusoidal": SinusoidalEmbedding}


def time_embedding(kind, dim, **kwargs):
    """The embedding called ``kind`` ('fourier' or 'sinusoidal') with output size ``dim``."""
    check_choice("embedding", kind, EMBEDDINGS)
    return EMBEDDINGS[kind](dim, **kwargs)
