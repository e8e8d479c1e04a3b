"""Training batches of 8-bit images through torch's DataLoader.

The order of the images is decided in the main process, a whole batch at a time (EpochOrder), so batch k is a
function of (seed, k) alone: a resumed run draws exactly what the uninterrupted run drew, whatever the number of
worker processes. Workers only read rows (from memory or a memory-mapped file) and flip them; pixels travel as
uint8, through pinned memory when the batches go to a GPU, and become floats only on the device.
"""
import numpy as np
import torch

from .base import share


def read_rows(store, rows, channels_last=False):
    """The images ``store[rows]`` as a uint8 array (B, C, H, W); a store laid out (N, H, W, C) is transposed per
    batch, so a memory-mapped file is never transposed whole."""
    x = np.asarray(store[rows])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_last else x


class EpochOrder:
    """An endless stream of batches (rows, flips) over the training rows ``index``.

    Epoch e visits every row once, in the order of a permutation drawn by ``numpy.random.default_rng((seed, e))``;
    the stream is epoch 0, epoch 1, ... one after another, and batch k is its items k·B ... (k + 1)·B − 1 (a batch
    may span the end of an epoch). With ``flip`` each visit also draws, from the same generator, whether the image
    is mirrored left–right (probability ½). Iteration starts at batch ``start``. With ``part`` = (index, count)
    only that part of each batch's items is yielded (base.share): one process's shard of the global batch.
    """

    def __init__(self, index, batch_size, seed=0, start=0, flip=False, part=None):
        self.index, self.batch_size = np.asarray(index), int(batch_size)
        self.seed, self.start, self.flip = int(seed) % 2**63, int(start), bool(flip)
        self.rows = share(self.batch_size, part)

    def epoch(self, e):
        """The rows of epoch e in visiting order, and their flips."""
        rng = np.random.default_rng((self.seed, e))
        order = self.index[rng.permutation(len(self.index))]
        flips = rng.random(len(order)) < 0.5 if self.flip else np.zeros(len(order), dtype=bool)
        return order, flips

    def __iter__(self):
        n = len(self.index)
        e, offset = divmod(self.start * self.batch_size, n)
        order, flips = self.epoch(e)
        while True:
            rows, flipped, need = [], [], self.batch_size
            while need:
                take = min(need, n - offset)
                rows.append(order[offset:offset + take])
                flipped.append(flips[offset:offset + take])
                offset, need = offset + take, need - take
                if offset == n:
                    e, offset = e + 1, 0
                    order, flips = self.epoch(e)
            yield np.concatenate(rows)[self.rows], np.concatenate(flipped)[self.rows]


class PixelBatches(torch.utils.data.Dataset):
    """Item (rows, flips) → (uint8 images (B, C, H, W) with the flagged ones mirrored, labels (B,) or an empty
    tensor). A memory-mapped store is reopened, not copied, in a worker that receives this object by pickling."""

    def __init__(self, store, labels=None, channels_last=False):
        self.store, self.labels, self.channels_last = store, labels, channels_last

    def __getitem__(self, item):
        rows, flips = item
        x = read_rows(self.store, rows, self.channels_last)
        if flips.any():
            x[flips] = x[flips][..., ::-1]
        y = torch.empty(0, dtype=torch.long) if self.labels is None else self.labels[torch.from_numpy(rows)]
        return torch.from_numpy(x), y

    def __getstate__(self):
        state = dict(self.__dict__)
        store = self.store
        if isinstance(store, np.memmap) and getattr(store, "filename", None):
            state["store"] = ("memmap", store.filename, store.dtype.str, store.shape, store.offset,
                              "F" if store.flags.f_contiguous and not store.flags.c_contiguous else "C")
        return state

    def __setstate__(self, state):
        store = state["store"]
        if isinstance(store, tuple) and store[0] == "memmap":
            _, filename, dtype, shape, offset, order = store
            state["store"] = np.memmap(filename, dtype=dtype, mode="r", shape=shape, offset=offset, order=order)
        self.__dict__.update(state)


def image_batches(store, index, batch_size, decode, labels=None, channels_last=False, seed=0, start=0, flip=False,
                  workers=0, device=None, part=None):
    """Endless batches (x, y) of the uint8 images ``store[index]`` in EpochOrder from batch ``start`` (only the
    rows of ``part`` of each, when given): x decoded by ``decode`` (uint8 → float32 on the device), y the labels
    (a LongTensor indexed by row) or None. ``workers`` processes read the rows (0: the main process); with CUDA
    the uint8 batches pass through pinned memory and are copied without blocking."""
    device = torch.device(device or "cpu")
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        PixelBatches(store, labels, channels_last), sampler=EpochOrder(index, batch_size, seed, start, flip, part),
        batch_size=None, num_workers=int(workers), pin_memory=cuda, generator=torch.Generator(),
        prefetch_factor=4 if workers else None)
    for x, y in loader:
        x = decode(x.to(device, non_blocking=cuda))
        yield x, None if labels is None else y.to(device, non_blocking=cuda)
