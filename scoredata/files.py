"""Finite data sets: a user's arrays, a folder of images, scikit-learn's bundled 8 × 8 digits.

Each holds a training and a held-out test split, in data space. 8-bit images sit at bin centres of
[−1, 1]: x = (k + ½) / 256 · 2 − 1, so that uniform dequantization and bits/dim on the 8-bit scale are exact.
"""
import warnings
from pathlib import Path

import numpy as np
import torch

from sde.errors import ConfigError, ConfigWarning, check_choice, check_number

from .base import DataSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class TensorData(DataSet):
    """Points (N, D) or images (N, C, H, W), with optional integer labels (N,), split into train and test:
    ``sample`` draws training points with replacement, ``test`` returns the first n held-out points."""

    def __init__(self, x, labels=None, test_fraction=0.1, seed=0, name="data"):
        x = torch.as_tensor(x)
        test_fraction = check_number("test_fraction", test_fraction, maximum=1.0, strict_max=True)
        if len(x) < 2:
            raise ConfigError(f"{name} holds {len(x)} sample(s): at least 2 are needed for a train/test split", "path")
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).reshape(-1)
            if len(labels) != len(x) or labels.is_floating_point() or (labels < 0).any():
                raise ConfigError(f"{name}: expected {len(x)} integer labels >= 0, one per point; got "
                                  f"{len(labels)} of type {labels.dtype}", "path")
            labels = labels.long()
            self.num_classes = int(labels.max()) + 1
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        n_test = max(1, int(round(len(x) * test_fraction)))
        self.test_x, self.train_x = x[perm[:n_test]], x[perm[n_test:]]
        self.test_y, self.train_y = (None, None) if labels is None else (labels[perm[:n_test]], labels[perm[n_test:]])
        self.shape = tuple(self.train_x.shape[1:])
        self.test_size = len(self.test_x)

    def draw(self, n, generator):
        idx = torch.randint(0, len(self.train_x), (n,), generator=generator)
        return self.train_x[idx], None if self.train_y is None else self.train_y[idx]

    def draw_test(self, n, generator):
        return self.test_x[:n], None if self.test_y is None else self.test_y[:n]

    def __repr__(self):
        return f"{type(self).__name__}(train={len(self.train_x)}, test={len(self.test_x)}, shape={self.shape})"


def eight_bit_to_unit(k):
    """8-bit integers 0..255 to bin centres in [−1, 1]."""
    return (torch.as_tensor(k, dtype=torch.float64) + 0.5) / 128 - 1


class ImageData(TensorData):
    """8-bit images (N, C, H, W) given as integers 0..255, held at bin centres of [−1, 1]."""

    levels = 256
    value_range = (-1.0, 1.0)

    def __init__(self, pixels, labels=None, test_fraction=0.1, seed=0, name="data"):
        super().__init__(eight_bit_to_unit(pixels), labels, test_fraction, seed, name)


class Digits(ImageData):
    """scikit-learn's bundled 8 × 8 handwritten digits (1797 images, 17 grey levels mapped onto 0..255),
    labelled 0–9."""

    def __init__(self, test_fraction=0.1, seed=0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images.astype(np.float64) * 255 / 16)[:, None]
        super().__init__(pixels, digits.target, test_fraction, seed, name="digits")


