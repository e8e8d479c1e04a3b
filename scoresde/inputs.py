"""The front door's checks of what a Python caller hands it: points, labels, prior draws, counts, seeds and flags,
each refused in one ConfigError that names the argument, the value and what would be accepted, before any work."""
import math
import os
from pathlib import Path

import numpy as np
import torch

from sde.errors import ConfigError, check_int, invalid

MAX_SEED = 2**63 - 1
MAX_MAGNITUDE = 1e18
"""Beyond this a point's squared norm, which every Gaussian log-density holds, overflows float32."""


def check_flag(name, value, also=()):
    """``value`` when it is a boolean (numpy's included) or one of the words ``also``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value in also:
        return value
    accepted = " or ".join(["True", "False", *map(repr, also)])
    raise ConfigError(f"{name}={value!r} is invalid: expected {accepted}", name)


def check_seed(name, value):
    """An integer seed in 0..2**63 − 1 (numpy integers included; bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_SEED:
        raise invalid(name, value, "an integer in 0..2**63-1")
    return int(value)


def check_count(name, value, minimum=1):
    """An integer >= minimum (numpy integers included)."""
    return check_int(name, int(value) if isinstance(value, np.integer) else value, minimum)


def as_points(x, shape, device, dtype=None, name="x", value_range=None):
    """x (N, *shape) as a tensor on ``device``: a tensor or a NumPy array, of floating point dtype (cast to
    ``dtype`` when given), finite, of magnitude at most MAX_MAGNITUDE, and within ``value_range`` (lo, hi) when
    the data have one (8-bit images: [−1, 1])."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ConfigError(f"{name} has NumPy dtype {x.dtype}: expected floating point points", name)
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} is a {type(x).__name__}: expected a tensor or a NumPy array of shape "
                          f"(N, {', '.join(map(str, shape))})", name)
    if x.device.type == "meta":
        raise ConfigError(f"{name} is on the meta device, which holds no values: give a tensor on cpu or cuda", name)
    if not x.is_floating_point():
        raise ConfigError(f"{name} has dtype {x.dtype}: expected floating point points (x.float())", name)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(f"{name} has shape {tuple(x.shape)}: the model takes points of shape (N, "
                          f"{', '.join(map(str, shape))})", name)
    if len(x) == 0:
        raise ConfigError(f"{name} holds no points: expected at least one", name)
    x = x.to(device=device, dtype=dtype or x.dtype)
    flat = x.reshape(len(x), -1)
    bad = ~torch.isfinite(flat).all(1)
    if bad.any():
        raise ConfigError(f"{name} has {int(bad.sum())} of {len(x)} points that are not finite (the first is number "
                          f"{int(bad.nonzero()[0, 0])}): a density is defined at finite points only", name)
    largest = flat.abs().amax(1)
    if (largest > MAX_MAGNITUDE).any():
        first = int((largest > MAX_MAGNITUDE).nonzero()[0, 0])
        raise ConfigError(f"{name}: point {first} reaches {largest[first].item():.3g}; beyond {MAX_MAGNITUDE:g} its "
                          "log-density overflows float32", name)
    if value_range is not None:
        lo, hi = value_range
        low, high = x.min().item(), x.max().item()
        if low < lo or high > hi:
            raise ConfigError(f"{name} reaches [{low:.4g}, {high:.4g}], outside the data's range [{lo:g}, {hi:g}], "
                              "where the data have no density: scale the points into the range", name)
    return x


def as_labels(labels, num, num_classes, name="labels"):
    """One class per point as an int64 tensor (a tensor, array or list of integers in 0..num_classes − 1), or
    None; a conditional model's null class (num_classes) is guidance's, not a label."""
    if labels is None:
        return None
    if num_classes is None:
        raise ConfigError(f"{name} were given but the model is unconditional: leave {name} out", name)
    try:
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    except (TypeError, ValueError, RuntimeError):
        y = None
    if y is None or y.dtype in (torch.bool,) or y.is_floating_point() or y.is_complex():
        raise ConfigError(f"{name} must be integer classes in 0..{num_classes - 1}, one per point", name)
    y = y.reshape(-1)
    if len(y) != num:
        raise ConfigError(f"{name} holds {len(y)} labels for {num} points: expected one per point", name)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        bad = int(y[out][0])
        extra = f" ({num_classes} is the null class, for guidance only)" if bad == num_classes else ""
        raise ConfigError(f"{name}: class {bad} is out of range: expected classes in 0..{num_classes - 1}{extra}", name)
    return y.to(torch.int64)


def check_fits_in_memory(num, shape, device, name="num"):
    """``num`` points of ``shape`` in float32 must fit the device's memory (the prior draws of a share are held
    at once)."""
    need = num * math.prod(shape) * 4
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if need > have:
        raise ConfigError(f"{name}={num} points of shape {tuple(shape)} need {need / 2**30:.3g} GiB, more than the "
                          f"{have / 2**30:.3g} GiB of {device.type} memory here: at most "
                          f"{have // (4 * math.prod(shape)):,} fit (sample in several calls)", name)


def read_prior_draws(path, shape):
    """The prior draws a .npy file holds: floats of ``shape`` (num, *event shape), or one line naming the file and
    what was expected."""
    expected = f"a .npy of floats of shape {tuple(shape)}, one prior draw per sample"
    path = Path(str(path)).expanduser()
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(f"x_T={str(path)!r} is not a .npy file: expected {expected}", "x_T")
    try:
        x_T = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ConfigError(f"x_T={str(path)!r} cannot be read: {e}".splitlines()[0] + f"; expected {expected}",
                          "x_T") from None
    if x_T.shape != tuple(shape) or x_T.dtype.kind != "f":
        raise ConfigError(f"x_T={str(path)!r} holds {x_T.dtype} of shape {x_T.shape}: expected {expected}", "x_T")
    return x_T
