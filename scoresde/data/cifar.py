"""CIFAR-10 and CIFAR-100 in the "python version" layout a user downloads once from
https://www.cs.toronto.edu/~kriz/cifar.html and unpacks; nothing is downloaded here.

Each file is a pickled dict: ``data``, a uint8 array (N, 3072) holding each image as its red, green and blue
32 × 32 planes one after another, and the labels (``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100). Only
NumPy arrays, lists and plain values are unpickled (and bytes as protocol 2 writes them): a file that asks for any
other object is refused.
"""
import pickle
from pathlib import Path

import numpy as np

from sde.errors import ConfigError

from .files import ImageData

ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                 ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and builtin containers only."""

    def find_class(self, module, name):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is not a NumPy array")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]  # NumPy 2's name, without the deprecated alias
        return super().find_class(module, name)


def _load_batch(path, label_key, expected):
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one pickled CIFAR file."""
    name = f"path={str(path.parent)!r}"
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported in one line
        raise ConfigError(f"{name}: {path.name} cannot be read as a pickled {expected} file ({type(e).__name__}: "
                          f"{e})".splitlines()[0], "path") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{name}: {path.name} holds a {type(batch).__name__}, not the dict of a {expected} file",
                          "path")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ConfigError(f"{name}: {path.name} lacks data or {label_key} (it holds "
                          f"{', '.join(map(str, batch)) or 'nothing'}): not a {expected} file", "path")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ConfigError(f"{name}: {path.name} holds data of shape {data.shape} ({data.dtype}) and "
                          f"{labels.shape[0] if labels.ndim else 0} labels: expected (N, 3072) uint8 and N labels",
                          "path")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CifarLayout(ImageData):
    """32 × 32 colour images from the pickled CIFAR files under ``path`` (or under its ``folder``, the name the
    archive unpacks to): the training files are the training split, the test files the held-out split."""

    folder, train_files, test_files, label_key, expected = None, (), (), None, None

    def __init__(self, path, flip=False, workers=0):
        root = Path(str(path)).expanduser()
        if (root / self.folder).is_dir():
            root = root / self.folder
        layout = f"{', '.join(self.train_files + self.test_files)} (the {self.expected} python version, unpacked)"
        if not root.is_dir():
            raise ConfigError(f"path={str(root)!r} is not a folder: expected one holding {layout}", "path")
        missing = [f for f in self.train_files + self.test_files if not (root / f).is_file()]
        if missing:
            raise ConfigError(f"path={str(root)!r} is not a {self.expected} folder: it lacks {', '.join(missing)}; "
                              f"expected {layout}", "path")
        train = [_load_batch(root / f, self.label_key, self.expected) for f in self.train_files]
        test = [_load_batch(root / f, self.label_key, self.expected) for f in self.test_files]
        pixels = np.concatenate([x for x, _ in train + test])
        labels = np.concatenate([y for _, y in train + test])
        n_train = sum(len(x) for x, _ in train)
        self.root = root
        super().__init__(pixels, labels, name=f"path={str(root)!r}", split=(np.arange(n_train),
                                                                           np.arange(n_train, len(pixels))),
                         flip=flip, workers=workers)

    def __repr__(self):
        return f"{type(self).__name__}(train={len(self.train_index)}, test={len(self.test_index)}, root={str(self.root)!r})"


class Cifar10(CifarLayout):
    """CIFAR-10: 50000 training and 10000 test images in 10 classes (data_batch_1 ... data_batch_5, test_batch)."""

    folder, label_key, expected = "cifar-10-batches-py", "labels", "CIFAR-10"
    train_files, test_files = tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)


class Cifar100(CifarLayout):
    """CIFAR-100: 50000 training and 10000 test images in 100 fine classes (train, test)."""

    folder, label_key, expected = "cifar-100-python", "fine_labels", "CIFAR-100"
    train_files, test_files = ("train",), ("test",)
