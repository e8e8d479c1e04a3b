"""Finite data sets: a user's arrays, a folder of images, scikit-learn's bundled 8 × 8 digits.

Each holds a training and a held-out test split, in data space. 8-bit images sit at bin centres of
[−1, 1]: x = (k + ½) / 256 · 2 − 1, so that uniform dequantization and bits/dim on the 8-bit scale are exact.
"""
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class TensorData:
    """Points (N, D) or images (N, C, H, W) split into train and test; ``sample`` draws training points
    with replacement, ``test`` returns the first n held-out points."""

    levels = None
    range = None

    def __init__(self, x, test_fraction=0.1, seed=0, name="data"):
        x = torch.as_tensor(x)
        if not 0 < float(test_fraction) < 1:
            raise ValueError(f"data.test_fraction={test_fraction!r} is invalid: expected a number in (0, 1)")
        if len(x) < 2:
            raise ValueError(f"{name} holds {len(x)} sample(s): at least 2 are needed for a train/test split")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        n_test = max(1, int(round(len(x) * float(test_fraction))))
        self.test_x, self.train_x = x[perm[:n_test]], x[perm[n_test:]]

    @property
    def shape(self):
        return tuple(self.train_x.shape[1:])

    @property
    def dim(self):
        return int(np.prod(self.shape))

    def sample(self, n, generator=None, device=None, dtype=torch.float32):
        idx = torch.randint(0, len(self.train_x), (int(n),), generator=generator)
        return self.train_x[idx].to(device=device, dtype=dtype)

    def test(self, n, generator=None, device=None, dtype=torch.float32):
        if n > len(self.test_x):
            raise ValueError(f"eval.num={n} exceeds the {len(self.test_x)} held-out points of this data set")
        return self.test_x[: int(n)].to(device=device, dtype=dtype)

    def __repr__(self):
        return f"{type(self).__name__}(train={len(self.train_x)}, test={len(self.test_x)}, shape={self.shape})"


def eight_bit_to_unit(k):
    """8-bit integers 0..255 to bin centres in [−1, 1]."""
    return (torch.as_tensor(k, dtype=torch.float64) + 0.5) / 128 - 1


class ImageData(TensorData):
    """8-bit images in [−1, 1] (bits/dim on the 8-bit scale)."""

    levels = 256
    range = 2.0

    def __init__(self, pixels, test_fraction=0.1, seed=0, name="data"):
        super().__init__(eight_bit_to_unit(pixels), test_fraction, seed, name)


class Digits(ImageData):
    """scikit-learn's bundled 8 × 8 handwritten digits (1797 images, 17 grey levels mapped onto 0..255)."""

    def __init__(self, test_fraction=0.1, seed=0):
        from sklearn.datasets import load_digits

        k16 = load_digits().images.astype(np.float64)
        pixels = np.round(k16 * 255 / 16)[:, None]
        super().__init__(pixels, test_fraction, seed, name="digits")


def ArrayFile(path, key=None, test_fraction=0.1, seed=0):
    """A user's ``.npy`` or ``.npz`` array of shape (N, D) or (N, C, H, W). uint8 arrays of rank 4 are
    8-bit images (scaled to [−1, 1]); anything else is taken as continuous data, unscaled."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ValueError(f"data.path={str(path)!r} does not exist: give a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"data.path={str(path)!r} is not a readable .npy/.npz file ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        if not keys:
            raise ValueError(f"data.path={str(path)!r} holds no arrays")
        if key is not None and key not in keys:
            raise ValueError(f"data.key={key!r} is not in {path.name}: it holds {', '.join(keys)}")
        array = loaded[key if key is not None else ("x" if "x" in keys else keys[0])]
    else:
        array = loaded
    if array.ndim not in (2, 4):
        raise ValueError(f"data.path={str(path)!r} has shape {array.shape}: expected (N, D) or (N, C, H, W)")
    if len(array) == 0:
        raise ValueError(f"data.path={str(path)!r} is empty: shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"data.path={str(path)!r} holds {array.dtype} values: expected numbers")
    if array.dtype == np.uint8 and array.ndim == 4:
        return ImageData(array, test_fraction, seed, name=f"data.path={str(path)!r}")
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(1)
    if bad.any():
        raise ValueError(f"data.path={str(path)!r} contains NaN or inf (first in sample {int(np.argmax(bad))})")
    return TensorData(array.astype(np.float64), test_fraction, seed, name=f"data.path={str(path)!r}")


def ImageFolder(path, size=32, channels=3, test_fraction=0.1, seed=0):
    """Every PNG/JPEG under ``path`` (recursively), resized to size × size, as 8-bit images in [−1, 1]."""
    from PIL import Image, UnidentifiedImageError

    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.path={str(root)!r} is not a folder")
    if int(channels) not in (1, 3):
        raise ValueError(f"data.channels={channels!r} is invalid: expected 1 (grey) or 3 (RGB)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"data.path={str(root)!r} holds no PNG or JPEG images")
    mode = "L" if int(channels) == 1 else "RGB"
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((int(size), int(size)), Image.BICUBIC)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {str(f)!r} cannot be read ({e})") from None
        arr = np.asarray(im, dtype=np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return ImageData(np.stack(images), test_fraction, seed, name=f"data.path={str(root)!r}")
