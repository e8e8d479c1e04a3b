"""Command-line plumbing for run.py: devices, building parts from config, checkpoints against the composed
config, and one-line errors."""
import contextlib
import inspect
import os
import re
import sys
import traceback
from pathlib import Path

from hydra.utils import get_class, get_method
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from sde.errors import ConfigError
from training.trainer import TrainingError

from .pipeline import instantiate_config, resolve_device  # noqa: F401 - run.py takes resolve_device from here

GROUPS = ("sde", "solver", "model", "data")
CHECKPOINT_GROUPS = ("sde", "model", "data")


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
                                  f" (or set {group}._target_=your_module.YourClass)", group)


def _target(key, node):
    """The callable a config node names, or a one-line error that it cannot be imported."""
    name = node.get("_target_") if OmegaConf.is_dict(node) else None
    if name is None:
        raise ConfigError(f"{key}._target_ must be set: the class or function that builds {key}", f"{key}._target_")
    try:
        try:
            return get_class(name)
        except ValueError:
            return get_method(name)
    except Exception as e:  # noqa: BLE001 - any failure to import a user's target is a config error
        cause = e.__cause__ or e
        raise ConfigError(f"{key}._target_={name} cannot be imported: {type(cause).__name__}: {cause}".splitlines()[0],
                          f"{key}._target_") from None


def _check_arguments(key, target, node, kwargs):
    """The node's keys and kwargs must be parameters of target (unless it takes **kwargs)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    given = [k for k in node.keys() if not str(k).startswith("_")] + list(kwargs)
    extra = [k for k in given if k not in params]
    if extra:
        accepted = ", ".join(k for k in params if k not in kwargs and k != "self")
        raise ConfigError(f"{key}.{extra[0]} is not an option of {node.get('_target_')}: it takes {accepted} "
                          f"(remove it with ~{key}.{extra[0]})", f"{key}.{extra[0]}")


def build(key, node, **kwargs):
    """hydra.utils.instantiate, with a ConfigError raised inside named by its config key (``key.name``).

    Unknown arguments, a missing mandatory value and a target that cannot be imported are one-line
    ConfigErrors too; any other exception is a bug and propagates with its traceback.
    """
    try:
        missing = [k for k in node.keys() if OmegaConf.is_missing(node, k)]
    except AttributeError:
        missing = []
    if missing:
        raise ConfigError(f"{key}.{missing[0]} must be set: add {key}.{missing[0]}=VALUE to the command",
                          f"{key}.{missing[0]}")
    _check_arguments(key, _target(key, node), node, kwargs)
    try:
        return instantiate_config(key, node, **kwargs)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key or key} must be set: add {e.full_key or key}=VALUE to the command") from None


def override_keys(overrides, group):
    """What a list of Hydra overrides does to ``group``: (whether it picks another option, the dotted keys it
    sets or deletes inside the group)."""
    choice, keys = False, []
    for arg in overrides:
        m = re.match(rf"[+~]*{group}(=|\.([^=]+)(=|$))", arg)
        if m and m.group(1) == "=":
            choice = True
        elif m:
            keys.append(m.group(2))
    return choice, keys


def flatten(node, prefix=""):
    """{dotted key: value} of a nested dict."""
    out = {}
    for k, v in (node or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def reconcile(cfg, meta, overrides, override=False):
    """Fit the composed config to a checkpoint's ``meta`` (the sde, model and data configs it was trained
    with). A group the command line leaves alone takes the checkpoint's config; keys the command line sets
    inside it are set on top of the checkpoint's; a group the command line replaces (``sde=ve``) is compared
    whole. For sde and model, unless ``override``, a value that differs from the checkpoint's ends in a
    ConfigError naming both."""
    path = meta.get("path", "the checkpoint")
    for group in CHECKPOINT_GROUPS:
        theirs = meta.get(group)
        if theirs is None:
            continue
        choice, keys = override_keys(overrides, group)
        if not choice:
            merged = OmegaConf.create(theirs)
            for key in keys:
                value = OmegaConf.select(cfg[group], key, default=_ABSENT)
                if value is _ABSENT:
                    parent, _, leaf = key.rpartition(".")
                    node = OmegaConf.select(merged, parent) if parent else merged
                    if node is not None and leaf in node:
                        del node[leaf]
                else:
                    OmegaConf.update(merged, key, value, force_add=True)
            cfg[group] = merged
        if override or group == "data":
            continue
        new, old = flatten(OmegaConf.to_container(cfg[group], resolve=True)), flatten(theirs)
        for k in sorted(set(new) | set(old)):
            if new.get(k) != old.get(k):
                raise ConfigError(f"ckpt={path!r} was trained with {group}.{k}={old.get(k)!r} but this run has "
                                  f"{group}.{k}={new.get(k)!r}: leave {group} out to use the checkpoint's own, or "
                                  f"add ckpt_override=true", "ckpt")


_ABSENT = object()


def check_data_fits(meta, data):
    """The data set must have the event shape and class count the checkpoint's model was trained on."""
    spec = meta.get("data_spec")
    if spec is None:
        return
    for field in ("shape", "num_classes"):
        theirs, mine = spec.get(field), data.spec()[field]
        if theirs != mine:
            raise ConfigError(f"ckpt={meta.get('path', '?')!r} was trained on data with {field} {theirs}; this "
                              f"data set ({data!r}) has {field} {mine}", "ckpt")


@contextlib.contextmanager
def one_line_errors():
    """Bad input (ConfigError, which covers bad data and checkpoints) and a training run that cannot go on end
    the run with ``error: ...`` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 re-raises); anything else is
    a bug: its whole traceback is printed (Hydra would show only its message) and the exit status is 1."""
    try:
        yield
    except (ConfigError, TrainingError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - a bug: shown whole, never reduced to a line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        traceback.print_exc()
        sys.exit(1)
