"""A compact U-Net for images (N, C, H, W), conditioned on time."""
import torch
import torch.nn.functional as F
from torch import nn

from sde.errors import ConfigError, check_int, check_number, invalid

from .embedding import batch_times, check_labels, label_embedding, time_embedding
from .mlp import event_shape


def _zero(module):
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ResBlock(nn.Module):
    """h = conv(act(GN(x)));  h = GN(h) (1 + γ(c)) + β(c);  out = skip(x) + conv(dropout(act(h))).

    The second conv starts at zero, so the block starts as the identity on x (or its 1×1 projection).
    """

    def __init__(self, cin, cout, cond_dim, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.cond(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions: out = x + proj(softmax(q kᵀ/√C) v), proj starts at zero."""

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x, c=None):
        n, ch, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, ch, hgt * wid).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(n, ch, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, c=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, c=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """Layers applied in turn, each called as layer(h, c); None entries are left out."""

    def __init__(self, *layers):
        super().__init__([layer for layer in layers if layer is not None])

    def forward(self, h, c):
        for layer in self:
            h = layer(h, c)
        return h


def _integers(name, values, minimum):
    """A list of integers >= minimum as a tuple (a string, a float or a bool among them refused)."""
    try:
        values = None if isinstance(values, str) else list(values)
    except TypeError:
        values = None
    if values is None or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        raise invalid(name, values, f"a list of integers >= {minimum}")
    return tuple(values)


class UNet(nn.Module):
    """net(x, t, y) for images x of shape (N, C, H, W) and optional class labels y, returning x's shape.

    Level i runs at resolution H / 2^i with channels · multipliers[i] channels: num_res_blocks ResBlocks
    (each followed by self-attention where the feature map's height is in attention_resolutions), then a
    stride-2 conv down. The middle is ResBlock, attention, ResBlock. The way up mirrors it with
    num_res_blocks + 1 ResBlocks per level, each taking one skip connection (concatenated), and
    nearest-neighbour upsampling plus a conv between levels. The time embedding e(t) of size `channels`
    goes through a 2-layer MLP to c (size embed_dim, default 4 · channels), which scales and shifts the
    normalised features of every ResBlock; with ``num_classes`` a class embedding (the null class num_classes
    = none; zero at start) is added to c. The final conv starts at zero, so the net starts at 0.
    """

    def __init__(self, shape, channels=64, multipliers=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                 dropout=0.0, groups=8, embedding="sinusoidal", embed_dim=None, num_classes=None):
        super().__init__()
        self.shape = event_shape(shape)
        multipliers = _integers("multipliers", multipliers, 1)
        attention_resolutions = set(_integers("attention_resolutions", attention_resolutions or (), 1))
        channels, num_res_blocks = check_int("channels", channels), check_int("num_res_blocks", num_res_blocks)
        groups = check_int("groups", groups)
        embed_dim = 4 * channels if embed_dim is None else check_int("embed_dim", embed_dim)
        dropout = check_number("dropout", dropout, strict=False, maximum=1.0)
        self._check(self.shape, channels, multipliers, groups)

        self.embed = time_embedding(embedding, channels)
        self.time = nn.Sequential(nn.Linear(channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.label = label_embedding(num_classes, embed_dim)
        self.num_classes = num_classes
        block = lambda cin, cout: ResBlock(cin, cout, embed_dim, groups, dropout)  # noqa: E731

        self.inp = nn.Conv2d(self.shape[0], channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [channels], channels, self.shape[1]
        for level, mult in enumerate(multipliers):
            for _ in range(num_res_blocks):
                self.down.append(Stage(block(ch, channels * mult), Attention(channels * mult, groups)
                                       if res in attention_resolutions else None))
                ch = channels * mult
                skips.append(ch)
            if level < len(multipliers) - 1:
                self.down.append(Stage(Downsample(ch)))
                skips.append(ch)
                res //= 2

        self.mid = Stage(block(ch, ch), Attention(ch, groups), block(ch, ch))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(multipliers))):
            for _ in range(num_res_blocks + 1):
                self.up.append(Stage(block(ch + skips.pop(), channels * mult), Attention(channels * mult, groups)
                                     if res in attention_resolutions else None))
                ch = channels * mult
            if level > 0:
                self.up.append(Stage(Upsample(ch)))
                res *= 2

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), _zero(nn.Conv2d(ch, self.shape[0], 3, padding=1)))

    @staticmethod
    def _check(shape, channels, multipliers, groups):
        if len(shape) != 3:
            raise invalid("shape", shape, "(C, H, W) for a U-Net (vectors need the MLP)")
        if not multipliers or min(multipliers) < 1 or channels < 1:
            raise ConfigError(f"multipliers={multipliers}, channels={channels}: expected positive integers",
                              ("multipliers", "channels"))
        factor = 2 ** (len(multipliers) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ConfigError(f"shape={shape} does not fit multipliers={multipliers}: H and W must be "
                              f"divisible by 2^{len(multipliers) - 1} = {factor} (use fewer levels or pad the images)",
                              ("shape", "multipliers"))
        widths = sorted({channels * m for m in multipliers})
        if groups < 1 or any(w % groups for w in widths):
            raise ConfigError(f"groups={groups} must divide every channel count {tuple(widths)} "
                              f"(channels={channels} × multipliers={multipliers})",
                              ("groups", "channels", "multipliers"))

    def forward(self, x, t, y=None):
        c = self.time(self.embed(batch_times(t, x)))
        y = check_labels(y, self.num_classes, x)
        if self.label is not None:
            c = c + self.label(y, x)
        h = self.inp(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, c)
            skips.append(h)
        h = self.mid(h, c)
        for stage in self.up:
            if isinstance(stage[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = stage(h, c)
        return self.out(h)
