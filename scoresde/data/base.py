"""What every data set offers, and the arithmetic of 8-bit data (dequantization, bits per dimension)."""
import math

import torch

from sde.errors import ConfigError, check_int


def share(n, part=None):
    """The rows of part ``index`` of ``count`` (part = (index, count); None: the whole) of n rows, as a slice:
    ⌊index · n / count⌋ up to ⌊(index + 1) · n / count⌋, contiguous, in order, sizes differing by at most one."""
    if part is None:
        return slice(0, n)
    index, count = part
    return slice(index * n // count, (index + 1) * n // count)


class DataSet:
    """A distribution to learn, with its held-out test points.

    A subclass sets ``shape`` (the event shape: (D,) for vectors, (C, H, W) for images) and implements
    ``draw(n, generator) -> (x, labels or None)`` for training draws. Optional:

    - ``num_classes``: K when every point has a label in 0..K−1 (``sample(..., labels=True)``);
    - ``draw_test``: held-out draws (default: fresh draws, held out by construction) and ``test_size``
      (None: unlimited);
    - ``log_prob(x)``: the exact log-density, where it is known;
    - ``levels`` and ``value_range`` for quantized data: ``levels`` bins over ``value_range = (lo, hi)``,
      points at bin centres (8-bit images: 256 bins over (−1, 1)).
    """

    shape = ()
    num_classes = None
    levels = None
    value_range = None
    test_size = None

    @property
    def dim(self):
        return math.prod(self.shape)

    def draw(self, n, generator):
        raise NotImplementedError(f"{type(self).__name__} holds no points to draw")

    def draw_test(self, n, generator):
        return self.draw(n, generator)

    def sample(self, n, generator=None, device=None, dtype=torch.float32, labels=False):
        """n training points (and their labels with ``labels=True``), drawn with ``generator`` on the CPU."""
        return self._deliver(self.draw(check_int("num", n), generator), device, dtype, labels)

    def test(self, n, generator=None, device=None, dtype=torch.float32, labels=False):
        """n held-out points (pass a generator other than the training one)."""
        check_int("num", n)
        if self.test_size is not None and n > self.test_size:
            raise ConfigError(f"num={n} exceeds the {self.test_size} held-out points of {self!r}", "num")
        return self._deliver(self.draw_test(n, generator), device, dtype, labels)

    def batches(self, batch_size, generator, labels=False, device=None, seed=0, start=0, part=None):
        """Endless training batches (x, y): x of shape (batch_size, *shape) in float32, y their labels
        (``labels=True``) or None. What a training loop draws from, whatever the data set. With ``part`` =
        (index, count) each batch of batch_size is cut into ``count`` parts (share) and only part ``index`` is
        delivered: one process's shard of a distributed run's global batch.

        This default draws ``sample(batch_size, generator)`` on the CPU for each batch, lazily, so the state of
        ``generator`` is the position in the stream (every process draws the global batch from the same stream
        and keeps its part). Data sets that deliver through a loader (8-bit images, TensorData) instead yield
        batch ``start`` onwards of an order fixed by ``seed``, already on ``device``, reading only the part's rows.
        """
        rows = share(batch_size, part)
        while True:
            x, y = self.sample(batch_size, generator, labels=True) if labels else (
                self.sample(batch_size, generator), None)
            yield x[rows], None if y is None else y[rows]

    def _deliver(self, drawn, device, dtype, labels):
        x, y = drawn
        x = x.to(device=device, dtype=dtype)
        if not labels:
            return x
        if y is None:
            raise ConfigError(f"{self!r} has no labels")
        return x, y.to(device)

    @property
    def has_log_prob(self):
        return type(self).log_prob is not DataSet.log_prob

    def log_prob(self, x):
        """The exact log p(x) per point, where the data set knows it."""
        raise NotImplementedError(f"{type(self).__name__} has no exact density")

    def dequantize(self, x, generator=None):
        """Uniform dequantization of quantized data: x + U(−½, ½) of one bin; continuous data unchanged."""
        if self.levels is None:
            return x
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        return x + u * self.bin_width

    def dequantize_draws(self, x, draws, generator=None):
        """``draws`` independent uniform dequantizations of each point, shape (draws, *x.shape)."""
        draws = check_int("draws", draws)
        return self.dequantize(x.repeat(draws, *([1] * (x.ndim - 1))), generator).reshape(draws, *x.shape)

    @staticmethod
    def importance_weighted_nll(nll):
        """−log (1/K Σ_k exp(−nll_k)) over the first axis, from the NLLs nll_k = −log p(x + u_k) of K uniform
        dequantizations of the same quantized points (shape (K, N) → (N,)).

        With V the bin volume, P(x) = V E_u[p(x + u)], so by Jensen's inequality, for every K,

            −log P(x) + log V <= E[−log (1/K Σ_k p(x + u_k))],

        and the right side does not increase with K (Burda et al. 2016), reaching the left as K → ∞; K = 1 is
        plain uniform dequantization. ``bits_per_dim`` adds the −log V.
        """
        nll = torch.as_tensor(nll)
        return math.log(nll.shape[0]) - torch.logsumexp(-nll, dim=0)

    def quantize(self, x):
        """The level k in 0..levels−1 whose bin holds each value, k = ⌊(x − lo) / w⌋ (bin width w), values beyond
        value_range taken to the end bins; int64. The inverse of decoding to bin centres lo + (k + ½) w."""
        if self.levels is None:
            raise ConfigError(f"{self!r} is not quantized: it has no levels to round to")
        lo, _ = self.value_range
        k = torch.floor((torch.as_tensor(x).double() - lo) / self.bin_width)
        return k.nan_to_num(0.0).clamp(0, self.levels - 1).long()

    @property
    def bin_width(self):
        lo, hi = self.value_range
        return (hi - lo) / self.levels

    def bits_per_dim(self, nll):
        """bpd = NLL / (D ln 2) + log2(levels / (hi − lo)): the density of dequantized data, read on the
        integer scale of its levels (plain NLL / (D ln 2) for continuous data)."""
        bpd = nll / self.dim / math.log(2)
        return bpd if self.levels is None else bpd - math.log2(self.bin_width)

    def spec(self):
        """What a model trained on this data must know of it (for checkpoints): see DataSpec."""
        return {"shape": list(self.shape), "num_classes": self.num_classes, "levels": self.levels,
                "value_range": None if self.value_range is None else list(self.value_range)}

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape})"


class DataSpec(DataSet):
    """A data set's description without its points (shape, classes, quantization): what a checkpoint keeps."""

    def __init__(self, shape, num_classes=None, levels=None, value_range=None):
        self.shape = tuple(int(n) for n in shape)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.levels = None if levels is None else int(levels)
        self.value_range = None if value_range is None else tuple(float(v) for v in value_range)
