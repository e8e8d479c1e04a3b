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


class LabelEmbedding(nn.Embedding):
    """Class labels 0..K−1 and the null label K (no class: the unconditional model) → vectors of size dim.
    The embedding starts at zero, so a conditional network starts as its unconditional self."""

    def __init__(self, num_classes, dim):
        super().__init__(int(num_classes) + 1, int(dim))
        nn.init.zeros_(self.weight)
        self.num_classes = int(num_classes)

    def forward(self, labels, x):
        """Labels of shape (N,) (None: all null) for a batch x."""
        if labels is None:
            labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return super().forward(torch.as_tensor(labels, device=x.device).reshape(-1).long())


def label_embedding(num_classes, dim):
    """A LabelEmbedding for num_classes classes (and the null class), or None for an unconditional net."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is invalid: expected a class count >= 1 (or null)",
                          "num_classes")
    return LabelEmbedding(num_classes, dim)


def check_labels(labels, num_classes, x):
    """Labels for a batch x: None, or integers 0..num_classes (num_classes = the null class), one per point. Their
    range is checked on the CPU only: on an accelerator that check would wait for the device at every forward (an
    out-of-range label still fails there, in the embedding's lookup)."""
    if labels is None:
        return None
    if num_classes is None:
        raise ConfigError("labels were given to an unconditional network (built without num_classes)", "labels")
    labels = torch.as_tensor(labels, device=x.device).reshape(-1)
    if labels.is_floating_point() or len(labels) != x.shape[0]:
        raise ConfigError(f"labels: expected {x.shape[0]} integer labels, got {len(labels)} of type {labels.dtype}",
                          "labels")
    if len(labels) and labels.device.type == "cpu" and (labels.min() < 0 or labels.max() > num_classes):
        bad = labels[(labels < 0) | (labels > num_classes)][0].item()
        raise ConfigError(f"label {bad} is out of range: the network knows classes 0..{num_classes - 1} and the "
                          f"null class {num_classes}", "labels")
    return labels
