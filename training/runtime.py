"""Run-time plumbing for run.py: devices, seeds, config checks and one-line errors."""
import contextlib
import os
import re
import sys
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

GROUPS = ("sde", "solver", "model", "data")


class ConfigError(ValueError):
    """A bad value in the run's configuration."""


def resolve_device(name):
    """'auto' → CUDA when present, else CPU; otherwise any torch device string that exists here."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is unknown: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but CUDA is not available here: use device=auto or cpu")
    return device


def check_group_choices(argv, conf_dir):
    """Fail in one line on ``group=name`` when conf/<group>/<name>.yaml does not exist."""
    for arg in argv:
        m = re.fullmatch(r"[+~]?(\w+)=(.*)", arg)
        if not m or m.group(1) not in GROUPS:
            continue
        group, values = m.groups()
        options = sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))
        for value in values.split(","):
            if value and value not in options:
                raise ConfigError(f"{group}={value!r} is unknown: choose one of {', '.join(options)}"
                                  f" (or set {group}._target_=your_module.YourClass)")


def build(key, node, **kwargs):
    """hydra.utils.instantiate, with a failure reduced to one line that names the config key."""
    try:
        return instantiate(node, **kwargs)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key or key} must be set: add {e.full_key or key}=VALUE to the command") from None
    except InstantiationException as e:
        cause = e.__cause__
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from e
        if isinstance(cause, TypeError):
            raise ConfigError(f"{key}._target_={target}: {cause} (remove an argument with ~{key}.NAME)") from e
        while cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ImportError) or "Error locating target" in str(e):
            why = f": {cause}" if cause is not None else ""
            raise ConfigError(f"{key}._target_={target} cannot be imported{why}") from e
        raise


@contextlib.contextmanager
def one_line_errors():
    """Bad input ends the run with ``error: ...`` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 re-raises)."""
    from .trainer import TrainingError

    try:
        yield
    except (ValueError, TrainingError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        sys.exit(2)