def _read_array(path, key, what):
    """The array ``key`` of a .npz (by default ``x``, or its only array), or the whole .npy: a ConfigError names
    the file and what was expected when it is anything else."""
    path = Path(str(path)).expanduser()
    name = f"path={str(path)!r}"
    if path.is_dir():
        raise ConfigError(f"{name} is a folder: give a .npy or .npz file (data=folder reads a folder of images)",
                          "path")
    if not path.is_file():
        raise ConfigError(f"{name} does not exist: give a .npy or .npz file", "path")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise ConfigError(f"{name} is not a .npy or .npz file (it does not start with their header; save arrays "
                          "with numpy.save or numpy.savez)", "path")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            if what == "labels":
                raise ConfigError(f"labels={key!r} needs a .npz file holding the labels beside the points", "labels")
            return loaded
        keys = list(loaded.keys())
        if not keys:
            raise ConfigError(f"{name} holds no arrays", "path")
        if key is None and "x" not in keys and len(keys) > 1:
            raise ConfigError(f"{name} holds {', '.join(keys)} but no array named x: choose one with key=NAME",
                              ("path", "key"))
        if key is not None and key not in keys:
            raise ConfigError(f"{what}={key!r} is not in {path.name}: it holds {', '.join(keys)}", what)
        return loaded[key if key is not None else "x" if "x" in keys else keys[0]]
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt file, whatever numpy or zipfile raise
        raise ConfigError(f"{name} cannot be read as a .npy/.npz file ({type(e).__name__}: {e})".splitlines()[0],
                          "path") from None


def _channels_first(array, name):
    """Rank-4 arrays as (N, C, H, W) with C in 1 or 3: (N, H, W, C) is transposed (with a warning); any other
    channel count is refused."""
    if array.shape[1] in (1, 3):
        return array
    if array.shape[-1] in (1, 3):
        warnings.warn(ConfigWarning(f"{name} has shape {array.shape}: read as channels-last (N, H, W, C) and "
                                    "transposed to (N, C, H, W)", "path"))
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    raise ConfigError(f"{name} has shape {array.shape}: images need 1 or 3 channels, laid out (N, C, H, W) or "
                      "(N, H, W, C)", "path")


class ArrayFile(TensorData):
    """A user's ``.npy`` or ``.npz`` array of shape (N, D) or (N, C, H, W) (in a .npz: the array ``key``,
    default ``x``; labels from the array named ``labels``, if given). uint8 arrays of rank 4 are 8-bit
    images (scaled to [−1, 1]); anything else is taken as continuous data, unscaled."""

    def __init__(self, path, key=None, labels=None, test_fraction=0.1, seed=0):
        name = f"path={str(path)!r}"
        array = _read_array(path, key, "key")
        y = None if labels is None else _read_array(path, labels, "labels")
        if array.ndim not in (2, 4):
            raise ConfigError(f"{name} has shape {array.shape}: expected (N, D) or (N, C, H, W)", "path")
        if len(array) == 0:
            raise ConfigError(f"{name} is empty: shape {array.shape}", "path")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) or array.dtype == np.bool_:
            raise ConfigError(f"{name} holds {array.dtype} values: expected real numbers", "path")
        if array.ndim == 4:
            array = _channels_first(array, name)
        if array.dtype == np.uint8 and array.ndim == 4:
            self.levels, self.value_range = ImageData.levels, ImageData.value_range
            super().__init__(eight_bit_to_unit(array), y, test_fraction, seed, name)
            return
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(1)
        if bad.any():
            raise ConfigError(f"{name} contains NaN or inf (first in sample {int(np.argmax(bad))})", "path")
        super().__init__(array.astype(np.float64), y, test_fraction, seed, name)


class ImageFolder(ImageData):
    """Every PNG/JPEG under ``path`` (recursively), resized to size × size, as 8-bit images in [−1, 1]."""

    def __init__(self, path, size=32, channels=3, test_fraction=0.1, seed=0):
        from PIL import Image, UnidentifiedImageError

        root = Path(str(path)).expanduser()
        if not root.is_dir():
            raise ConfigError(f"path={str(root)!r} is not a folder", "path")
        check_choice("channels", channels, (1, 3))
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"path={str(root)!r} holds no PNG or JPEG images", "path")
        mode = "L" if channels == 1 else "RGB"
        images = []
        for f in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        im = im.convert(mode).resize((int(size), int(size)), Image.BICUBIC)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ConfigError(f"image {str(f)!r} cannot be read ({e})") from None
            arr = np.asarray(im, dtype=np.uint8)
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        super().__init__(np.stack(images), None, test_fraction, seed, name=f"path={str(root)!r}")
