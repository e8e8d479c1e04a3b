"""Finite data sets: a user's arrays, a folder of images, scikit-learn's bundled 8 × 8 digits.

Each holds a training and a held-out test split, in data space. 8-bit images are kept as uint8 (in memory, or a
memory-mapped ``.npy``) and sit at bin centres of [−1, 1] once decoded, batch by batch:
x = (k + ½) / 256 · 2 − 1, so that uniform dequantization and bits/dim on the 8-bit scale are exact.
"""
import warnings
from pathlib import Path

import numpy as np
import torch

from sde.errors import ConfigError, ConfigWarning, check_choice, check_int, check_number

from .base import DataSet
from .loader import image_batches, read_rows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FLOAT32_SAFE = 1e18
"""The largest magnitude of continuous data: its square (in the loss, the data's variance) still fits float32."""


def eight_bit_to_unit(k, dtype=torch.float64):
    """8-bit integers 0..255 to bin centres in [−1, 1]: (k + ½) / 128 − 1, exact in float32 and float64 alike."""
    return (torch.as_tensor(k).to(dtype) + 0.5) / 128 - 1


MAX_CLASSES = 100_000
"""The most classes labels may number: a class embedding holds one row per class."""


def check_labels(labels, n, name):
    """``n`` integer labels 0..K−1, one per point, as int64, K at most n and MAX_CLASSES (a label of 10⁹ would
    ask for a class embedding of 10⁹ rows); anything else is a ConfigError naming the file."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != n or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ConfigError(f"{name}: expected {n} integer labels >= 0, one per point; got {len(labels)} of type "
                          f"{labels.dtype}", "path")
    if len(labels) and (labels.min() < 0 or labels.max() >= min(n, MAX_CLASSES)):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise ConfigError(f"{name}: label {bad} is invalid: expected labels 0..K−1 numbering K classes, at most "
                          f"{min(n, MAX_CLASSES)} (the number of points, and at most {MAX_CLASSES})", "path")
    return torch.from_numpy(labels.astype(np.int64))


def _flag(name, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is invalid: expected true or false", name)
    return value


class TensorData(DataSet):
    """Points (N, D) or images (N, C, H, W), with optional integer labels (N,), split into train and test by a
    seeded permutation (or by ``split``: the rows of each, as (train, test)): ``sample`` draws training points
    with replacement, ``test`` returns the first n held-out points.

    The points stay as given and are split by index, never copied whole. When ``levels`` is 256 (8-bit images)
    they are uint8 (in memory, or a memory-mapped file; ``channels_last``: stored (N, H, W, C)), decoded to bin
    centres per draw, and ``batches`` feeds training through a DataLoader (``workers`` processes, pinned memory
    on CUDA, random left–right ``flip``, a seeded and resumable order; see scoresde.data.loader).
    """

    def __init__(self, x, labels=None, test_fraction=0.1, seed=0, name="data", split=None, flip=False, workers=0,
                 channels_last=False):
        self.store = x if isinstance(x, np.ndarray) else torch.as_tensor(x).numpy()
        self.channels_last = bool(channels_last)
        self.flip, self.workers = _flag("flip", flip), check_int("workers", workers, 0)
        if self.flip and not self.eight_bit:
            raise ConfigError(f"flip=true needs 8-bit images; {name} holds {self.store.dtype} values of shape "
                              f"{self.store.shape[1:]}", "flip")
        n = len(self.store)
        if split is None:
            test_fraction = check_number("test_fraction", test_fraction, maximum=1.0, strict_max=True)
            if n < 2:
                raise ConfigError(f"{name} holds {n} sample(s): at least 2 are needed for a train/test split", "path")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
            n_test = max(1, int(round(n * test_fraction)))
            if n_test >= n:
                raise ConfigError(f"test_fraction={test_fraction:g} holds out {n_test} of the {n} points of {name}, "
                                  "leaving none to train on: lower it", "test_fraction")
            self.test_index, self.train_index = perm[:n_test], perm[n_test:]
        else:
            self.train_index, self.test_index = (np.asarray(s, dtype=np.int64) for s in split)
        self.labels = None
        if labels is not None:
            self.labels = check_labels(labels, n, name)
            self.num_classes = int(self.labels.max()) + 1
        self.shape = tuple(read_rows(self.store, self.train_index[:1], self.channels_last).shape[1:])
        self.test_size = len(self.test_index)

    @property
    def eight_bit(self):
        return self.levels == 256 and self.store.dtype == np.uint8

    def points(self, rows):
        """The points of the given rows, decoded (float64 for 8-bit images; as stored otherwise)."""
        x = torch.from_numpy(read_rows(self.store, rows, self.channels_last))
        return eight_bit_to_unit(x) if self.eight_bit else x

    def _rows(self, rows):
        return self.points(rows), None if self.labels is None else self.labels[torch.from_numpy(rows)]

    @property
    def train_x(self):
        return self.points(self.train_index)

    @property
    def test_x(self):
        return self.points(self.test_index)

    @property
    def train_y(self):
        return None if self.labels is None else self.labels[torch.from_numpy(self.train_index)]

    @property
    def test_y(self):
        return None if self.labels is None else self.labels[torch.from_numpy(self.test_index)]

    def draw(self, n, generator):
        idx = torch.randint(0, len(self.train_index), (n,), generator=generator)
        return self._rows(self.train_index[idx.numpy()])

    def draw_test(self, n, generator):
        return self._rows(self.test_index[:n])

    def batches(self, batch_size, generator, labels=False, device=None, seed=0, start=0, part=None):
        """8-bit images: batch ``start`` onwards of the order that ``seed`` fixes, through a DataLoader, decoded
        to float32 on ``device`` (``generator`` is not used); with ``part`` only that part's rows of each batch
        are read. Other points: DataSet.batches."""
        if not self.eight_bit:
            yield from super().batches(batch_size, generator, labels, device, seed, start, part)
            return
        if labels and self.labels is None:
            raise ConfigError(f"{self!r} has no labels")
        yield from image_batches(self.store, self.train_index, check_int("batch_size", batch_size),
                                 lambda k: eight_bit_to_unit(k, torch.float32), self.labels if labels else None,
                                 self.channels_last, seed, start, self.flip, self.workers, device, part)

    def __repr__(self):
        return (f"{type(self).__name__}(train={len(self.train_index)}, test={len(self.test_index)}, "
                f"shape={self.shape})")


class ImageData(TensorData):
    """8-bit images (N, C, H, W) given as integers 0..255 (uint8, or any array of such integers), held as uint8
    and decoded to bin centres of [−1, 1] per batch."""

    levels = 256
    value_range = (-1.0, 1.0)

    def __init__(self, pixels, labels=None, test_fraction=0.1, seed=0, name="data", split=None, flip=False,
                 workers=0, channels_last=False):
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8):
            pixels = np.asarray(pixels)
            if pixels.size and (not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255
                                or (pixels != np.round(pixels)).any()):
                raise ConfigError(f"{name} holds values other than the integers 0..255 of 8-bit images", "path")
            pixels = pixels.astype(np.uint8)
        super().__init__(pixels, labels, test_fraction, seed, name, split, flip, workers, channels_last)


class Digits(ImageData):
    """scikit-learn's bundled 8 × 8 handwritten digits (1797 images, 17 grey levels mapped onto 0..255),
    labelled 0–9."""

    def __init__(self, test_fraction=0.1, seed=0, flip=False, workers=0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images.astype(np.float64) * 255 / 16)[:, None]
        super().__init__(pixels, digits.target, test_fraction, seed, name="digits", flip=flip, workers=workers)


def _read_array(path, key, what, mmap=False):
    """The array ``key`` of a .npz (by default ``x``, or its only array), or the whole .npy (memory-mapped with
    ``mmap``): a ConfigError names the file and what was expected when it is anything else."""
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
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if mmap and magic == b"\x93NUMPY" else None)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            if key is not None:
                raise ConfigError(f"{what}={key!r} names an array of a .npz file; {path.name} is a .npy holding one "
                                  f"array: remove {what}" + (" (or save the labels beside the points with "
                                                             "numpy.savez)" if what == "labels" else ""), what)
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


def _channels_last(array, name):
    """Whether a rank-4 array is laid out (N, H, W, C) (with a warning) rather than (N, C, H, W), C in 1 or 3; any
    other channel count is refused."""
    if array.shape[1] in (1, 3):
        return False
    if array.shape[-1] in (1, 3):
        warnings.warn(ConfigWarning(f"{name} has shape {array.shape}: read as channels-last (N, H, W, C) and "
                                    "transposed to (N, C, H, W)", "path"))
        return True
    raise ConfigError(f"{name} has shape {array.shape}: images need 1 or 3 channels, laid out (N, C, H, W) or "
                      "(N, H, W, C)", "path")


class ArrayFile(TensorData):
    """A user's ``.npy`` or ``.npz`` array of shape (N, D) or (N, C, H, W) (in a .npz: the array ``key``,
    default ``x``; labels from the array named ``labels``, if given). uint8 arrays of rank 4 are 8-bit
    images (kept as uint8, memory-mapped from a .npy, so a set larger than memory trains from disk; decoded to
    [−1, 1] per batch); anything else is taken as continuous data, unscaled, and read into memory."""

    def __init__(self, path, key=None, labels=None, test_fraction=0.1, seed=0, flip=False, workers=0):
        name = f"path={str(path)!r}"
        array = _read_array(path, key, "key", mmap=True)
        y = None if labels is None else _read_array(path, labels, "labels")
        if array.ndim not in (2, 4):
            raise ConfigError(f"{name} has shape {array.shape}: expected (N, D) or (N, C, H, W)", "path")
        if len(array) == 0:
            raise ConfigError(f"{name} is empty: shape {array.shape}", "path")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) or array.dtype == np.bool_:
            raise ConfigError(f"{name} holds {array.dtype} values: expected real numbers", "path")
        hwc = array.ndim == 4 and _channels_last(array, name)
        if array.dtype == np.uint8 and array.ndim == 4:
            self.levels, self.value_range = ImageData.levels, ImageData.value_range
            super().__init__(array, y, test_fraction, seed, name, flip=flip, workers=workers, channels_last=hwc)
            return
        array = np.asarray(array)
        bad = ~np.isfinite(array.reshape(len(array), -1)).all(1)
        if bad.any():
            raise ConfigError(f"{name} contains NaN or inf (first in sample {int(np.argmax(bad))})", "path")
        wide = (np.abs(array.reshape(len(array), -1)) > FLOAT32_SAFE).any(1)
        if wide.any():
            raise ConfigError(f"{name} holds values up to {float(np.abs(array).max()):.3g} (first in sample "
                              f"{int(np.argmax(wide))}): beyond {FLOAT32_SAFE:g}, where float32 training overflows; "
                              "rescale the data", "path")
        array = array.astype(np.float64)
        if hwc:
            array = np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        super().__init__(array, y, test_fraction, seed, name, flip=flip, workers=workers)


EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
WIDE_MODES = {"I;16": (0, 65535), "I;16L": (0, 65535), "I;16B": (0, 65535), "I;16N": (0, 65535),
              "I": (0, 65535), "F": (0, 1)}
"""PIL's modes of one channel beyond 8 bits, with the range read as black..white: 16-bit integers (PNG's
16-bit gray opens as I;16 or I) and 32-bit floats in [0, 1]."""


def to_eight_bit(im, path):
    """An image of a mode beyond 8 bits (WIDE_MODES) as mode L, its range lo..hi scaled to 0..255 and rounded;
    one with values outside that range is a ConfigError; an 8-bit image as it is."""
    from PIL import Image

    if im.mode in EIGHT_BIT_MODES:
        return im
    if im.mode not in WIDE_MODES:
        raise ConfigError(f"image {str(path)!r} has PIL mode {im.mode}: expected an 8-bit image, 16-bit gray or "
                          "32-bit float gray in [0, 1]", "path")
    lo, hi = WIDE_MODES[im.mode]
    values = np.asarray(im, dtype=np.float64)
    if not np.isfinite(values).all() or values.min() < lo or values.max() > hi:
        raise ConfigError(f"image {str(path)!r} (mode {im.mode}) holds values outside {lo:g}..{hi:g}, the range "
                          "read as black..white", "path")
    return Image.fromarray(np.round((values - lo) / (hi - lo) * 255).astype(np.uint8), mode="L")


def _class_folders(root, files, labels):
    """Labels from class subfolders: with ``labels`` 'auto', when every image lies in one of at least two
    first-level subfolders (root/CLASS/...); True requires that; False gives none. Returns (labels, class names)
    or (None, None); classes are numbered in sorted order of their folder names."""
    if labels is False:
        return None, None
    tops = [f.relative_to(root).parts for f in files]
    at_root = [f for f, parts in zip(files, tops) if len(parts) == 1]
    classes = sorted({parts[0] for parts in tops if len(parts) > 1})
    if at_root or len(classes) < 2:
        if labels is True:
            why = (f"{len(at_root)} image(s) lie directly in it (first {at_root[0].name!r})" if at_root else
                   f"it has {len(classes)} class subfolder(s)")
            raise ConfigError(f"path={str(root)!r} cannot give labels=true: {why}; expected one subfolder per class "
                              "(at least two) holding every image", ("path", "labels"))
        return None, None
    number = {c: i for i, c in enumerate(classes)}
    return np.array([number[parts[0]] for parts in tops], dtype=np.int64), classes


class ImageFolder(ImageData):
    """Every PNG/JPEG under ``path`` (recursively), resized to size × size, as 8-bit images in [−1, 1]; labelled
    by class subfolders (path/CLASS/..., classes numbered in sorted order of their names, kept in ``classes``):
    ``labels`` 'auto' (when every image lies in one of at least two subfolders) | true | false."""

    def __init__(self, path, size=32, channels=3, test_fraction=0.1, seed=0, labels="auto", flip=False, workers=0):
        from PIL import Image, UnidentifiedImageError

        root = Path(str(path)).expanduser()
        if not root.is_dir():
            raise ConfigError(f"path={str(root)!r} is not a folder", "path")
        check_choice("channels", channels, (1, 3))
        size = check_int("size", size)
        if labels not in ("auto", True, False):
            raise ConfigError(f"labels={labels!r} is invalid: expected auto, true or false", "labels")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"path={str(root)!r} holds no PNG or JPEG images", "path")
        y, self.classes = _class_folders(root, files, labels)
        mode = "L" if channels == 1 else "RGB"
        images, wide = [], []
        for f in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        if im.mode not in EIGHT_BIT_MODES:
                            wide.append(im.mode)
                        im = to_eight_bit(im, f).convert(mode).resize((size, size), Image.BICUBIC)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ConfigError(f"image {str(f)!r} cannot be read ({e})") from None
            arr = np.asarray(im, dtype=np.uint8)
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        if wide:
            warnings.warn(ConfigWarning(f"path={str(root)!r}: {len(wide)} of {len(files)} images are not 8-bit (mode "
                                        f"{wide[0]}): read at 8 bits, 0..{WIDE_MODES[wide[0]][1]:g} scaled to 0..255",
                                        "path"))
        super().__init__(np.stack(images), y, test_fraction, seed, name=f"path={str(root)!r}", flip=flip,
                         workers=workers)
