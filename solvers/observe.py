"""What is known of a point: observed coordinates (inpainting) or an orthogonal linear view of it
(colorization keeps the gray channel), and the masks that say which."""
import math
from pathlib import Path

import numpy as np
import torch

from sde import expand
from sde.errors import ConfigError, check_number, invalid, short


def gray_chroma(channels=3):
    """An orthogonal C × C matrix whose first row is the gray level (1, …, 1)/√C and whose other rows span the
    chroma directions orthogonal to it (Helmert's construction): row k = (1, …, 1, −k, 0, …)/√(k(k+1))."""
    m = torch.zeros(channels, channels, dtype=torch.float64)
    m[0] = 1 / math.sqrt(channels)
    for k in range(1, channels):
        m[k, :k] = 1 / math.sqrt(k * (k + 1))
        m[k, k] = -k / math.sqrt(k * (k + 1))
    return m


class Observation:
    """Known values of a batch of points. With an orthogonal C × C ``transform`` M acting on the channel axis
    (dim 1), the view v = M x of every point is split by ``mask`` (True = known) into its known part v_o and the
    rest; without one, M = I and the mask marks known coordinates of x itself (inpainting).

    ``impose(x, a, s, z)`` replaces the known part of x_t by a draw of its forward marginal,
    v_o ← a(t) v_o(x_0) + s(t) z_o, leaving the unknown part as the solver made it (Song et al. 2021,
    appendix I.2: the replacement method for inpainting and colorization). M orthogonal keeps the noise white,
    so the same formula holds in the view."""

    def __init__(self, x, mask, transform=None):
        x = torch.as_tensor(x)
        self.transform = None if transform is None else torch.as_tensor(transform, dtype=torch.float64)
        if self.transform is not None:
            c = x.shape[1] if x.ndim > 1 else 0
            if self.transform.shape != (c, c):
                raise ConfigError(f"transform of shape {tuple(self.transform.shape)} does not fit {c} channels",
                                  "transform")
            if not torch.allclose(self.transform @ self.transform.T, torch.eye(c, dtype=torch.float64), atol=1e-6):
                raise ConfigError("transform is not orthogonal (M Mᵀ ≠ I)", "transform")
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != x.shape[1:] and mask.shape != x.shape:
            raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit the data: expected the event shape "
                              f"{tuple(x.shape[1:])} (or {tuple(x.shape)})", "mask")
        self.mask = mask.expand(x.shape).to(x.device)
        self.known = self.view(x) * self.mask

    def view(self, x):
        """v = M x over the channel axis (x itself without a transform)."""
        if self.transform is None:
            return x
        return torch.einsum("ij,nj...->ni...", self.transform.to(x), x)

    def unview(self, v):
        """x = Mᵀ v."""
        if self.transform is None:
            return v
        return torch.einsum("ji,nj...->ni...", self.transform.to(v), v)

    def observed(self):
        """What the observer sees, in data space: the known part with the unknown set to 0 in the view."""
        return self.unview(self.known)

    def impose(self, x, a, s, noise):
        """x with its known part replaced by a x_o + s z (a, s scalars or per-point tensors)."""
        v = self.view(x)
        mask = self.mask.to(x.device)
        target = expand(a, x) * self.known.to(x) + expand(s, x) * noise
        return self.unview(torch.where(mask, target, v))

    def select(self, idx):
        """The observation of the points idx."""
        new = object.__new__(Observation)
        new.transform, new.mask, new.known = self.transform, self.mask[idx], self.known[idx]
        return new


def box_mask(shape, box=None):
    """Images (C, H, W): True outside a box [top, left, height, width] in pixels (default: the centre quarter of
    the area), so the box is what is missing. Vectors (D,): True on the first half of the coordinates (a box is
    refused there: it applies to images)."""
    if len(shape) != 3:
        if box is not None:
            raise ConfigError(f"box={short(box)} applies to images (C, H, W); the data are vectors of shape "
                              f"{tuple(shape)}: remove box (the second half of the coordinates is then missing), or "
                              "choose mask=coordinates or mask=random", "box")
        mask = torch.zeros(shape, dtype=torch.bool)
        mask.view(-1)[: max(1, math.prod(shape) // 2)] = True
        return mask
    _, h, w = shape
    if box is not None:
        box = list(box) if not isinstance(box, (str, int, float)) else [box]
        if len(box) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in box):
            raise invalid("box", box, f"4 integers [top, left, height, width] in pixels of the {h} × {w} image")
    top, left, height, width = (h // 4, w // 4, h // 2, w // 2) if box is None else box
    if not (0 <= top < h and 0 <= left < w and height > 0 and width > 0):
        raise invalid("box", box, f"[top, left, height, width] inside the {h} × {w} image")
    mask = torch.ones(shape, dtype=torch.bool)
    mask[:, top: top + height, left: left + width] = False
    return mask


def random_mask(shape, fraction=0.5, seed=0):
    """True on a random ``fraction`` of the coordinates (for images, of the pixels, all channels alike)."""
    fraction = check_number("fraction", fraction, strict=False, maximum=1.0)
    g = torch.Generator().manual_seed(int(seed))
    if len(shape) == 3:
        return (torch.rand((1, *shape[1:]), generator=g) < fraction).expand(shape).clone()
    return torch.rand(shape, generator=g) < fraction


def coordinate_mask(shape, coordinates):
    """True at the listed coordinates of a vector (D,) (or flat indices of an image)."""
    mask = torch.zeros(math.prod(shape), dtype=torch.bool)
    try:
        idx = [int(i) for i in coordinates]
    except (TypeError, ValueError):
        raise invalid("coordinates", coordinates, "a list of coordinate indices") from None
    bad = [i for i in idx if not 0 <= i < mask.numel()]
    if bad or not idx:
        raise invalid("coordinates", short(coordinates), f"indices in 0..{mask.numel() - 1}")
    mask[idx] = True
    return mask.reshape(shape)


def file_mask(shape, path):
    """A mask from a .npy file (nonzero = known) of the event shape, or (H, W) for images."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"path={str(path)!r} does not exist: give a .npy mask (nonzero = known)", "path")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError):
        raise ConfigError(f"path={str(path)!r} is not a .npy file", "path") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise ConfigError(f"path={str(path)!r} holds {array.dtype} values: expected numbers (nonzero = known)", "path")
    if not np.isfinite(array).all():
        raise ConfigError(f"path={str(path)!r} holds NaN or inf: expected finite numbers (nonzero = known)", "path")
    mask = torch.as_tensor(array != 0)
    if len(shape) == 3 and mask.shape == tuple(shape[1:]):
        mask = mask.expand(shape).clone()
    if mask.shape != tuple(shape):
        raise ConfigError(f"path={str(path)!r} holds a mask of shape {tuple(mask.shape)}; the data's shape is "
                          f"{tuple(shape)}" + (f" (or {tuple(shape[1:])})" if len(shape) == 3 else ""), "path")
    return mask
